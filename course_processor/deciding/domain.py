"""The course processor's decisions: pure decide + evolve over one course's state."""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from datetime import datetime
from typing import TypedDict

from schemas.messages import (
    COURSE_ID_PATTERN,
    Command,
    CourseCreated,
    CourseCreationRejected,
    CourseRejectionReason,
    CreateCourse,
    Decision,
    Event,
    RejectionReason,
    SignUp,
    SignUpRejected,
    StudentSignedUp,
    event_id_for,
)

_COURSE_ID = re.compile(COURSE_ID_PATTERN)


@dataclass(frozen=True)
class Course:
    course_id: str
    title: str
    lecturer: str
    capacity: int
    seats_taken: int = 0


def validate(cmd: Command) -> list[str]:
    """Problems that make a command impossible to decide; empty when it is fine."""
    if isinstance(cmd, CreateCourse):
        return _create_problems(cmd)
    return _signup_problems(cmd)


def _create_problems(cmd: CreateCourse) -> list[str]:
    problems = _missing(cmd.command_id, "command_id")
    if not _COURSE_ID.fullmatch(cmd.course_id):
        problems.append(f"course_id: must match {COURSE_ID_PATTERN}")
    problems += _missing(cmd.title, "title") + _missing(cmd.lecturer, "lecturer")
    if cmd.capacity < 1:
        problems.append("capacity: must be at least 1")
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
    if course is not None and _same_details(course, cmd):
        return None
    if course is None:
        return CourseCreated(
            **_metadata(cmd, "CourseCreated", now),
            title=cmd.title,
            lecturer=cmd.lecturer,
            capacity=cmd.capacity,
        )
    reason: CourseRejectionReason = "course_exists"
    return CourseCreationRejected(**_metadata(cmd, "CourseCreationRejected", now), reason=reason)


def _same_details(course: Course, cmd: CreateCourse) -> bool:
    return (course.title, course.lecturer, course.capacity) == (
        cmd.title,
        cmd.lecturer,
        cmd.capacity,
    )


def decide_signup(
    course: Course | None,
    seat_holder: str | None,
    cmd: SignUp,
    now: datetime,
) -> Decision | None:
    """The decision on a sign-up not decided before; None if this sign-up holds the seat.

    `seat_holder` is the sign-up id holding the student's seat in this course. When it
    is this very sign-up, the sign-up was accepted before (its memory of the decision
    may have expired): a repeat, which takes no second seat and writes nothing.
    """
    if course is None:
        return _reject(cmd, "course_not_found", now)
    if seat_holder == cmd.signup_id:
        return None
    if seat_holder is not None:
        return _reject(cmd, "already_enrolled", now)
    if course.seats_taken >= course.capacity:
        return _reject(cmd, "course_full", now)
    return _accept(course, cmd, now, seats_taken=course.seats_taken + 1)


def _accept(course: Course, cmd: SignUp, now: datetime, seats_taken: int) -> StudentSignedUp:
    return StudentSignedUp(
        **_metadata(cmd, "StudentSignedUp", now),
        signup_id=cmd.signup_id,
        email=cmd.email,
        name=cmd.name,
        date_of_birth=cmd.date_of_birth,
        seats_taken=seats_taken,
        capacity=course.capacity,
        key_id=cmd.key_id,
        email_sealed=cmd.email_sealed,
        name_sealed=cmd.name_sealed,
        seat_key=cmd.seat_key,
    )


def _reject(cmd: SignUp, reason: RejectionReason, now: datetime) -> SignUpRejected:
    return SignUpRejected(
        **_metadata(cmd, "SignUpRejected", now),
        signup_id=cmd.signup_id,
        email=cmd.email,
        name=cmd.name,
        reason=reason,
        key_id=cmd.key_id,
        email_sealed=cmd.email_sealed,
        name_sealed=cmd.name_sealed,
        seat_key=cmd.seat_key,
    )


class _Metadata(TypedDict):
    event_id: str
    event_type: str
    occurred_at: datetime
    course_id: str
    causation_id: str
    correlation_id: str


def _metadata(cmd: Command, event_type: str, now: datetime) -> _Metadata:
    return {
        "event_id": event_id_for(cmd.command_id),
        "event_type": event_type,
        "occurred_at": now,
        "course_id": cmd.course_id,
        "causation_id": cmd.command_id,
        "correlation_id": cmd.correlation_id,
    }


def evolve(course: Course | None, event: Event) -> Course | None:
    if isinstance(event, CourseCreated) and course is None:
        return Course(event.course_id, event.title, event.lecturer, event.capacity)
    if isinstance(event, StudentSignedUp) and course is not None:
        # max, not assignment: folding a redelivered (older) decision again must
        # not give back seats taken since.
        return replace(course, seats_taken=max(course.seats_taken, event.seats_taken))
    return course
