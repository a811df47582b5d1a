"""The headers of the processor's event records, and the labels of a decision: pure.

Kafka headers are (name, bytes) pairs; readers can route and trace a record without
decoding its Avro value.
"""

from __future__ import annotations

from schemas.messages import (
    CourseChanged,
    CourseChangeRejected,
    CourseCreated,
    CourseCreationRejected,
    Event,
    SignUpRejected,
    StudentPromoted,
    StudentSignedUp,
    StudentWaitlisted,
    StudentWithdrew,
    WithdrawalRejected,
)
from service_kit.records import TRACED, Headers


def event_headers(event: Event, processor_id: str, generation: int,
                  traced: bool = False) -> Headers:
    """Headers of an event record: readers can route and trace without decoding Avro.

    `generation` is the consumer group generation the writer decided in: a record
    from a worker that kept deciding after losing its partitions would carry an old
    one (and is fenced; the header lets a test or an operator check that).
    `traced`: the command's caller follows it by its own correlation id (the command
    API's `traced` header), so the notifier logs its e-mail at INFO, as the processor
    logs its decision.
    """
    headers = [
        ("correlation_id", event.correlation_id.encode()),
        ("event_type", event.event_type.encode()),
        ("event_id", event.event_id.encode()),
        ("processor_id", processor_id.encode()),
        ("generation", str(generation).encode()),
    ]
    if traced:
        headers.append(TRACED)
    return headers


_OUTCOMES: dict[type, str] = {
    StudentSignedUp: "accepted", SignUpRejected: "rejected", StudentWaitlisted: "waitlisted",
    StudentPromoted: "promoted", StudentWithdrew: "withdrew",
    WithdrawalRejected: "withdrawal_rejected", CourseCreated: "course_created",
    CourseCreationRejected: "course_rejected", CourseChanged: "course_changed",
    CourseChangeRejected: "change_rejected",
}


def outcome(event: Event) -> tuple[str, str]:
    """(outcome, reason) labels of a decision, for metrics and logs."""
    return _OUTCOMES[type(event)], str(getattr(event, "reason", ""))
