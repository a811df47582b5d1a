"""A batch of event-log records turned into the view changes it asks for: pure, no I/O.

The projector and the replay both decode a batch with `build` and hand the result to
`projections.store`, which keeps only the decisions PostgreSQL has not seen yet and
folds those into per-course deltas with `deltas`. Building the same records twice
gives the same batch, so a redelivered batch asks for the same changes.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any, NamedTuple, get_args

from projections.stats import AgeAggregate
from schemas.codec import DecodeError, decode_fields
from schemas.messages import Event, SignUpRejected, StudentSignedUp, StudentWaitlisted

ACCEPTED = "accepted"
REJECTED = "rejected"
WAITLISTED = "waitlisted"
WITHDRAWN = "withdrawn"
_EVENT_NAMES = frozenset(cls.__name__ for cls in get_args(Event))
_DECISION_TYPES = frozenset((StudentSignedUp.__name__, SignUpRejected.__name__,
                             StudentWaitlisted.__name__))


@dataclass(frozen=True, slots=True)
class EventRecord:
    """One message of the event log, as far as the read side cares."""

    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


@dataclass(frozen=True, slots=True)
class UnreadableRecord:
    """A record that is not an event this projection can read: it goes to the DLQ."""

    record: EventRecord
    reason: str


class CourseRow(NamedTuple):  # immutable like a frozen dataclass, built three times faster
    course_id: str
    title: str
    lecturer: str
    capacity: int
    waitlist_capacity: int = 0


class DecisionRow(NamedTuple):  # one per decision read: a million in a replay
    signup_id: str
    course_id: str
    status: str
    reason: str | None
    event_id: str
    decided_at: datetime
    date_of_birth: date | None  # accepted sign-ups only
    correlation_id: str = ""
    ticket: int | None = None  # waitlisted ones: the record's offset (FIFO along the partition)


class Transition(NamedTuple):
    """A later event about a decided sign-up, which moves it on in its lifecycle:
    promoted (waitlisted -> accepted), or withdrawn from its seat or the waiting list."""

    signup_id: str
    course_id: str
    was: str  # the status it leaves; a transition from any other status is a repeat
    becomes: str
    date_of_birth: date


# What each later event does to a sign-up's status.
_TRANSITIONS = {
    ("StudentPromoted", None): (WAITLISTED, ACCEPTED),
    ("StudentWithdrew", "enrolled"): (ACCEPTED, WITHDRAWN),
    ("StudentWithdrew", "waitlist"): (WAITLISTED, WITHDRAWN),
}


@dataclass(frozen=True)
class Batch:
    courses: tuple[CourseRow, ...] = ()  # the first CourseCreated per course id
    decisions: tuple[DecisionRow, ...] = ()  # the first decision per sign-up id
    failures: tuple[UnreadableRecord, ...] = ()
    event_counts: dict[str, int] = field(default_factory=dict)  # by event_type
    # Per partition, the offset after the last record, undecodable ones included:
    # a failure is dealt with (dead-lettered) and must not be read again.
    next_offsets: dict[int, int] = field(default_factory=dict)
    newest_event_at: datetime | None = None
    # Promotions and withdrawals in log order, after the decisions they follow.
    transitions: tuple[Transition, ...] = ()
    changed: tuple[CourseRow, ...] = ()  # the last CourseChanged per course id


def build(records: Sequence[EventRecord]) -> Batch:
    """Decode records into the courses, decisions and failures they carry."""
    courses: dict[str, CourseRow] = {}
    decisions: dict[str, DecisionRow] = {}
    transitions: list[Transition] = []
    changed: dict[str, CourseRow] = {}
    failures: list[UnreadableRecord] = []
    counts: Counter[str] = Counter()
    next_offsets: dict[int, int] = {}
    newest: datetime | None = None
    for record in records:
        next_offsets[record.partition] = max(
            next_offsets.get(record.partition, 0), record.offset + 1
        )
        read = read_fields(record)
        if isinstance(read, UnreadableRecord):
            failures.append(read)
            continue
        name, event = read
        counts[event["event_type"]] += 1
        occurred_at = event["occurred_at"]
        newest = occurred_at if newest is None else max(newest, occurred_at)
        if name == "CourseCreated":
            if event["course_id"] not in courses:
                courses[event["course_id"]] = course_of(event)
        elif name in _DECISION_TYPES and event["signup_id"] not in decisions:
            # A decision repeated after a processor crash has the same sign-up id (and
            # event id): the first one stands, in the batch as in the database.
            decisions[event["signup_id"]] = decision_of(name, event, record.offset)
        elif name == "CourseChanged":
            changed[event["course_id"]] = course_of(event)
        elif (name, event.get("from")) in _TRANSITIONS:
            was, becomes = _TRANSITIONS[name, event.get("from")]
            transitions.append(Transition(event["signup_id"], event["course_id"], was,
                                          becomes, event["date_of_birth"]))
    return Batch(tuple(courses.values()), tuple(decisions.values()), tuple(failures),
                 dict(counts), next_offsets, newest, tuple(transitions), tuple(changed.values()))


def read_fields(record: EventRecord) -> tuple[str, dict[str, Any]] | UnreadableRecord:
    """The event type and fields in a record (as `schemas.codec.decode_fields`), or why
    there are none. The fields, not the dataclass: a replay reads millions of them."""
    if record.value is None:
        return UnreadableRecord(record, "empty record (tombstone)")
    try:
        name, fields = decode_fields(record.value)
    except DecodeError as exc:
        return UnreadableRecord(record, str(exc))
    if name not in _EVENT_NAMES:  # a command written to the wrong topic
        return UnreadableRecord(record, f"{name} is not an event")
    return name, fields


def course_of(event: dict[str, Any]) -> CourseRow:
    return CourseRow(event["course_id"], event["title"], event["lecturer"], event["capacity"],
                     event.get("waitlist_capacity", 0))


def decision_of(name: str, event: dict[str, Any], offset: int = 0) -> DecisionRow:
    if name == "StudentWaitlisted":
        return DecisionRow(event["signup_id"], event["course_id"], WAITLISTED, None,
                           event["event_id"], event["occurred_at"], event["date_of_birth"],
                           event["correlation_id"], offset)
    if name == "StudentSignedUp":
        return DecisionRow(event["signup_id"], event["course_id"], ACCEPTED, None,
                        event["event_id"], event["occurred_at"], event["date_of_birth"],
                        event["correlation_id"])
    return DecisionRow(event["signup_id"], event["course_id"], REJECTED, event["reason"],
                    event["event_id"], event["occurred_at"], None, event["correlation_id"])


def deltas(new_decisions: Iterable[DecisionRow]) -> dict[str, AgeAggregate]:
    """Per course, the birth-date aggregate of the newly accepted sign-ups."""
    births: dict[str, list[date]] = {}
    for decision in new_decisions:
        if decision.status == ACCEPTED and decision.date_of_birth is not None:
            births.setdefault(decision.course_id, []).append(decision.date_of_birth)
    # The same numbers as folding AgeAggregate.add over them, without an object per sign-up.
    return {course: AgeAggregate(len(dobs), sum(d.toordinal() for d in dobs), min(dobs), max(dobs))
            for course, dobs in births.items()}


def birth_counts(new_decisions: Iterable[DecisionRow]) -> dict[str, Counter[date]]:
    """Per course, the newly accepted sign-ups per birth date: the age distribution's delta."""
    out: dict[str, Counter[date]] = {}
    for decision in new_decisions:
        if decision.status == ACCEPTED and decision.date_of_birth is not None:
            out.setdefault(decision.course_id, Counter())[decision.date_of_birth] += 1
    return out


def total(per_course: Iterable[AgeAggregate]) -> AgeAggregate:
    """Everything in one aggregate: the change to the global row."""
    out = AgeAggregate()
    for agg in per_course:
        out = out.merge(agg)
    return out
