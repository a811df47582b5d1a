"""A registration term against plain dicts: given/when/then cases, and random sequences of
sign-ups, withdrawals, capacity changes and repeats checked against a reference model."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from course_processor.deciding.domain import Course
from course_processor.deciding.handler import Decider, course_from_value
from schemas.messages import (
    ChangeCourse,
    Command,
    CourseChanged,
    CourseChangeRejected,
    CourseCreated,
    CreateCourse,
    Event,
    SignUp,
    SignUpRejected,
    StudentPromoted,
    StudentSignedUp,
    StudentWaitlisted,
    StudentWithdrew,
    Withdraw,
    WithdrawalRejected,
    withdrawal_id_for,
)

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
COURSE = "intro"


def new_decider() -> Decider:
    return Decider({}, {}, {}, b"unit-test-secret", now=lambda: T0, places={}, waiting={})


def create(capacity: int, waitlist: int = 0) -> CreateCourse:
    return CreateCourse(str(uuid.uuid4()), COURSE, "Intro", "Ada", capacity, T0, "corr",
                        waitlist_capacity=waitlist)


def birth(student: int) -> date:
    return date(1990, 1, 1) + timedelta(days=97 * student)


def signup(student: int, attempt: int = 0) -> SignUp:
    return SignUp(str(uuid.uuid4()), f"s{student}-a{attempt}", COURSE, "", "", birth(student),
                  T0, "corr", seat_key=f"seat-{student}", key_id="k",
                  email_sealed=b"e", name_sealed=b"n")


def withdraw(signup_id: str) -> Withdraw:
    return Withdraw(withdrawal_id_for(COURSE, signup_id), signup_id, COURSE, T0, "corr")


def change(capacity: int | None = None, waitlist: int | None = None) -> ChangeCourse:
    return ChangeCourse(str(uuid.uuid4()), COURSE, T0, "corr", capacity=capacity,
                        waitlist_capacity=waitlist)


def kinds(events: tuple[Event, ...]) -> list[tuple[str, str]]:
    return [(type(e).__name__, getattr(e, "signup_id", "")) for e in events]


def course_of(d: Decider) -> Course:
    course = course_from_value(d.courses.get(COURSE))
    assert course is not None
    return course


# ---------------------------------------------------------------- given / when / then


def test_a_full_course_with_room_on_its_waiting_list_waitlists_with_the_position() -> None:
    d = new_decider()
    d.decide(create(1, waitlist=2))
    d.decide(signup(1))
    (second,) = d.decide(signup(2))
    (third,) = d.decide(signup(3))
    (fourth,) = d.decide(signup(4))
    assert isinstance(second, StudentWaitlisted) and second.position == 1
    assert isinstance(third, StudentWaitlisted) and third.position == 2
    assert isinstance(fourth, SignUpRejected) and fourth.reason == "course_full"


def test_without_a_waiting_list_a_full_course_rejects_as_before() -> None:
    d = new_decider()
    (created,) = d.decide(create(1))
    assert isinstance(created, CourseCreated) and created.waitlist_capacity == 0
    d.decide(signup(1))
    (event,) = d.decide(signup(2))
    assert isinstance(event, SignUpRejected) and event.reason == "course_full"


def test_a_withdrawal_frees_the_seat_for_the_head_of_the_waiting_list_at_once() -> None:
    d = new_decider()
    d.decide(create(1, waitlist=5))
    for student in (1, 2, 3):
        d.decide(signup(student))
    cmd = withdraw("s1-a0")
    withdrew, promoted = d.decide(cmd)
    assert isinstance(withdrew, StudentWithdrew)
    assert (withdrew.from_, withdrew.seats_taken, withdrew.date_of_birth) == (
        "enrolled", 0, birth(1))
    assert isinstance(promoted, StudentPromoted)
    assert (promoted.signup_id, promoted.seats_taken, promoted.date_of_birth) == (
        "s2-a0", 1, birth(2))
    assert promoted.causation_id == withdrew.causation_id == cmd.command_id
    assert promoted.event_id != withdrew.event_id
    assert (course_of(d).seats_taken, course_of(d).waiting) == (1, 1)


def test_a_repeated_withdrawal_adds_nothing_and_a_new_sign_up_is_a_new_place() -> None:
    d = new_decider()
    d.decide(create(1, waitlist=1))
    d.decide(signup(1))
    assert kinds(d.decide(withdraw("s1-a0"))) == [("StudentWithdrew", "s1-a0")]
    assert d.decide(withdraw("s1-a0")) == ()
    assert d.decide(signup(1)) == ()  # the withdrawn sign-up asked again: a repeat
    assert kinds(d.decide(signup(1, attempt=1))) == [("StudentSignedUp", "s1-a1")]


def test_withdrawing_a_rejected_or_unknown_sign_up_is_rejected_once() -> None:
    d = new_decider()
    d.decide(create(1))
    d.decide(signup(1))
    d.decide(signup(2))  # course_full
    for signup_id in ("s2-a0", "nobody"):
        (event,) = d.decide(withdraw(signup_id))
        assert isinstance(event, WithdrawalRejected) and event.reason == "not_enrolled"
    assert d.decide(withdraw("s2-a0")) == ()  # the same command again adds nothing


def test_the_same_change_command_twice_is_decided_once() -> None:
    d = new_decider()
    d.decide(create(1, waitlist=2))
    d.decide(signup(1))
    d.decide(signup(2))
    cmd = change(capacity=2)
    assert kinds(d.decide(cmd)) == [("CourseChanged", ""), ("StudentPromoted", "s2-a0")]
    assert d.decide(cmd) == ()


def test_a_raised_capacity_promotes_one_waiting_student_per_new_seat_in_order() -> None:
    d = new_decider()
    d.decide(create(1, waitlist=3))
    for student in (1, 2, 3, 4):
        d.decide(signup(student))
    events = d.decide(change(capacity=3))
    assert kinds(events) == [("CourseChanged", ""), ("StudentPromoted", "s2-a0"),
                             ("StudentPromoted", "s3-a0")]
    assert [e.seats_taken for e in events if isinstance(e, StudentPromoted)] == [2, 3]
    assert (course_of(d).seats_taken, course_of(d).waiting) == (3, 1)


def test_a_capacity_below_the_students_enrolled_is_rejected() -> None:
    d = new_decider()
    d.decide(create(3))
    d.decide(signup(1))
    d.decide(signup(2))
    (event,) = d.decide(change(capacity=1))
    assert isinstance(event, CourseChangeRejected) and event.reason == "capacity_below_enrolled"
    (same,) = d.decide(change(capacity=2, waitlist=0))
    assert isinstance(same, CourseChanged) and (same.capacity, same.title) == (2, "Intro")


def test_a_change_of_an_unknown_course_is_rejected() -> None:
    (event,) = new_decider().decide(change(capacity=3))
    assert isinstance(event, CourseChangeRejected) and event.reason == "course_not_found"


def test_a_lowered_waiting_list_removes_nobody() -> None:
    d = new_decider()
    d.decide(create(1, waitlist=3))
    for student in (1, 2, 3, 4):
        d.decide(signup(student))
    d.decide(change(waitlist=1))
    assert course_of(d).waiting == 3
    (event,) = d.decide(signup(5))
    assert isinstance(event, SignUpRejected) and event.reason == "course_full"


def test_one_student_one_place_waiting_included() -> None:
    d = new_decider()
    d.decide(create(1, waitlist=3))
    d.decide(signup(1))
    d.decide(signup(2))
    (event,) = d.decide(signup(2, attempt=1))
    assert isinstance(event, SignUpRejected) and event.reason == "already_enrolled"


def test_withdrawing_from_the_waiting_list_moves_those_behind_up() -> None:
    d = new_decider()
    d.decide(create(1, waitlist=3))
    for student in (1, 2, 3, 4):
        d.decide(signup(student))
    (event,) = d.decide(withdraw("s2-a0"))
    assert isinstance(event, StudentWithdrew) and (event.from_, event.seats_taken) == (
        "waitlist", 1)
    assert [d.waiting[k] for k in sorted(d.waiting)] == ["s3-a0", "s4-a0"]
    _, promoted = d.decide(withdraw("s1-a0"))
    assert isinstance(promoted, StudentPromoted) and promoted.signup_id == "s3-a0"


def test_the_state_holds_only_live_places() -> None:
    d = new_decider()
    d.decide(create(2, waitlist=2))
    for student in range(1, 5):
        d.decide(signup(student))
    for student in range(1, 5):
        d.decide(withdraw(f"s{student}-a0"))
    assert d.places == {} and d.waiting == {}
    assert (course_of(d).seats_taken, course_of(d).waiting) == (0, 0)


# ---------------------------------------------------------------- the reference model


@dataclass
class Model:
    """The plainest possible term: two lists and a few sets."""

    capacity: int
    waitlist: int
    enrolled: list[str] = field(default_factory=list)
    waiting: list[str] = field(default_factory=list)
    student_of: dict[str, int] = field(default_factory=dict)
    decided: set[str] = field(default_factory=set)
    withdrawn: set[str] = field(default_factory=set)  # sign-ups whose withdrawal was decided
    changes: set[str] = field(default_factory=set)  # change commands decided

    def holder(self, student: int) -> str | None:
        live = [s for s in self.enrolled + self.waiting if self.student_of[s] == student]
        assert len(live) <= 1
        return live[0] if live else None

    def sign_up(self, signup_id: str, student: int) -> list[tuple[str, str]]:
        if signup_id in self.decided:
            return []
        self.decided.add(signup_id)
        self.student_of[signup_id] = student
        if self.holder(student) is not None:
            return [("SignUpRejected", signup_id)]
        if len(self.enrolled) < self.capacity:
            self.enrolled.append(signup_id)
            return [("StudentSignedUp", signup_id)]
        if len(self.waiting) < self.waitlist:
            self.waiting.append(signup_id)
            return [("StudentWaitlisted", signup_id)]
        return [("SignUpRejected", signup_id)]

    def withdraw(self, signup_id: str) -> list[tuple[str, str]]:
        if signup_id in self.withdrawn:
            return []  # every withdrawal of a sign-up is the same command: decided once
        self.withdrawn.add(signup_id)
        if signup_id in self.waiting:
            self.waiting.remove(signup_id)
            return [("StudentWithdrew", signup_id)]
        if signup_id not in self.enrolled:
            return [("WithdrawalRejected", signup_id)]
        self.enrolled.remove(signup_id)
        return [("StudentWithdrew", signup_id), *self.fill(1)]

    def change(self, command_id: str, capacity: int | None,
               waitlist: int | None) -> list[tuple[str, str]]:
        if command_id in self.changes:
            return []  # the same command again: decided once
        self.changes.add(command_id)
        if capacity is not None and capacity < len(self.enrolled):
            return [("CourseChangeRejected", "")]
        self.capacity = self.capacity if capacity is None else capacity
        self.waitlist = self.waitlist if waitlist is None else waitlist
        return [("CourseChanged", ""), *self.fill(self.capacity - len(self.enrolled))]

    def fill(self, seats: int) -> list[tuple[str, str]]:
        promoted = self.waiting[:max(0, seats)]
        del self.waiting[:len(promoted)]
        self.enrolled += promoted
        return [("StudentPromoted", s) for s in promoted]


students = st.integers(0, 6)
ops = st.one_of(
    st.tuples(st.just("sign_up"), students, st.integers(0, 1)),
    # mostly a sign-up sent before (an index into them), sometimes one never sent
    st.tuples(st.just("withdraw"), st.integers(0, 1000), st.booleans()),
    st.tuples(st.just("change"), st.one_of(st.none(), st.integers(1, 6)),
              st.one_of(st.none(), st.integers(0, 4))),
    st.tuples(st.just("repeat"), st.integers(0, 1000), st.just(0)),
)


@settings(max_examples=400, deadline=None)
@given(capacity=st.integers(1, 4), waitlist=st.integers(0, 3),
       steps=st.lists(ops, min_size=1, max_size=60))
def test_random_terms_match_the_reference_model(
    capacity: int, waitlist: int, steps: list[tuple[str, Any, Any]]
) -> None:
    d = new_decider()
    d.decide(create(capacity, waitlist))
    model = Model(capacity, waitlist)
    sent: list[Command] = []
    signup_ids: list[str] = ["never-sent"]
    log: list[Event] = []
    for op, a, b in steps:
        cmd: Command
        if op == "repeat":
            if not sent:
                continue
            cmd = sent[a % len(sent)]
        elif op == "sign_up":
            cmd = signup(a, b)
            signup_ids.append(cmd.signup_id)
        elif op == "withdraw":
            cmd = withdraw(signup_ids[0 if b and a % 5 == 0 else a % len(signup_ids)])
        else:
            cmd = change(a, b)
        expected = _expect(model, cmd)
        events = d.decide(cmd)
        sent.append(cmd)
        log += events
        assert kinds(events) == expected
        _check_invariants(d, model, log)


def _expect(model: Model, cmd: Command) -> list[tuple[str, str]]:
    if isinstance(cmd, SignUp):
        return model.sign_up(cmd.signup_id, int((cmd.seat_key or "").removeprefix("seat-")))
    if isinstance(cmd, Withdraw):
        return model.withdraw(cmd.signup_id)
    assert isinstance(cmd, ChangeCourse)
    return model.change(cmd.command_id, cmd.capacity, cmd.waitlist_capacity)


def _check_invariants(d: Decider, model: Model, log: list[Event]) -> None:
    course = course_of(d)
    assert (course.capacity, course.waitlist_capacity) == (model.capacity, model.waitlist)
    assert course.seats_taken == len(model.enrolled) <= course.capacity
    assert course.waiting == len(model.waiting)
    assert course.waiting == 0 or course.seats_taken == course.capacity
    # First come, first served: the waiting table in key order is the model's queue.
    assert [d.waiting[k] for k in sorted(d.waiting)] == model.waiting
    # No student holds two places: every live place has its own seat key.
    seat_keys = [v["seat_key"] for v in d.places.values()]
    assert len(seat_keys) == len(set(seat_keys)) == len(model.enrolled) + len(model.waiting)
    # The statistics a reader folds from the events equal a recount of the enrolled set.
    assert _fold_enrolled(log) == sorted(birth_of(s, model) for s in model.enrolled)
    # Each event's seats_taken is the number enrolled right after it.
    _check_seats_taken(log)


def birth_of(signup_id: str, model: Model) -> date:
    return birth(model.student_of[signup_id])


def _fold_enrolled(log: list[Event]) -> list[date]:
    enrolled: dict[str, date] = {}
    born: dict[str, date] = {}
    for e in log:
        if isinstance(e, StudentSignedUp):
            enrolled[e.signup_id] = e.date_of_birth
        elif isinstance(e, StudentWaitlisted):
            born[e.signup_id] = e.date_of_birth
        elif isinstance(e, StudentPromoted):
            assert born[e.signup_id] == e.date_of_birth
            enrolled[e.signup_id] = e.date_of_birth
        elif isinstance(e, StudentWithdrew) and e.from_ == "enrolled":
            del enrolled[e.signup_id]
    return sorted(enrolled.values())


def _check_seats_taken(log: list[Event]) -> None:
    seats = 0
    for e in log:
        if isinstance(e, StudentSignedUp | StudentPromoted):
            seats += 1
            assert e.seats_taken == seats
        elif isinstance(e, StudentWithdrew):
            seats -= e.from_ == "enrolled"
            assert e.seats_taken == seats


def test_a_sign_up_for_an_unknown_course_is_rejected() -> None:
    (event,) = new_decider().decide(replace(signup(1), course_id="nope"))
    assert isinstance(event, SignUpRejected) and event.reason == "course_not_found"
