"""The decider against plain dicts: what the tables hold, repeats, and the bounded memory.

Every test decides as the agent does: plan, send the event, then apply the changes.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from course_processor.deciding.handler import Decider
from course_processor.deciding.values import BUILT_KEY, MEMORY_DAYS, MIGRATED_KEY, SignupOutcome
from schemas.messages import (
    Command,
    CreateCourse,
    Event,
    SignUp,
    SignUpRejected,
    StudentSignedUp,
)
from schemas.pseudonyms import seat_key

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
SECRET = b"unit-test-secret"


class Clock:
    def __init__(self) -> None:
        self.t = T0

    def __call__(self) -> datetime:
        self.t += timedelta(seconds=1)  # every decision at another time
        return self.t


def decider(clock: Clock | None = None) -> Decider:
    return Decider({}, {}, {}, SECRET, now=clock or Clock())


SENT: list[Event] = []  # what the tests' "agent" sent, in order


def decide(d: Decider, cmd: Command) -> Event | None:
    """The agent's order (faust_eos/agents.py): plan, send the event, apply the changes."""
    plan = d.plan(cmd)
    if plan.event is not None:
        SENT.append(plan.event)
    d.apply(plan)
    return plan.event


def create(capacity: int = 2) -> CreateCourse:
    return CreateCourse(str(uuid.uuid4()), "intro", "Intro", "Ada", capacity, T0, "corr")


def signup(email: str, name: str = "Ann Example") -> SignUp:
    return SignUp(str(uuid.uuid4()), str(uuid.uuid4()), "intro", email, name,
                  date(2000, 1, 1), T0, str(uuid.uuid4()))


def test_a_repeated_command_writes_nothing() -> None:
    d = decider()
    decide(d, create())
    cmd = signup("ann@example.org")
    first = decide(d, cmd)
    tables_after_first = json.dumps([d.courses, d.seats, d.decided], sort_keys=True)

    assert isinstance(first, StudentSignedUp) and first.seats_taken == 1
    assert decide(d, cmd) is None
    assert decide(d, replace(cmd, command_id=str(uuid.uuid4()))) is None
    assert json.dumps([d.courses, d.seats, d.decided], sort_keys=True) == tables_after_first


def test_a_repeated_create_writes_nothing() -> None:
    d = decider()
    cmd = create()
    assert decide(d, cmd) is not None
    assert decide(d, replace(cmd, command_id=str(uuid.uuid4()))) is None


def test_a_repeated_rejection_stays_a_rejection_after_the_course_is_created() -> None:
    d = decider()
    cmd = signup("ann@example.org")
    first = decide(d, cmd)
    decide(d, create())

    assert isinstance(first, SignUpRejected) and first.reason == "course_not_found"
    assert decide(d, replace(cmd, command_id=str(uuid.uuid4()))) is None
    assert d.courses["intro"]["seats_taken"] == 0


def test_a_student_holds_one_seat_whatever_the_letter_case() -> None:
    d = decider()
    decide(d, create(capacity=5))
    decide(d, signup("Ann@Example.org"))
    event = decide(d, signup("  ann@EXAMPLE.ORG"))
    assert isinstance(event, SignUpRejected) and event.reason == "already_enrolled"
    assert len(d.seats) == 1


def test_seats_never_exceed_capacity_and_each_student_is_one_entry() -> None:
    d = decider()
    decide(d, create(capacity=3))
    events = [decide(d, signup(f"s{i}@example.org")) for i in range(10)]
    accepted = [e for e in events if isinstance(e, StudentSignedUp)]
    assert [e.seats_taken for e in accepted] == [1, 2, 3]
    assert {e.reason for e in events if isinstance(e, SignUpRejected)} == {"course_full"}
    assert d.courses["intro"]["seats_taken"] == 3
    assert len(d.seats) == 3 and len(d.decided) == 10


def test_the_tables_hold_no_personal_data_and_compact_outcomes() -> None:
    d = decider()
    decide(d, create(capacity=1))
    decide(d, signup("Ann.Person@example.org", name="Ann Person"))
    decide(d, signup("bob.other@example.org", name="Bob Other"))
    dumped = json.dumps([d.courses, d.seats, d.decided]).casefold()

    for secret in ("ann.person", "bob.other", "example.org", "ann person", "bob other",
                   "2000-01-01"):
        assert secret not in dumped
    outcomes = sorted((SignupOutcome.decode(v) for v in d.decided.values()), key=lambda o: o.status)
    assert [o.status for o in outcomes] == ["accepted", "rejected"]
    assert {o.detail for o in outcomes} == {"1", "course_full"}


def test_decisions_are_forgotten_after_the_window_but_seats_never() -> None:
    clock = Clock()
    d = decider(clock)
    decide(d, create(capacity=100))
    old = signup("old@example.org")
    rejected = signup("bad@example.org")
    decide(d, old)
    decide(d, replace(rejected, course_id="nope"))
    clock.t += timedelta(days=MEMORY_DAYS + 2)
    for i in range(5):  # each new decision forgets up to two expired ones
        decide(d, signup(f"new{i}@example.org"))

    assert len(d.decided) == 5
    assert all(not k.startswith(old.issued_at.date().isoformat()) for k in d.decided)
    assert len(d.seats) == 6
    # The accepted sign-up is still recognised by its seat: no second decision.
    assert decide(d, replace(old, command_id=str(uuid.uuid4()))) is None


