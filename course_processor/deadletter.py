"""The headers of a dead letter on course-commands.dlq: why, where from and when."""

from __future__ import annotations

from datetime import UTC, datetime

from course_processor.wire import Headers


def dlq_headers(
    reason: str, topic: str, partition: int, offset: int, failed_at: datetime
) -> Headers:
    """Headers of a dead letter: why it failed, where it came from and when (ISO UTC)."""
    if failed_at.tzinfo is None:
        raise ValueError("failed_at must be timezone-aware")
    return [
        ("dlq.reason", reason.encode()),
        ("dlq.source.topic", topic.encode()),
        ("dlq.source.partition", str(partition).encode()),
        ("dlq.source.offset", str(offset).encode()),
        ("dlq.failed_at", failed_at.astimezone(UTC).isoformat().encode()),
    ]
