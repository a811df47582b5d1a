"""One command against the processor's three tables: get, decide, evolve, put. No I/O.

The tables are any mutable mappings: faust tables in the agent, plain dicts in the
benchmark's baseline loop and in the unit tests (values.py says what they hold).
"""

from __future__ import annotations

from collections.abc import Callable, MutableMapping
from datetime import UTC, datetime
from typing import Any

from course_processor import domain
from course_processor.values import (
    course_from_value,
    course_to_value,
    expired,
    memory_key,
    outcome_of,
    remembered_keys,
)
from schemas.messages import Command, CreateCourse, Event, SignUp, StudentSignedUp
from schemas.pseudonyms import seat_key

# Each new decision forgets at most this many expired ones: more than the one entry
# it adds, so the memory of a busy partition shrinks back to MEMORY_DAYS of decisions
# after a burst, while no single command pays for a large sweep.
FORGET_PER_DECISION = 2


def utc_now() -> datetime:
    return datetime.now(UTC)


def sorted_keys(table: MutableMapping[str, Any]) -> Callable[[int], list[str]]:
    """`oldest` for a small plain dict (tests): its first keys in order, by sorting."""
    return lambda limit: sorted(table)[:limit]


class Decider:
    def __init__(
        self,
        courses: MutableMapping[str, Any],  # course_id -> Course as a dict
        seats: MutableMapping[str, Any],  # seat key -> signup_id holding the seat
        decided: MutableMapping[str, Any],  # "<day>/<signup_id>" -> encoded Outcome
        secret: bytes,  # the key of the seat keys' HMAC
        oldest: Callable[[int], list[str]] | None = None,  # decided's first keys in order
        now: Callable[[], datetime] = utc_now,
    ) -> None:
        self.courses, self.seats, self.decided = courses, seats, decided
        self.secret, self.now = secret, now
        self.oldest = oldest or sorted_keys(decided)

    def decide(self, cmd: Command) -> Event | None:
        """The event for `cmd`, with the tables already updated; None for a repeat."""
        return self.create(cmd) if isinstance(cmd, CreateCourse) else self.sign_up(cmd)

    def create(self, cmd: CreateCourse) -> Event | None:
        course = course_from_value(self.courses.get(cmd.course_id))
        event = domain.decide_create(course, cmd, self.now())
        if event is not None:
            self.store(course, event)
        return event

    def sign_up(self, cmd: SignUp) -> Event | None:
        now = self.now()
        today = now.date()
        if any(self.decided.get(k) is not None for k in remembered_keys(today, cmd.signup_id)):
            return None  # decided within MEMORY_DAYS: the log has its answer already
        key = seat_key(self.secret, cmd.course_id, cmd.email)
        course = course_from_value(self.courses.get(cmd.course_id))
        event = domain.decide_signup(course, self.seats.get(key), cmd, now)
        if event is None:
            return None
        self.store(course, event)
        if isinstance(event, StudentSignedUp):
            self.seats[key] = cmd.signup_id
        outcome = outcome_of(event)
        if outcome is not None:
            self.decided[memory_key(today, cmd.signup_id)] = outcome.encode()
        self.forget_expired(today)
        return event

    def store(self, course: domain.Course | None, event: Event) -> None:
        evolved = domain.evolve(course, event)
        if evolved is not None and evolved != course:
            self.courses[evolved.course_id] = course_to_value(evolved)

    def forget_expired(self, today: Any) -> None:
        for key in self.oldest(FORGET_PER_DECISION):
            if expired(key, today):
                del self.decided[key]
