"""How the processor's state and Kafka records look: pure functions, no I/O.

Kafka headers are (name, bytes) pairs; table values are plain JSON-able dicts so the
changelog topics stay readable with any Kafka tool.
"""

from __future__ import annotations

from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

from course_processor.domain import Course, validate
from schemas.codec import DecodeError, UnknownSchemaError, decode
from schemas.messages import (
    Command,
    CourseCreationRejected,
    CreateCourse,
    Event,
    SignUp,
    SignUpRejected,
    StudentSignedUp,
)

Headers = list[tuple[str, bytes]]


def event_headers(event: Event, processor_id: str, generation: int) -> Headers:
    """Headers of an event record: readers can route and trace without decoding Avro.

    `generation` is the consumer group generation the writer decided in: a record
    from a worker that kept deciding after losing its partitions would carry an old
    one (and is fenced; the header lets a test or an operator check that).
    """
    return [
        ("correlation_id", event.correlation_id.encode()),
        ("event_type", event.event_type.encode()),
        ("event_id", event.event_id.encode()),
        ("processor_id", processor_id.encode()),
        ("generation", str(generation).encode()),
    ]


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


def outcome(event: Event) -> tuple[str, str]:
    """(outcome, reason) labels of a decision, for metrics and logs."""
    if isinstance(event, StudentSignedUp):
        return "accepted", ""
    if isinstance(event, SignUpRejected):
        return "rejected", event.reason
    if isinstance(event, CourseCreationRejected):
        return "course_rejected", event.reason
    return "course_created", ""


def course_to_value(course: Course) -> dict[str, Any]:
    return asdict(course)


def course_from_value(value: dict[str, Any] | None) -> Course | None:
    return None if value is None else Course(**value)


class Unprocessable(Exception):
    """A record that can never be decided: it goes to the dead-letter topic."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def read_command(key: bytes | None, value: bytes | None) -> Command:
    """The command in a course-commands record, or Unprocessable saying why not."""
    if value is None:
        raise Unprocessable("undecodable", "the record has no value")
    try:
        message = decode(value)
    except UnknownSchemaError as exc:
        raise Unprocessable("unknown_schema", str(exc)) from exc
    except DecodeError as exc:
        raise Unprocessable("undecodable", str(exc)) from exc
    if not isinstance(message, CreateCourse | SignUp):
        raise Unprocessable("not_a_command", f"{type(message).__name__} is an event")
    problems = validate(message)
    if problems:
        raise Unprocessable("invalid", "; ".join(problems))
    if key != message.course_id.encode():
        # The tables are co-partitioned by key: a command keyed otherwise could be
        # decided against another partition's (absent) state.
        raise Unprocessable("key_mismatch", "the record key is not the command's course_id")
    return message


class Continuity:
    """Notices a record that skips offsets within one partition, since the last rebalance.

    Commands are decided in offset order, one at a time; a record arriving after a
    hole means the consumer lost the records in between, and committing past them
    would leave those sign-ups without a decision forever. Repeats (a lower offset,
    after a seek) are fine: deciding a command again gives the same event.
    """

    def __init__(self) -> None:
        self._last: dict[int, int] = {}
        self._generation: int | None = None

    def skipped(self, generation: int, partition: int, offset: int) -> bool:
        if generation != self._generation:
            self._generation, self._last = generation, {}
        last = self._last.get(partition)
        self._last[partition] = offset
        return last is not None and offset > last + 1
