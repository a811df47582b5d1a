"""One command against the processor's tables: get, decide, put. No I/O.

`Decider.plan` reads the tables and asks domain.py (the one file that decides) for
the events; `Decider.apply` writes the changes they make. The agent sends the events
between the two (faust_eos/agents.py says why), and so do the tests. The tables are
any mutable mappings: faust tables in the agent, plain dicts in the benchmark's
baseline loop and in the unit tests. What each holds (values.py has the names):

* `courses`: course id -> the course's counters (`domain.Course` as a dict; a value
  written before waiting lists reads with none waiting).
* `seat_holders`: seat key -> the sign-up id holding that student's seat or waiting
  place; after a withdrawal "~" + that sign-up id, so a late repeat of the withdrawn
  sign-up stays a repeat while a new sign-up of the student may take a place again.
  Never forgotten: it keeps one student to one place.
* `places`: "<course id>/<sign-up id>" -> the live place (seat key, birth date, and the
  waiting-list ticket, null for a seat). Deleted when the student withdraws.
* `waiting`: "<course id>/<ticket, 12 digits>" -> sign-up id: the waiting list in
  first-come order, since keys sort by ticket; its head is the first key of the prefix.
* `decided_signups`: the bounded memory of recent decisions ("<day>/<sign-up or
  withdrawal command id>" -> outcome, values.py).

So the state holds what is live (seats, waiting places), one seat key per student who
ever held a place, and a week of decisions: flat in history otherwise.
"""

from __future__ import annotations

from collections.abc import Callable, MutableMapping
from dataclasses import dataclass, fields
from datetime import UTC, date, datetime
from typing import Any

from course_processor.deciding import domain
from course_processor.deciding.domain import Course, Place
from course_processor.deciding.values import (
    COURSES,
    DECIDED,
    PLACES,
    SEATS,
    WAITING,
    SignupOutcome,
    expired,
    memory_key,
    outcome_of,
    remembered_keys,
)
from schemas.messages import (
    ChangeCourse,
    Command,
    CourseChangeRejected,
    CreateCourse,
    Event,
    SignUp,
    StudentPromoted,
    StudentSignedUp,
    StudentWaitlisted,
    Withdraw,
)
from schemas.pseudonyms import seat_key

# Each new decision forgets at most this many expired ones: more than the one entry
# it adds, so the memory of a busy partition shrinks back to MEMORY_DAYS of decisions
# after a burst, while no single command pays for a large sweep.
FORGET_PER_DECISION = 2
Change = tuple[str, str, Any]  # (table, key, value); value None deletes the key
WITHDRAWN = "~"  # seat_holders value prefix of a sign-up that withdrew


def utc_now() -> datetime:
    return datetime.now(UTC)


def sorted_keys(table: MutableMapping[str, Any]) -> Callable[[int], list[str]]:
    """`oldest` for a small plain dict (tests): its first keys in order, by sorting."""
    return lambda limit: sorted(table)[:limit]


def prefix_keys(table: MutableMapping[str, Any]) -> Callable[[str, int], list[str]]:
    """`first` for a small plain dict (tests): the first keys after a prefix, by sorting."""
    return lambda prefix, limit: sorted(k for k in table if k.startswith(prefix))[:limit]


def course_from_value(value: dict[str, Any] | None) -> Course | None:
    return None if value is None else Course(**value)


_COURSE_FIELDS = tuple(f.name for f in fields(Course))


def course_to_value(course: Course) -> dict[str, Any]:
    """`asdict(course)`, without its deep copy: every field of a Course is a scalar."""
    return {name: getattr(course, name) for name in _COURSE_FIELDS}


def place_key(course_id: str, signup_id: str) -> str:
    return f"{course_id}/{signup_id}"


def waiting_key(course_id: str, ticket: int) -> str:
    return f"{course_id}/{ticket:012d}"


def place_from_value(signup_id: str, value: dict[str, Any] | None) -> Place | None:
    if value is None:
        return None
    return Place(signup_id, value["seat_key"], date.fromisoformat(value["date_of_birth"]),
                 value["ticket"])


def place_to_value(place: Place) -> dict[str, Any]:
    return {"seat_key": place.seat_key, "date_of_birth": place.date_of_birth.isoformat(),
            "ticket": place.ticket}


