"""Dead letters: one header format and one producer for every service that writes them.

A dead letter is the consumed record as it was (key and value unchanged), with its own
headers first (its correlation id among them) and then these, all UTF-8 text:

    dlq.reason            why it was dead-lettered (a service's reason code)
    dlq.source.topic      where it was read from,
    dlq.source.partition  at which partition
    dlq.source.offset     and offset
    dlq.failed_at         when: UTC, ISO 8601 with milliseconds
    dlq.error             the detail of the failure (may be empty)
    dlq.attempts          how many times handling it failed (1: once)

A record dead-lettered twice keeps only the newest dlq.* headers.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import UTC, datetime

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from service_kit.kafka_auth import client_config
from service_kit.records import Headers, SourceRecord

_PREFIX = "dlq."


class DeadLetterError(RuntimeError):
    """Kafka did not acknowledge a dead letter; whatever sent it must not move on."""


def dead_letter_headers(record: SourceRecord, reason: str, failed_at: datetime,
                        error: str = "", attempts: int = 1) -> Headers:
    """The record's own headers, then the dlq.* ones (see the module's docstring)."""
    if failed_at.tzinfo is None:
        raise ValueError("failed_at must be timezone-aware")
    if attempts < 1:
        raise ValueError("a dead letter failed at least once")
    own = [(k, v) for k, v in record.headers if not k.startswith(_PREFIX)]
    return own + [
        ("dlq.reason", reason.encode()),
        ("dlq.source.topic", record.topic.encode()),
        ("dlq.source.partition", str(record.partition).encode()),
        ("dlq.source.offset", str(record.offset).encode()),
        ("dlq.failed_at", failed_at.astimezone(UTC).isoformat(timespec="milliseconds").encode()),
        ("dlq.error", error.encode()),
        ("dlq.attempts", str(attempts).encode()),
    ]


class DeadLetterProducer:
    """Writes to one dead-letter topic; a send returns only once Kafka has every letter."""

    def __init__(self, bootstrap_servers: str, topic: str, timeout: float = 15.0,
                 logger: logging.Logger | None = None) -> None:
        self.topic = topic
        self._timeout = timeout
        self._producer = Producer({
            **client_config(),
            "bootstrap.servers": bootstrap_servers,
            "acks": "all",
            "enable.idempotence": True,
            "linger.ms": 5,
            # Never keep a dead letter queued behind a send that already gave up.
            "message.timeout.ms": int(timeout * 1000),
        }, logger=logger or logging.getLogger("rdkafka"))

    def send(self, record: SourceRecord, headers: Headers) -> None:
        self.send_all([(record, headers)])

    def send_all(self, letters: Sequence[tuple[SourceRecord, Headers]]) -> None:
        reports: list[KafkaError | None] = []

        def delivered(err: KafkaError | None, _msg: Message) -> None:
            reports.append(err)

        try:
            for record, headers in letters:
                self._producer.produce(self.topic, key=record.key, value=record.value,
                                       headers=list(headers), on_delivery=delivered)
        except (KafkaException, BufferError) as exc:
            raise DeadLetterError(str(exc)) from exc
        self._producer.flush(self._timeout + 1)
        errors = [err for err in reports if err is not None]
        if errors or len(reports) < len(letters):
            raise DeadLetterError(
                f"{len(letters) - len(reports) + len(errors)} of {len(letters)} dead letters"
                f" not acknowledged: {errors[:1]}")

    def close(self) -> None:
        self._producer.flush(self._timeout)
