"""The course processor's decisions: pure decide + evolve over one course's state.

A registration term: a course's seats and its waiting list. The course keeps counters
only (seats taken, students waiting, waiting-list tickets issued); each live sign-up
is a `Place` the caller looks up by sign-up id, and the waiting list is the waiting
places in ticket order. So deciding reads a few keys, never a whole course, and the
state holds only what is live: enrolled seats and waiting entries. No I/O, no clock:
the caller passes `now`.

Invariants, at every step: seats_taken <= capacity; waiting <= the waiting list's
capacity at the time each student joined (a lowered waitlist_capacity removes nobody);
waiting > 0 only when the course is full, since every freed seat goes at once to the
student with the lowest ticket, the one who has waited longest.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import date, datetime
from typing import TypedDict

from schemas.messages import (
    COURSE_ID_PATTERN,
    ChangeCourse,
    Command,
    CourseChanged,
    CourseChangeRejected,
    CourseChangeRejectionReason,
    CourseCreated,
    CourseCreationRejected,
    CreateCourse,
    Event,
    SignUp,
    SignupDecision,
    SignUpRejected,
    StudentPromoted,
    StudentSignedUp,
    StudentWaitlisted,
    StudentWithdrew,
    Withdraw,
    WithdrawalRejected,
    event_id_for,
)

_COURSE_ID = re.compile(COURSE_ID_PATTERN)
MAX_CAPACITY = 100_000


@dataclass(frozen=True)
class Course:
    course_id: str
    title: str
    lecturer: str
    capacity: int
    seats_taken: int = 0
    waitlist_capacity: int = 0
    waiting: int = 0  # students on the waiting list now
    tickets: int = 0  # waiting-list tickets issued so far: the next one is tickets + 1


@dataclass(frozen=True)
class Place:
    """A live sign-up: a seat (ticket None) or a place on the waiting list."""

    signup_id: str
    seat_key: str
    date_of_birth: date
    ticket: int | None = None

    @property
    def enrolled(self) -> bool:
        return self.ticket is None


def validate(cmd: Command) -> list[str]:
    """Problems that make a command impossible to decide; empty when it is fine."""
    if isinstance(cmd, CreateCourse):
        return _create_problems(cmd)
    if isinstance(cmd, Withdraw):
        return [*_missing(cmd.command_id, "command_id"), *_missing(cmd.signup_id, "signup_id")]
    if isinstance(cmd, ChangeCourse):
        return _change_problems(cmd)
    return _signup_problems(cmd)


def _change_problems(cmd: ChangeCourse) -> list[str]:
    problems = _missing(cmd.command_id, "command_id")
    for name in ("title", "lecturer"):
        value = getattr(cmd, name)
        if value is not None:
            problems += _missing(value, name)
    if cmd.capacity is not None and not 1 <= cmd.capacity <= MAX_CAPACITY:
        problems.append(f"capacity: must be 1 to {MAX_CAPACITY}")
    if cmd.waitlist_capacity is not None and not 0 <= cmd.waitlist_capacity <= MAX_CAPACITY:
        problems.append(f"waitlist_capacity: must be 0 to {MAX_CAPACITY}")
    return problems


def _create_problems(cmd: CreateCourse) -> list[str]:
    problems = _missing(cmd.command_id, "command_id")
    if not _COURSE_ID.fullmatch(cmd.course_id):
        problems.append(f"course_id: must match {COURSE_ID_PATTERN}")
    problems += _missing(cmd.title, "title") + _missing(cmd.lecturer, "lecturer")
    if cmd.capacity < 1:
        problems.append("capacity: must be at least 1")
    if cmd.waitlist_capacity < 0:
        problems.append("waitlist_capacity: must not be negative")
    return problems


def _signup_problems(cmd: SignUp) -> list[str]:
    # A malformed course id is no problem here: it names no course, so the sign-up
    # still gets its decision (course_not_found) instead of vanishing into the DLQ.
    ids = [*_missing(cmd.command_id, "command_id"), *_missing(cmd.signup_id, "signup_id")]
    if cmd.key_id is None:  # a command from before SignUp v2: personal data in clear
        return [*ids, *_missing(cmd.email, "email"), *_missing(cmd.name, "name")]
    # Sealed: the processor never opens it (it has no key), it only copies it on.
    return [
        *ids,
        *([] if cmd.email_sealed else ["email_sealed: must not be empty"]),
        *([] if cmd.name_sealed else ["name_sealed: must not be empty"]),
        *_missing(cmd.seat_key or "", "seat_key"),
    ]


def _missing(value: str, field: str) -> list[str]:
    return [] if value.strip() else [f"{field}: must not be empty"]


def decide_create(
    course: Course | None, cmd: CreateCourse, now: datetime
) -> CourseCreated | CourseCreationRejected | None:
    """The event of a course creation; None for a repeat of the creation that made it."""
    if course is None:
        return CourseCreated(
            **_meta(cmd.command_id, cmd.course_id, cmd.correlation_id, "CourseCreated", now),
            title=cmd.title, lecturer=cmd.lecturer, capacity=cmd.capacity,
            waitlist_capacity=cmd.waitlist_capacity,
        )
    created = (course.title, course.lecturer, course.capacity, course.waitlist_capacity)
    if created == (cmd.title, cmd.lecturer, cmd.capacity, cmd.waitlist_capacity):
        # A repeat, unless the course was changed since; then the repeat finds another
        # course under its id and is rejected, as any other creation would be.
        return None
    return CourseCreationRejected(
        **_meta(cmd.command_id, cmd.course_id, cmd.correlation_id, "CourseCreationRejected",
                now),
        reason="course_exists",
    )


def decide_signup(
    course: Course | None,
    holder: str | None,
    cmd: SignUp,
    now: datetime,
) -> SignupDecision | None:
    """The decision on a sign-up; None for a repeat of the one that holds the place.

    `holder` is the sign-up id holding the student's seat or waiting place in this
    course (one student, one place: waiting counts), or None.
    """
    if course is None:
        return _reject(cmd, "course_not_found", now)
    if holder == cmd.signup_id:
        return None
    if holder is not None:
        return _reject(cmd, "already_enrolled", now)
    if course.seats_taken < course.capacity:
        return StudentSignedUp(
            **_meta(cmd.command_id, cmd.course_id, cmd.correlation_id, "StudentSignedUp", now),
            signup_id=cmd.signup_id, email=cmd.email, name=cmd.name,
            date_of_birth=cmd.date_of_birth, seats_taken=course.seats_taken + 1,
            capacity=course.capacity, key_id=cmd.key_id, email_sealed=cmd.email_sealed,
            name_sealed=cmd.name_sealed, seat_key=cmd.seat_key,
        )
    if course.waiting < course.waitlist_capacity:
        return StudentWaitlisted(
            **_meta(cmd.command_id, cmd.course_id, cmd.correlation_id, "StudentWaitlisted", now),
            signup_id=cmd.signup_id, email=cmd.email, name=cmd.name,
            date_of_birth=cmd.date_of_birth, position=course.waiting + 1,
            key_id=cmd.key_id, email_sealed=cmd.email_sealed, name_sealed=cmd.name_sealed,
            seat_key=cmd.seat_key,
        )
    return _reject(cmd, "course_full", now)


def decide_withdrawal(
    course: Course | None,
    place: Place | None,
    head: Place | None,
    cmd: Withdraw,
    now: datetime,
) -> tuple[Event, ...]:
    """The withdrawal, and the promotion of `head` (the first waiting place) into the seat
    it frees. `place` is the sign-up's live place, None if it holds none."""
    if course is None or place is None:
        return (WithdrawalRejected(
            **_meta(cmd.command_id, cmd.course_id, cmd.correlation_id, "WithdrawalRejected",
                    now, cmd.signup_id),
            signup_id=cmd.signup_id, reason="not_enrolled",
        ),)
    seats = course.seats_taken - 1 if place.enrolled else course.seats_taken
    withdrew = StudentWithdrew(
        **_meta(cmd.command_id, cmd.course_id, cmd.correlation_id, "StudentWithdrew", now,
                cmd.signup_id),
        signup_id=cmd.signup_id, from_="enrolled" if place.enrolled else "waitlist",
        seats_taken=seats, date_of_birth=place.date_of_birth,
    )
    if not place.enrolled or head is None:
        return (withdrew,)
    return (withdrew, _promote(cmd, head, seats + 1, now))


