"""The rebuild from course-events (state/migrate.py) against the live decider: folding the
events the handler emitted gives, key for key, the tables the handler kept.

Random terms on a few courses over several days: sign-ups (sealed with a seat key, or
clear as before v3), withdrawals of enrolled and waiting students, capacity and waiting
list changes, creations, repeats of any command, and time passing past the decision
memory. Every event goes through the Avro codec, as the rebuild reads it from Kafka.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, date, datetime, timedelta
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from course_processor.deciding.handler import Decider
from course_processor.deciding.values import (
    BUILT_KEY,
    DECIDED,
    MIGRATED_KEY,
    TABLES,
    course_to_value,
    expired,
)
from course_processor.state.migrate import BUILT_VALUE, PartitionTables, changelog_records, fold
from schemas.codec import decode, encode
from schemas.messages import (
    ChangeCourse,
    Command,
    CourseCreated,
    CreateCourse,
    Event,
    SignUp,
    StudentSignedUp,
    StudentWaitlisted,
    Withdraw,
    withdrawal_id_for,
)

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
SECRET = b"unit-test-secret"
COURSES = ["c0", "c1"]


class Clock:
    def __init__(self) -> None:
        self.t = T0

    def __call__(self) -> datetime:
        return self.t


def birth(student: int) -> date:
    return date(1990, 1, 1) + timedelta(days=97 * student)


def signup(course: str, student: int, attempt: int, clear: bool, at: datetime) -> SignUp:
    signup_id = f"{course}-s{student}-a{attempt}"
    if clear:  # a SignUp v1, from before sealing: the seat key is the address's hash
        email = f"Student{student}@Example.org" if attempt else f"student{student}@example.org"
        return SignUp(str(uuid.uuid4()), signup_id, course, email, "Student", birth(student),
                      at, "corr")
    return SignUp(str(uuid.uuid4()), signup_id, course, "", "", birth(student), at, "corr",
                  seat_key=f"seat-{course}-{student}", key_id="k", email_sealed=b"e",
                  name_sealed=b"n")


def live_tables(d: Decider, today: date) -> dict[str, dict[str, Any]]:
    """The handler's tables as the rebuild would write them: decisions the live memory
    has not yet forgotten, although expired (it forgets two per decision), left out."""
    tables = {name: dict(table) for name, table in d.tables.items()}
    tables[DECIDED] = {k: v for k, v in tables[DECIDED].items() if not expired(k, today)}
    return tables


def folded(events: list[Event], today: date) -> dict[str, dict[str, Any]]:
    tables = PartitionTables()
    for event in events:
        fold(tables, decode(encode(event)), SECRET, today)
    rows: dict[str, dict[str, Any]] = {name: {} for name in TABLES}
    for table, key, value in tables.rows():
        rows[table][key] = value
    return rows


courses = st.integers(0, len(COURSES))  # len(COURSES): a course never created
sign_ups = st.tuples(st.just("sign_up"), courses, st.integers(0, 7), st.integers(0, 2),
                     st.booleans())
# an index into the sign-ups sent; sometimes the one never sent
withdrawals = st.tuples(st.just("withdraw"), st.integers(0, 1000))
ops = st.one_of(
    sign_ups, sign_ups, sign_ups, withdrawals, withdrawals,
    st.tuples(st.just("create"), courses, st.integers(1, 2), st.integers(0, 2)),
    st.tuples(st.just("change"), courses, st.one_of(st.none(), st.integers(1, 4)),
              st.one_of(st.none(), st.integers(0, 3))),
    st.tuples(st.just("repeat"), st.integers(0, 1000)),
    # seconds, hours, or days: past MEMORY_DAYS, a repeat is decided again
    st.tuples(st.just("wait"), st.sampled_from([1, 3600, 86_400, 3 * 86_400, 5 * 86_400])),
)


def command(op: tuple[Any, ...], at: datetime, sent: list[Command],
            signup_ids: list[tuple[str, str]]) -> Command | None:
    kind, *args = op
    course = (COURSES + ["never-created"])[args[0]] if kind in (
        "create", "sign_up", "change") else ""
    if kind == "create":
        return CreateCourse(str(uuid.uuid4()), course, "Intro", "Ada", args[1], at, "corr",
                            waitlist_capacity=args[2])
    if kind == "sign_up":
        cmd = signup(course, args[1], args[2], args[3], at)
        signup_ids.append((course, cmd.signup_id))
        return cmd
    if kind == "withdraw":
        course, signup_id = signup_ids[args[0] % len(signup_ids)]
        return Withdraw(withdrawal_id_for(course, signup_id), signup_id, course, at, "corr")
    if kind == "change":
        return ChangeCourse(str(uuid.uuid4()), course, at, "corr", capacity=args[1],
                            waitlist_capacity=args[2])
    return sent[args[0] % len(sent)] if kind == "repeat" and sent else None


@settings(max_examples=400, deadline=None)
@given(steps=st.lists(ops, min_size=10, max_size=80))
def test_folding_the_emitted_events_gives_the_live_tables(steps: list[tuple[Any, ...]]) -> None:
    clock = Clock()
    d = Decider({}, {}, {}, SECRET, now=clock, places={}, waiting={})
    log: list[Event] = []
    sent: list[Command] = []
    signup_ids: list[tuple[str, str]] = [("c0", "never-sent")]
    for course in COURSES:  # most steps then find a course
        log += d.decide(CreateCourse(str(uuid.uuid4()), course, "Intro", "Ada", 1, clock(),
                                     "corr", waitlist_capacity=3))
    for op in steps:
        if op[0] == "wait":
            clock.t += timedelta(seconds=op[1])
            continue
        cmd = command(op, clock(), sent, signup_ids)
        if cmd is None:
            continue
        sent.append(cmd)
        plan = d.plan(cmd)  # as the agent does: plan, send the events, apply
        log += plan.events
        d.apply(plan)
    for today in (clock.t.date(), clock.t.date() + timedelta(days=3)):
        assert folded(log, today) == live_tables(d, today)


def test_a_redelivered_decision_of_an_older_processor_changes_nothing() -> None:
    """An at-least-once processor could write a decision twice: the handler never makes
    a second decision for a sign-up that holds its place or withdrew, so the fold skips
    it (a second StudentWaitlisted would issue a second ticket)."""
    clock = Clock()
    d = Decider({}, {}, {}, SECRET, now=clock, places={}, waiting={})
    log = list(d.decide(CreateCourse("cc", "c0", "Intro", "Ada", 1, clock(), "corr",
                                     waitlist_capacity=2)))
    first, second = (signup("c0", n, 0, False, clock()) for n in (1, 2))
    log += d.decide(first) + d.decide(second)
    withdrawal = Withdraw(withdrawal_id_for("c0", first.signup_id), first.signup_id, "c0",
                          clock(), "corr")
    log += d.decide(withdrawal)
    accepted, waitlisted = log[1], log[2]
    assert isinstance(accepted, StudentSignedUp) and isinstance(waitlisted, StudentWaitlisted)
    today = clock.t.date()
    assert folded([*log[:3], waitlisted, *log[3:], accepted], today) == live_tables(d, today)


def test_a_rebuilt_partition_deletes_what_it_does_not_write_and_ends_with_the_mark() -> None:
    """The restored state of a partition built before the term: an expired decision not
    yet forgotten and the old mark must not survive the rebuild."""
    tables = PartitionTables()
    clock = Clock()
    fold(tables, CourseCreated(event_id="e", event_type="CourseCreated", occurred_at=clock(),
                               course_id="c0", causation_id="cc", correlation_id="corr",
                               title="Intro", lecturer="Ada", capacity=2),
         SECRET, clock.t.date())

    def encode_json(table: str, key: object, value: object) -> tuple[bytes, bytes]:
        return json.dumps(key).encode(), json.dumps(value).encode()

    old = {DECIDED: [b'"2020-01-01/s1"', json.dumps(MIGRATED_KEY).encode()],
           "courses": [b'"c0"', b'"gone"']}
    records = changelog_records(tables, encode_json, lambda table: old.get(table, []))
    assert records == [
        ("courses", b'"gone"', None),
        (DECIDED, b'"2020-01-01/s1"', None),
        (DECIDED, json.dumps(MIGRATED_KEY).encode(), None),
        ("courses", b'"c0"', json.dumps(course_to_value(tables.courses["c0"])).encode()),
        (DECIDED, json.dumps(BUILT_KEY).encode(), json.dumps(BUILT_VALUE).encode()),
    ]


def test_the_marks_are_never_expired() -> None:
    far = date(2999, 1, 1)
    assert not expired(BUILT_KEY, far) and not expired(MIGRATED_KEY, far)
