"""One command against the processor's three tables: get, decide, evolve, put. No I/O.

The tables are any mutable mappings: faust tables in the agent, plain dicts in the
benchmark's baseline loop and in the unit tests.
"""

from __future__ import annotations

from collections.abc import Callable, MutableMapping
from datetime import UTC, datetime
from typing import Any, cast

from course_processor import domain
from course_processor.records import course_from_value, course_to_value
from schemas.codec import decode, encode
from schemas.messages import Command, CreateCourse, Decision, Event, SignUp, StudentSignedUp


def utc_now() -> datetime:
    return datetime.now(UTC)


class Decider:
    def __init__(
        self,
        courses: MutableMapping[str, Any],  # course_id -> Course as a dict
        seats: MutableMapping[str, Any],  # enrollment key -> signup_id holding the seat
        decisions: MutableMapping[str, Any],  # signup_id -> Avro bytes of its decision
        now: Callable[[], datetime] = utc_now,
    ) -> None:
        self.courses, self.seats, self.decisions, self.now = courses, seats, decisions, now

    def decide(self, cmd: Command) -> tuple[bytes, Event]:
        """The event for `cmd` as record bytes, with the tables already updated."""
        return self.create(cmd) if isinstance(cmd, CreateCourse) else self.sign_up(cmd)

    def create(self, cmd: CreateCourse) -> tuple[bytes, Event]:
        course = course_from_value(self.courses.get(cmd.course_id))
        event = domain.decide_create(course, cmd, self.now())
        self.store(course, event)
        return encode(event), event

    def sign_up(self, cmd: SignUp) -> tuple[bytes, Event]:
        key = domain.enrollment_key(cmd.course_id, cmd.email)
        course = course_from_value(self.courses.get(cmd.course_id))
        stored: bytes | None = self.decisions.get(cmd.signup_id)
        prior = cast(Decision, decode(stored)) if stored is not None else None
        event = domain.decide_signup(course, prior, self.seats.get(key), cmd, self.now())
        if stored is not None and event is prior:
            return stored, event  # a repeat: the very record sent the first time
        # One seat entry per student: a course of 100,000 students never rewrites a
        # value that grows with its enrollments.
        self.store(course, event)
        if isinstance(event, StudentSignedUp):
            self.seats[key] = cmd.signup_id
        value = self.decisions[cmd.signup_id] = encode(event)
        return value, event

    def store(self, course: domain.Course | None, event: Event) -> None:
        evolved = domain.evolve(course, event)
        if evolved is not None and evolved != course:
            self.courses[evolved.course_id] = course_to_value(evolved)
