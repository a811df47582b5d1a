"""The pure step of the projector: records of the event log -> the view changes they ask for."""

from __future__ import annotations

import random
import uuid
from datetime import UTC, date, datetime, timedelta

from projections.batch import (
    ACCEPTED,
    REJECTED,
    WAITLISTED,
    WITHDRAWN,
    EventRecord,
    Transition,
    build,
    deltas,
    total,
)
from projections.stats import AgeAggregate, fold
from schemas import codec
from schemas.messages import (
    CourseChanged,
    CourseCreated,
    CourseCreationRejected,
    Event,
    SignUp,
    SignUpRejected,
    StudentPromoted,
    StudentSignedUp,
    StudentWaitlisted,
    StudentWithdrew,
)

NOW = datetime(2026, 3, 1, 12, tzinfo=UTC)


def created(course_id: str, title: str = "Intro") -> CourseCreated:
    return CourseCreated(str(uuid.uuid4()), "CourseCreated", NOW, course_id, "cmd", "corr",
                         title, "Ada", 30)


def accepted(course_id: str, dob: date, signup_id: str | None = None) -> StudentSignedUp:
    return StudentSignedUp(str(uuid.uuid4()), "StudentSignedUp", NOW, course_id, "cmd", "corr",
                           signup_id or str(uuid.uuid4()), "a@example.org", "A", dob, 1, 30)


def rejected(course_id: str, reason: str = "course_full") -> SignUpRejected:
    return SignUpRejected(str(uuid.uuid4()), "SignUpRejected", NOW, course_id, "cmd", "corr",
                          str(uuid.uuid4()), "b@example.org", "B", reason)


def records(events: list[Event], partition: int = 0, first_offset: int = 0) -> list[EventRecord]:
    return [EventRecord(partition, first_offset + i, e.course_id.encode(), codec.encode(e))
            for i, e in enumerate(events)]


def test_a_batch_carries_courses_decisions_and_counts() -> None:
    events: list[Event] = [created("c1"), accepted("c1", date(2000, 1, 1)), rejected("c1")]

    batch = build(records(events, partition=3, first_offset=10))

    assert [c.course_id for c in batch.courses] == ["c1"]
    assert [d.status for d in batch.decisions] == [ACCEPTED, REJECTED]
    assert batch.decisions[1].reason == "course_full"
    assert batch.event_counts == {"CourseCreated": 1, "StudentSignedUp": 1, "SignUpRejected": 1}
    assert batch.next_offsets == {3: 13}
    assert batch.failures == ()
    assert batch.newest_event_at == NOW


def test_a_decision_repeated_in_the_batch_counts_once() -> None:
    first = accepted("c1", date(2000, 1, 1))
    events: list[Event] = [first, first, accepted("c1", date(1990, 1, 1), first.signup_id)]

    batch = build(records(events))

    assert len(batch.decisions) == 1
    assert batch.decisions[0].date_of_birth == date(2000, 1, 1)  # the first one stands
    assert deltas(batch.decisions)["c1"].count == 1


def test_the_first_course_created_stands() -> None:
    batch = build(records([created("c1", "First"), created("c1", "Second")]))

    assert [c.title for c in batch.courses] == ["First"]


def test_undecodable_records_fail_and_still_advance_the_offset() -> None:
    good = records([accepted("c1", date(2000, 1, 1))], first_offset=5)
    garbage = [EventRecord(0, 6, b"c1", b"not avro"), EventRecord(0, 7, b"c1", None),
               EventRecord(0, 8, b"c1", b"\xc3\x01" + bytes(8) + b"x")]
    command = SignUp("cmd", "s", "c1", "a@example.org", "A", date(2000, 1, 1), NOW, "corr")
    misplaced = [EventRecord(0, 9, b"c1", codec.encode(command))]

    batch = build(good + garbage + misplaced)

    assert [f.record.offset for f in batch.failures] == [6, 7, 8, 9]
    assert "not an event" in batch.failures[-1].reason
    assert batch.next_offsets == {0: 10}
    assert len(batch.decisions) == 1


def test_a_course_creation_rejected_changes_no_view() -> None:
    event = CourseCreationRejected(str(uuid.uuid4()), "CourseCreationRejected", NOW, "c1",
                                   "cmd", "corr", "course_exists")
    batch = build(records([event]))

    assert (batch.courses, batch.decisions, batch.failures) == ((), (), ())
    assert batch.event_counts == {"CourseCreationRejected": 1}


def test_building_the_same_records_twice_gives_the_same_batch() -> None:
    recs = records([created("c1"), accepted("c1", date(1999, 5, 17)), rejected("c1")])

    assert build(recs) == build(recs)


def test_deltas_of_a_whole_log_equal_the_fold_of_its_accepted_sign_ups() -> None:
    rng = random.Random(7)
    courses = [f"c{i}" for i in range(5)]
    events: list[Event] = [created(c) for c in courses]
    for _ in range(300):
        course = rng.choice(courses)
        dob = date(1950, 1, 1) + timedelta(days=rng.randint(0, 25_000))
        events.append(accepted(course, dob) if rng.random() < 0.8 else rejected(course))
    events += rng.sample(events, 40)  # decisions repeated after crashes, same event ids

    batch = build(records(events))

    per_course = deltas(batch.decisions)
    assert per_course == fold(events)
    assert total(per_course.values()) == total(fold(events).values())


def test_total_of_nothing_is_empty() -> None:
    assert total([]) == AgeAggregate()


def test_a_term_batch_reads_waiting_entries_transitions_and_the_last_change() -> None:
    course, dob = "term", date(2000, 1, 2)
    waiting = StudentWaitlisted(str(uuid.uuid4()), "StudentWaitlisted", NOW, course, "c", "r",
                                "w-1", "", "", dob, 1)
    seat = accepted(course, date(1990, 5, 5), "s-1")
    left = StudentWithdrew(str(uuid.uuid4()), "StudentWithdrew", NOW, course, "c2", "r", "s-1",
                           "enrolled", 0, date(1990, 5, 5))
    up = StudentPromoted(str(uuid.uuid4()), "StudentPromoted", NOW, course, "c2", "r", "w-1",
                         1, dob)
    changes = [CourseChanged(str(uuid.uuid4()), "CourseChanged", NOW, course, f"c{n}", "r",
                             f"Title {n}", "Ada", 3 + n, n) for n in (1, 2)]
    batch = build(records([created(course), seat, waiting, left, up, *changes], first_offset=40))
    assert [(d.signup_id, d.status, d.ticket) for d in batch.decisions] == [
        ("s-1", ACCEPTED, None), ("w-1", WAITLISTED, 42)]
    assert batch.transitions == (
        Transition("s-1", course, ACCEPTED, WITHDRAWN, date(1990, 5, 5)),
        Transition("w-1", course, WAITLISTED, ACCEPTED, dob))
    assert [(c.title, c.capacity, c.waitlist_capacity) for c in batch.changed] == [
        ("Title 2", 5, 2)]
    assert batch.courses[0].waitlist_capacity == 0  # a CourseCreated v2 of the default
    # Only accepted first decisions count in the age deltas: the promotion is a transition.
    assert deltas(batch.decisions)[course].count == 1
