"""The notifier's dead-letter topic: the original record, plus headers saying why and whence."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from schemas import topics

Headers = list[tuple[str, bytes]]


@dataclass(frozen=True)
class Record:
    """What the notifier keeps of a consumed Kafka record."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: Headers

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key == name and value is not None:
                return value.decode("utf-8", "replace")
        return None


class DeadLetterError(RuntimeError):
    """The broker did not confirm the dead letter; the record must stay unhandled."""


def dead_letter_headers(record: Record, reason: str, failed_at: datetime,
                        detail: str = "", attempts: int = 0) -> Headers:
    """The record's own headers (its correlation id among them), then the dlq.* ones."""
    own = [(k, v) for k, v in record.headers if not k.startswith("dlq.")]
    return own + [
        ("dlq.reason", reason.encode()),
        ("dlq.source.topic", record.topic.encode()),
        ("dlq.source.partition", str(record.partition).encode()),
        ("dlq.source.offset", str(record.offset).encode()),
        ("dlq.failed_at", failed_at.isoformat(timespec="milliseconds").encode()),
        ("dlq.error", detail.encode()),
        ("dlq.attempts", str(attempts).encode()),
    ]


class DeadLetters:
    """Writes to course-notifications.dlq and waits for the broker's acknowledgement."""

    def __init__(self, bootstrap_servers: str, timeout: float = 15.0,
                 logger: logging.Logger | None = None) -> None:
        self._timeout = timeout
        self._producer = Producer({
            "bootstrap.servers": bootstrap_servers,
            "acks": "all",
            "enable.idempotence": True,
            # Never keep a dead letter queued behind a send that already gave up.
            "message.timeout.ms": int(timeout * 1000),
        }, logger=logger or logging.getLogger("rdkafka"))

    def send(self, record: Record, headers: Headers) -> None:
        outcome: list[KafkaError | None] = []

        def delivered(err: KafkaError | None, _msg: Message) -> None:
            outcome.append(err)

        try:
            self._producer.produce(topics.NOTIFIER_DLQ, key=record.key, value=record.value,
                                   headers=[(k, v) for k, v in headers], on_delivery=delivered)
        except (KafkaException, BufferError) as exc:
            raise DeadLetterError(str(exc)) from exc
        self._producer.flush(self._timeout + 1)
        if not outcome or outcome[0] is not None:
            raise DeadLetterError(str(outcome[0]) if outcome else "no delivery report")

    def close(self) -> None:
        self._producer.flush(self._timeout)
