"""Records the read side cannot decode, sent to `course-events.dlq` with why and whence."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import UTC, datetime

from confluent_kafka import KafkaError, Message, Producer

from projections.batch import UnreadableRecord
from schemas import topics

log = logging.getLogger("projections.deadletter")


class DeadLetterError(RuntimeError):
    """Kafka did not acknowledge a dead letter; whatever sent it must not move on."""


def producer_config(bootstrap_servers: str) -> dict[str, object]:
    return {"bootstrap.servers": bootstrap_servers, "acks": "all",
            "enable.idempotence": True, "linger.ms": 5}


def publish(producer: Producer, failures: Sequence[UnreadableRecord], timeout: float = 30) -> None:
    """Send each failed record as it was, with dlq.* headers; returns once Kafka has them all."""
    if not failures:
        return
    errors: list[KafkaError] = []

    def delivered(err: KafkaError | None, _msg: Message) -> None:
        if err is not None:
            errors.append(err)

    failed_at = datetime.now(UTC).isoformat(timespec="milliseconds").encode()
    for failure in failures:
        rec = failure.record
        producer.produce(
            topics.EVENTS_DLQ, key=rec.key, value=rec.value, on_delivery=delivered,
            headers=[
                ("dlq.reason", failure.reason.encode()),
                ("dlq.source.topic", topics.EVENTS.encode()),
                ("dlq.source.partition", str(rec.partition).encode()),
                ("dlq.source.offset", str(rec.offset).encode()),
                ("dlq.failed_at", failed_at),
            ],
        )
    if producer.flush(timeout) > 0 or errors:
        raise DeadLetterError(f"{len(errors)} dead letters not acknowledged: {errors[:1]}")
    for failure in failures:
        # Where and why only: the payload may hold personal data.
        log.warning("record dead-lettered", extra={
            "partition": failure.record.partition, "offset": failure.record.offset,
            "reason": failure.reason})