def test_the_memory_stays_as_large_as_the_window_under_steady_load() -> None:
    clock = Clock()
    d = decider(clock)
    decide(d, create(capacity=10**6))
    per_day = 20
    for _day in range(3 * MEMORY_DAYS):
        for i in range(per_day):
            decide(d, signup(f"s{uuid.uuid4()}-{i}@example.org"))
        clock.t += timedelta(days=1)
    assert len(d.decided) <= (MEMORY_DAYS + 1) * per_day
    assert len(d.seats) == 3 * MEMORY_DAYS * per_day


def test_the_migration_mark_is_never_forgotten() -> None:
    clock = Clock()
    d = decider(clock)
    d.decided[MIGRATED_KEY] = "built from course-events"
    d.decided[BUILT_KEY] = "built from course-events, with the registration term"
    decide(d, create(capacity=10))
    clock.t += timedelta(days=100)
    for i in range(5):
        decide(d, signup(f"s{i}@example.org"))
    assert MIGRATED_KEY in d.decided and BUILT_KEY in d.decided


def sealed_signup(email: str) -> SignUp:
    """A SignUp v2 as the command API writes it: no clear e-mail or name."""
    return replace(signup(""), name="", key_id="k-1", email_sealed=b"\x01" * 40,
                   name_sealed=b"\x02" * 40, seat_key=seat_key(SECRET, "intro", email))


def test_a_sealed_sign_up_takes_its_seat_by_the_commands_seat_key_and_copies_the_seal() -> None:
    d = decider()
    decide(d, create())
    cmd = sealed_signup("ann@example.org")
    event = decide(d, cmd)

    assert isinstance(event, StudentSignedUp)
    assert (event.email, event.name, event.key_id) == ("", "", "k-1")
    assert (event.email_sealed, event.name_sealed) == (cmd.email_sealed, cmd.name_sealed)
    assert event.seat_key == cmd.seat_key
    assert d.seats == {cmd.seat_key: cmd.signup_id}


def test_the_same_student_sealed_and_in_clear_holds_one_seat() -> None:
    d = decider()
    decide(d, create())
    decide(d, signup("ann@example.org"))  # an old command, still in course-commands
    again = decide(d, sealed_signup("ANN@example.org"))

    assert isinstance(again, SignUpRejected) and again.reason == "already_enrolled"
    assert again.key_id == "k-1" and again.email == ""


class CountingReads(dict):  # type: ignore[type-arg]
    """A decided_signups table that counts the keys the decider reads."""

    reads = 0

    def get(self, key, default=None):  # type: ignore[no-untyped-def]
        self.reads += 1
        return super().get(key, default)


def test_a_memory_of_only_today_is_read_once_per_sign_up() -> None:
    # The processor's `oldest` (expiry's question, cached) says where the memory
    # starts: no day before it holds an entry, so none of them is read.
    decided = CountingReads()
    d = Decider({}, {}, decided, SECRET, now=Clock(), oldest=lambda n: sorted(decided)[:n])
    decide(d, create(capacity=10))
    decide(d, signup("ann@example.org"))
    decided.reads = 0
    decide(d, signup("bob@example.org"))
    # One, or none when bob's key sorts before ann's, the first key: no key before the
    # first live one can be in the table.
    assert decided.reads <= 1


def test_a_decision_of_days_ago_is_still_found_past_the_oldest_day() -> None:
    clock = Clock()
    decided = CountingReads()
    d = Decider({}, {}, decided, SECRET, now=clock, oldest=lambda n: sorted(decided)[:n])
    decide(d, create(capacity=10))
    cmd = replace(signup("ann@example.org"), course_id="nope")  # remembered, not seated
    assert isinstance(decide(d, cmd), SignUpRejected)
    clock.t += timedelta(days=MEMORY_DAYS - 1)
    decide(d, signup("bob@example.org"))
    assert decide(d, replace(cmd, command_id=str(uuid.uuid4()))) is None


@given(st.dates(), st.text(max_size=40), st.integers(-12, 12))
def test_the_memory_window_is_the_last_memory_days_spelled_as_keys(today: date, name: str,
                                                                   shift: int) -> None:
    # remembered_keys and expired read one cached window per day (values.py): the same
    # answers as the date arithmetic they replace.
    from course_processor.deciding.values import expired, memory_key
    from course_processor.deciding.values import remembered_keys as keys_of

    assert keys_of(today, name) == [memory_key(today - timedelta(days=n), name)
                                    for n in range(MEMORY_DAYS + 1)]
    try:
        day = today + timedelta(days=shift)
    except OverflowError:
        return
    key = memory_key(day, name)
    assert expired(key, today) == (key < (today - timedelta(days=MEMORY_DAYS)).isoformat())