@dataclass(frozen=True)
class Plan:
    """Decisions not yet applied: the events to send, in order, then the table changes
    to make. The agent sends the events before it makes the changes."""

    events: tuple[Event, ...]
    changes: tuple[Change, ...] = ()

    @property
    def event(self) -> Event | None:
        """The command's own decision (a withdrawal's or a change's promotions follow)."""
        return self.events[0] if self.events else None


class Decider:
    def __init__(
        self,
        courses: MutableMapping[str, Any],
        seats: MutableMapping[str, Any],
        decided: MutableMapping[str, Any],
        secret: bytes,  # the key of the seat keys' HMAC
        oldest: Callable[[int], list[str]] | None = None,  # decided's first keys in order
        now: Callable[[], datetime] = utc_now,
        places: MutableMapping[str, Any] | None = None,
        waiting: MutableMapping[str, Any] | None = None,
        first: Callable[[str, int], list[str]] | None = None,  # waiting's keys by prefix
    ) -> None:
        self.courses, self.seats, self.decided = courses, seats, decided
        self.places = {} if places is None else places
        self.waiting = {} if waiting is None else waiting
        self.tables = {COURSES: courses, SEATS: seats, DECIDED: decided,
                       PLACES: self.places, WAITING: self.waiting}
        self.secret, self.now = secret, now
        self.oldest = oldest or sorted_keys(decided)
        self.first = first or prefix_keys(self.waiting)

    def decide(self, cmd: Command) -> tuple[Event, ...]:
        """The events for `cmd`, with the tables already updated; () for a repeat."""
        plan = self.plan(cmd)
        self.apply(plan)
        return plan.events

    def apply(self, plan: Plan) -> None:
        for table, key, value in plan.changes:
            if value is None:
                self.tables[table].pop(key, None)
            else:
                self.tables[table][key] = value

    def plan(self, cmd: Command) -> Plan:
        """The events for `cmd` and the changes they make; reads the tables only."""
        if isinstance(cmd, CreateCourse):
            return self.create(cmd)
        if isinstance(cmd, SignUp):
            return self.sign_up(cmd)
        if isinstance(cmd, Withdraw):
            return self.withdraw(cmd)
        return self.change(cmd)

    def course(self, course_id: str) -> Course | None:
        return course_from_value(self.courses.get(course_id))

    def create(self, cmd: CreateCourse) -> Plan:
        course = self.course(cmd.course_id)
        event = domain.decide_create(course, cmd, self.now())
        if event is None:
            return Plan(())
        changes = self._course_changes(course, (event,))
        return Plan((event,), changes)

    def sign_up(self, cmd: SignUp) -> Plan:
        now = self.now()
        if self._remembered(now, cmd.signup_id):
            return Plan(())  # decided within MEMORY_DAYS: the log has its answer
        key = cmd.seat_key or seat_key(self.secret, cmd.course_id, cmd.email)
        held = self.seats.get(key)
        if held == WITHDRAWN + cmd.signup_id:
            return Plan(())  # a late repeat of a sign-up that withdrew since
        holder = None if held is None or held.startswith(WITHDRAWN) else held
        course = self.course(cmd.course_id)
        event = domain.decide_signup(course, holder, cmd, now)
        if event is None:
            return Plan(())
        changes = list(self._course_changes(course, (event,)))
        if isinstance(event, StudentSignedUp | StudentWaitlisted):
            assert course is not None
            ticket = course.tickets + 1 if isinstance(event, StudentWaitlisted) else None
            place = Place(cmd.signup_id, key, cmd.date_of_birth, ticket)
            changes += [(SEATS, key, cmd.signup_id),
                        (PLACES, place_key(cmd.course_id, cmd.signup_id),
                         place_to_value(place))]
            if ticket is not None:
                changes.append((WAITING, waiting_key(cmd.course_id, ticket), cmd.signup_id))
        outcome = outcome_of(event)
        assert outcome is not None
        changes += self._remember(now, cmd.signup_id, outcome.encode())
        return Plan((event,), tuple(changes))

    def withdraw(self, cmd: Withdraw) -> Plan:
        now = self.now()
        if self._remembered(now, cmd.command_id):
            return Plan(())  # this withdrawal was decided already
        course = self.course(cmd.course_id)
        place = place_from_value(
            cmd.signup_id, self.places.get(place_key(cmd.course_id, cmd.signup_id)))
        head = self._waiting_places(cmd.course_id, 1) if place and place.enrolled else []
        events = domain.decide_withdrawal(course, place, head[0] if head else None, cmd, now)
        changes = list(self._course_changes(course, events))
        if place is not None:
            changes += [(PLACES, place_key(cmd.course_id, cmd.signup_id), None),
                        (SEATS, place.seat_key, WITHDRAWN + cmd.signup_id)]
            if place.ticket is not None:
                changes.append((WAITING, waiting_key(cmd.course_id, place.ticket), None))
        # Remembered either way: the command id is one per sign-up (the command API's
        # withdrawal_id_for), so a repeat, accepted or rejected, adds nothing.
        outcome = (SignupOutcome("rejected", "not_enrolled") if place is None else
                   SignupOutcome("withdrawn", "enrolled" if place.enrolled else "waitlist"))
        changes += self._remember(now, cmd.command_id, outcome.encode())
        changes += self._promotions(cmd.course_id, events, head)
        return Plan(events, tuple(changes))

    def change(self, cmd: ChangeCourse) -> Plan:
        now = self.now()
        if self._remembered(now, cmd.command_id):
            return Plan(())  # the same change command again (a redelivery): decided
        course = self.course(cmd.course_id)
        heads = self._waiting_places(cmd.course_id, domain.seats_to_fill(course, cmd))
        events = domain.decide_change(course, heads, cmd, now)
        decided = events[0]
        outcome = (SignupOutcome("rejected", decided.reason)
                   if isinstance(decided, CourseChangeRejected) else
                   SignupOutcome("changed", str(getattr(decided, "capacity", ""))))
        changes = (*self._course_changes(course, events),
                   *self._remember(now, cmd.command_id, outcome.encode()))
        return Plan(events, changes + self._promotions(cmd.course_id, events, heads))

    def _waiting_places(self, course_id: str, limit: int) -> list[Place]:
        if limit <= 0:
            return []
        places = []
        for key in self.first(f"{course_id}/", limit):
            signup_id = self.waiting[key]
            place = place_from_value(signup_id, self.places.get(place_key(course_id, signup_id)))
            if place is None:
                raise RuntimeError(f"waiting entry {key} has no place: the tables disagree")
            places.append(place)
        return places

    def _promotions(self, course_id: str, events: tuple[Event, ...],
                    heads: list[Place]) -> tuple[Change, ...]:
        by_id = {p.signup_id: p for p in heads}
        changes: list[Change] = []
        for event in events:
            if isinstance(event, StudentPromoted):
                place = by_id[event.signup_id]
                assert place.ticket is not None
                changes += [(WAITING, waiting_key(course_id, place.ticket), None),
                            (PLACES, place_key(course_id, place.signup_id),
                             place_to_value(Place(place.signup_id, place.seat_key,
                                                  place.date_of_birth)))]
        return tuple(changes)

    def _course_changes(self, course: Course | None,
                        events: tuple[Event, ...]) -> tuple[Change, ...]:
        evolved = course
        for event in events:
            evolved = domain.evolve(evolved, event)
        if evolved is None or evolved == course:
            return ()
        return ((COURSES, evolved.course_id, course_to_value(evolved)),)

    def _remembered(self, now: datetime, name: str) -> bool:
        keys = remembered_keys(now.date(), name)
        # No entry sorts before the table's first live key ("<day>/...": the oldest
        # day), so the days before it need no read: a partition whose memory holds only
        # today's decisions reads one key instead of eight. `oldest` is the answer
        # expiry asks for anyway (and caches); an empty answer may mean "not known"
        # (the baseline's plain dicts), so then every day is read.
        first = self.oldest(FORGET_PER_DECISION)
        if first:
            keys = [k for k in keys if k >= first[0]]
        return any(self.decided.get(k) is not None for k in keys)

    def _remember(self, now: datetime, name: str, outcome: str) -> list[Change]:
        today = now.date()
        forget: list[Change] = [(DECIDED, k, None)
                                for k in self.oldest(FORGET_PER_DECISION) if expired(k, today)]
        return [(DECIDED, memory_key(today, name), outcome), *forget]