def seats_to_fill(course: Course | None, cmd: ChangeCourse) -> int:
    """How many waiting students a change promotes: one per new seat, as many as wait."""
    if course is None or cmd.capacity is None or cmd.capacity < course.seats_taken:
        return 0
    return min(course.waiting, cmd.capacity - course.seats_taken)


def decide_change(
    course: Course | None,
    heads: Sequence[Place],
    cmd: ChangeCourse,
    now: datetime,
) -> tuple[Event, ...]:
    """The change, then one promotion per new seat: `heads` are the first
    `seats_to_fill(course, cmd)` waiting places, in ticket order."""
    reason: CourseChangeRejectionReason | None = None
    if course is None:
        reason = "course_not_found"
    elif cmd.capacity is not None and cmd.capacity < course.seats_taken:
        reason = "capacity_below_enrolled"
    if course is None or reason is not None:
        return (CourseChangeRejected(
            **_meta(cmd.command_id, cmd.course_id, cmd.correlation_id, "CourseChangeRejected",
                    now, "course"),
            reason=reason or "course_not_found",
        ),)
    if len(heads) != seats_to_fill(course, cmd):
        raise ValueError(f"{len(heads)} waiting places given, {seats_to_fill(course, cmd)} due")
    changed = CourseChanged(
        **_meta(cmd.command_id, cmd.course_id, cmd.correlation_id, "CourseChanged", now,
                "course"),
        title=course.title if cmd.title is None else cmd.title,
        lecturer=course.lecturer if cmd.lecturer is None else cmd.lecturer,
        capacity=course.capacity if cmd.capacity is None else cmd.capacity,
        waitlist_capacity=(course.waitlist_capacity if cmd.waitlist_capacity is None
                           else cmd.waitlist_capacity),
    )
    promoted = tuple(_promote(cmd, head, course.seats_taken + n, now)
                     for n, head in enumerate(heads, start=1))
    return (changed, *promoted)


