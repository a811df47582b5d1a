"""One command against the processor's three tables: get, decide, put. No I/O.

`Decider.plan` reads the tables and asks domain.py (the one file that decides a
sign-up) for the event; `Decider.apply` writes the changes that event makes. The
agent sends the event between the two (faust_eos/agents.py says why), and so do the
tests. The tables are any mutable mappings: faust tables in the agent, plain dicts
in the benchmark's baseline loop and in the unit tests (values.py says what they hold).
"""

from __future__ import annotations

from collections.abc import Callable, MutableMapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from course_processor.deciding import domain
from course_processor.deciding.values import (
    COURSES,
    DECIDED,
    SEATS,
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


@dataclass(frozen=True)
class Plan:
    """A decision not yet applied: the event to send, then the table changes to make.

    The agent sends the event before it makes the changes (faust_eos/agents.py says why); a
    change is (table, key, value), with None for a deletion.
    """

    event: Event | None
    changes: tuple[tuple[str, str, Any], ...] = ()


class Decider:
    def __init__(
        self,
        courses: MutableMapping[str, Any],  # course_id -> Course as a dict
        seats: MutableMapping[str, Any],  # seat key -> signup_id holding the seat
        decided: MutableMapping[str, Any],  # "<day>/<signup_id>" -> encoded SignupOutcome
        secret: bytes,  # the key of the seat keys' HMAC
        oldest: Callable[[int], list[str]] | None = None,  # decided's first keys in order
        now: Callable[[], datetime] = utc_now,
    ) -> None:
        self.tables = {COURSES: courses, SEATS: seats, DECIDED: decided}
        self.courses, self.seats, self.decided = courses, seats, decided
        self.secret, self.now = secret, now
        self.oldest = oldest or sorted_keys(decided)

    def plan(self, cmd: Command) -> Plan:
        """The event for `cmd` and the changes it makes; reads the tables, writes nothing."""
        return self.create(cmd) if isinstance(cmd, CreateCourse) else self.sign_up(cmd)

    def apply(self, plan: Plan) -> None:
        for table, key, value in plan.changes:
            if value is None:
                del self.tables[table][key]
            else:
                self.tables[table][key] = value

    def create(self, cmd: CreateCourse) -> Plan:
        course = course_from_value(self.courses.get(cmd.course_id))
        event = domain.decide_create(course, cmd, self.now())
        return Plan(event, self.course_change(course, event))

    def sign_up(self, cmd: SignUp) -> Plan:
        now = self.now()
        today = now.date()
        if any(self.decided.get(k) is not None for k in remembered_keys(today, cmd.signup_id)):
            return Plan(None)  # decided within MEMORY_DAYS: the log has its answer already
        # SignUp v2 brings its seat key (the address is sealed); older commands still
        # in course-commands carry the address in clear.
        key = cmd.seat_key or seat_key(self.secret, cmd.course_id, cmd.email)
        course = course_from_value(self.courses.get(cmd.course_id))
        event = domain.decide_signup(course, self.seats.get(key), cmd, now)
        if event is None:
            return Plan(None)
        changes = list(self.course_change(course, event))
        if isinstance(event, StudentSignedUp):
            changes.append((SEATS, key, cmd.signup_id))
        outcome = outcome_of(event)
        if outcome is not None:
            changes.append((DECIDED, memory_key(today, cmd.signup_id),
                            outcome.encode()))
        changes += [(DECIDED, k, None) for k in self.oldest(FORGET_PER_DECISION)
                    if expired(k, today)]
        return Plan(event, tuple(changes))

    def course_change(self, course: domain.Course | None,
                      event: Event | None) -> tuple[tuple[str, str, Any], ...]:
        evolved = domain.evolve(course, event) if event is not None else course
        if evolved is None or evolved == course:
            return ()
        return ((COURSES, evolved.course_id, course_to_value(evolved)),)
