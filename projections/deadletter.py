"""Records the read side cannot decode, sent to `course-events.dlq` with why and whence."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import UTC, datetime

from projections.batch import UnreadableRecord
from schemas import topics
from service_kit.deadletter import DeadLetterProducer, dead_letter_headers
from service_kit.records import SourceRecord

log = logging.getLogger("projections.deadletter")


def producer(bootstrap_servers: str, logger: logging.Logger | None = None) -> DeadLetterProducer:
    return DeadLetterProducer(bootstrap_servers, topics.EVENTS_DLQ, timeout=30, logger=logger)


def publish(dead_letters: DeadLetterProducer, failures: Sequence[UnreadableRecord]) -> None:
    """Send each failed record as it was; returns once Kafka has them all."""
    if not failures:
        return
    failed_at = datetime.now(UTC)
    letters = []
    for failure in failures:
        rec = failure.record
        source = SourceRecord(topics.EVENTS, rec.partition, rec.offset, rec.key, rec.value, [])
        letters.append((source, dead_letter_headers(source, failure.reason, failed_at)))
    dead_letters.send_all(letters)
    for failure in failures:
        # Where and why only: the payload may hold personal data.
        log.warning("record dead-lettered", extra={
            "partition": failure.record.partition, "offset": failure.record.offset,
            "reason": failure.reason})