def _promote(cmd: Withdraw | ChangeCourse, head: Place, seats: int,
             now: datetime) -> StudentPromoted:
    # The causation id is the command that freed the seat: a reader can tell which
    # withdrawal or change promoted whom.
    return StudentPromoted(
        **_meta(cmd.command_id, cmd.course_id, cmd.correlation_id, "StudentPromoted", now,
                head.signup_id),
        signup_id=head.signup_id, seats_taken=seats, date_of_birth=head.date_of_birth,
    )


def _reject(cmd: SignUp, reason: str, now: datetime) -> SignUpRejected:
    return SignUpRejected(
        **_meta(cmd.command_id, cmd.course_id, cmd.correlation_id, "SignUpRejected", now),
        signup_id=cmd.signup_id, email=cmd.email, name=cmd.name, reason=reason,
        key_id=cmd.key_id, email_sealed=cmd.email_sealed, name_sealed=cmd.name_sealed,
        seat_key=cmd.seat_key,
    )


class _Metadata(TypedDict):
    event_id: str
    event_type: str
    occurred_at: datetime
    course_id: str
    causation_id: str
    correlation_id: str


def _meta(command_id: str, course_id: str, correlation_id: str, event_type: str,
          now: datetime, part: str = "") -> _Metadata:
    # A sign-up's one decision keeps the id it always had (event_id_for(command_id));
    # withdrawals and changes name each of their events by type and subject.
    return {
        "event_id": event_id_for(command_id, f"{event_type}/{part}" if part else ""),
        "event_type": event_type,
        "occurred_at": now,
        "course_id": course_id,
        "causation_id": command_id,
        "correlation_id": correlation_id,
    }


def evolve(course: Course | None, event: Event) -> Course | None:
    """The course after `event`, which `decide_*` just gave for it."""
    if isinstance(event, CourseCreated):
        return course or Course(event.course_id, event.title, event.lecturer,
                                event.capacity, waitlist_capacity=event.waitlist_capacity)
    if course is None:
        return None
    if isinstance(event, StudentSignedUp):
        # max: a fresh acceptance is always one more than the seats taken, and folding a
        # redelivered (older) one again (state/migrate.py) must not give seats back.
        return replace(course, seats_taken=max(course.seats_taken, event.seats_taken))
    if isinstance(event, StudentWaitlisted):
        return replace(course, waiting=course.waiting + 1, tickets=course.tickets + 1)
    if isinstance(event, StudentPromoted):
        return replace(course, seats_taken=event.seats_taken, waiting=course.waiting - 1)
    if isinstance(event, StudentWithdrew):
        left_queue = event.from_ == "waitlist"
        return replace(course, seats_taken=event.seats_taken,
                       waiting=course.waiting - left_queue)
    if isinstance(event, CourseChanged):
        return replace(course, title=event.title, lecturer=event.lecturer,
                       capacity=event.capacity, waitlist_capacity=event.waitlist_capacity)
    return course
