"""The decider against plain dicts: processing a command again gives the same record."""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta

from course_processor.decider import Decider
from schemas.codec import decode
from schemas.messages import CreateCourse, SignUp, SignUpRejected, StudentSignedUp

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.t = T0

    def __call__(self) -> datetime:
        self.t += timedelta(seconds=1)  # every decision at another time
        return self.t


def decider() -> Decider:
    return Decider({}, {}, {}, now=Clock())


def create(capacity: int = 2) -> CreateCourse:
    return CreateCourse(str(uuid.uuid4()), "intro", "Intro", "Ada", capacity, T0, "corr")


def signup(email: str) -> SignUp:
    return SignUp(str(uuid.uuid4()), str(uuid.uuid4()), "intro", email, "Ann",
                  date(2000, 1, 1), T0, str(uuid.uuid4()))


def test_the_same_command_twice_gives_the_very_same_record() -> None:
    d = decider()
    d.decide(create())
    cmd = signup("ann@example.org")
    first, again = d.decide(cmd), d.decide(cmd)
    assert first[0] == again[0]  # same bytes, occurred_at included
    assert isinstance(first[1], StudentSignedUp) and first[1].seats_taken == 1


def test_a_retried_sign_up_gets_its_first_decision_back() -> None:
    d = decider()
    d.decide(create(capacity=1))
    cmd = signup("ann@example.org")
    value, event = d.decide(cmd)
    d.decide(signup("bob@example.org"))  # the course is full now
    retried = replace(cmd, command_id=str(uuid.uuid4()))
    assert d.decide(retried) == (value, event)


def test_a_student_holds_one_seat_whatever_the_letter_case() -> None:
    d = decider()
    d.decide(create(capacity=5))
    d.decide(signup("Ann@Example.org"))
    _, event = d.decide(signup("  ann@EXAMPLE.ORG"))
    assert isinstance(event, SignUpRejected) and event.reason == "already_enrolled"
    assert len(d.seats) == 1


def test_seats_never_exceed_capacity_and_each_student_is_one_entry() -> None:
    d = decider()
    d.decide(create(capacity=3))
    events = [d.decide(signup(f"s{i}@example.org"))[1] for i in range(10)]
    accepted = [e for e in events if isinstance(e, StudentSignedUp)]
    assert [e.seats_taken for e in accepted] == [1, 2, 3]
    assert {e.reason for e in events if isinstance(e, SignUpRejected)} == {"course_full"}
    assert d.courses["intro"]["seats_taken"] == 3
    assert len(d.decisions) == 10


def test_the_stored_decision_is_the_record_sent() -> None:
    d = decider()
    d.decide(create())
    cmd = signup("ann@example.org")
    value, event = d.decide(cmd)
    assert d.decisions[cmd.signup_id] == value
    assert decode(value) == event
