"""A term's commands against the processor's tables: get, decide, evolve, put. No I/O.

The tables are any mutable mappings (plain dicts in the unit tests); what each holds:

* `courses`: course id -> the course's counters (`term.TermCourse` as a dict; a value
  written before waiting lists reads with none waiting).
* `seat_holders`: seat key -> the sign-up id holding that student's seat or waiting
  place; after a withdrawal "~" + that sign-up id, so a late repeat of the withdrawn
  sign-up stays a repeat while a new sign-up of the student may take a place again.
* `places`: "<course id>/<sign-up id>" -> the live place (seat key, birth date, and the
  waiting-list ticket, null for a seat). Deleted when the student withdraws.
* `waiting`: "<course id>/<ticket, 12 digits>" -> sign-up id: the waiting list in
  first-come order, since keys sort by ticket; its head is the first key of the prefix.
* `decided_signups`: the processor's bounded memory of recent decisions
  ("<day>/<sign-up or command id>" -> outcome), as in `values.py`.

So the state holds what is live (seats, waiting places), one seat key per student who
ever held a place, as before, and a week of decisions: flat in history otherwise.
"""

from __future__ import annotations

from collections.abc import Callable, MutableMapping
from dataclasses import asdict, dataclass
from datetime import date, datetime
from typing import Any

from course_processor import term
from course_processor.decider import FORGET_PER_DECISION, sorted_keys, utc_now
from course_processor.term import Place, TermCourse
from course_processor.values import expired, memory_key, remembered_keys
from schemas.messages import (
    ChangeCourse,
    CreateCourse,
    Event,
    SignUp,
    SignUpRejected,
    StudentPromoted,
    StudentSignedUp,
    StudentWaitlisted,
    Withdraw,
)
from schemas.pseudonyms import seat_key

TermCommand = CreateCourse | SignUp | Withdraw | ChangeCourse
Change = tuple[str, str, Any]  # (table, key, value); value None deletes the key
WITHDRAWN = "~"  # seat_holders value prefix of a sign-up that withdrew


def course_from_value(value: dict[str, Any] | None) -> TermCourse | None:
    return None if value is None else TermCourse(**value)


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


def prefix_keys(table: MutableMapping[str, Any]) -> Callable[[str, int], list[str]]:
    """`first` for a plain dict (tests): the first keys after a prefix, by sorting."""
    return lambda prefix, limit: sorted(k for k in table if k.startswith(prefix))[:limit]


@dataclass(frozen=True)
class TermPlan:
    """The events to send, in order, then the table changes to make."""

    events: tuple[Event, ...]
    changes: tuple[Change, ...] = ()


class TermDecider:
    def __init__(
        self,
        tables: dict[str, MutableMapping[str, Any]],
        secret: bytes,
        first: Callable[[str, int], list[str]] | None = None,  # waiting's keys by prefix
        oldest: Callable[[int], list[str]] | None = None,  # decided_signups' first keys
        now: Callable[[], datetime] = utc_now,
    ) -> None:
        self.tables = tables
        self.courses, self.seats = tables["courses"], tables["seat_holders"]
        self.places, self.waiting = tables["places"], tables["waiting"]
        self.decided = tables["decided_signups"]
        self.secret, self.now = secret, now
        self.first = first or prefix_keys(self.waiting)
        self.oldest = oldest or sorted_keys(self.decided)

    def decide(self, cmd: TermCommand) -> tuple[Event, ...]:
        """The events for `cmd`, with the tables already updated; () for a repeat."""
        plan = self.plan(cmd)
        self.apply(plan)
        return plan.events

    def apply(self, plan: TermPlan) -> None:
        for table, key, value in plan.changes:
            if value is None:
                self.tables[table].pop(key, None)
            else:
                self.tables[table][key] = value

    def plan(self, cmd: TermCommand) -> TermPlan:
        """The events for `cmd` and the changes they make; reads the tables only."""
        if isinstance(cmd, CreateCourse):
            return self.create(cmd)
        if isinstance(cmd, SignUp):
            return self.sign_up(cmd)
        if isinstance(cmd, Withdraw):
            return self.withdraw(cmd)
        return self.change(cmd)

    def course(self, course_id: str) -> TermCourse | None:
        return course_from_value(self.courses.get(course_id))

    def create(self, cmd: CreateCourse) -> TermPlan:
        course = self.course(cmd.course_id)
        event = term.decide_create(course, cmd, self.now())
        if event is None:
            return TermPlan(())
        changes = self._course_changes(course, (event,))
        return TermPlan((event,), changes)

    def sign_up(self, cmd: SignUp) -> TermPlan:
        now = self.now()
        if self._remembered(now, cmd.signup_id):
            return TermPlan(())  # decided within MEMORY_DAYS: the log has its answer
        key = cmd.seat_key or seat_key(self.secret, cmd.course_id, cmd.email)
        held = self.seats.get(key)
        if held == WITHDRAWN + cmd.signup_id:
            return TermPlan(())  # a late repeat of a sign-up that withdrew since
        holder = None if held is None or held.startswith(WITHDRAWN) else held
        course = self.course(cmd.course_id)
        event = term.decide_signup(course, holder, cmd, now)
        if event is None:
            return TermPlan(())
        changes = list(self._course_changes(course, (event,)))
        if isinstance(event, StudentSignedUp | StudentWaitlisted):
            assert course is not None
            ticket = course.tickets + 1 if isinstance(event, StudentWaitlisted) else None
            place = Place(cmd.signup_id, key, cmd.date_of_birth, ticket)
            changes += [("seat_holders", key, cmd.signup_id),
                        ("places", place_key(cmd.course_id, cmd.signup_id),
                         place_to_value(place))]
            if ticket is not None:
                changes.append(("waiting", waiting_key(cmd.course_id, ticket), cmd.signup_id))
        changes += self._remember(now, cmd.signup_id, _outcome(event))
        return TermPlan((event,), tuple(changes))

    def withdraw(self, cmd: Withdraw) -> TermPlan:
        now = self.now()
        if self._remembered(now, cmd.command_id):
            return TermPlan(())  # this withdrawal was decided already
        course = self.course(cmd.course_id)
        place = place_from_value(
            cmd.signup_id, self.places.get(place_key(cmd.course_id, cmd.signup_id)))
        head = self._waiting_places(cmd.course_id, 1) if place and place.enrolled else []
        events = term.decide_withdrawal(course, place, head[0] if head else None, cmd, now)
        changes = list(self._course_changes(course, events))
        if place is not None:
            changes += [("places", place_key(cmd.course_id, cmd.signup_id), None),
                        ("seat_holders", place.seat_key, WITHDRAWN + cmd.signup_id)]
            if place.ticket is not None:
                changes.append(("waiting", waiting_key(cmd.course_id, place.ticket), None))
            # A rejected withdrawal is not remembered: asked again it is rejected again.
            changes += self._remember(now, cmd.command_id, "withdrawn")
        changes += self._promotions(cmd.course_id, events, head)
        return TermPlan(events, tuple(changes))

    def change(self, cmd: ChangeCourse) -> TermPlan:
        course = self.course(cmd.course_id)
        heads = self._waiting_places(cmd.course_id, term.seats_to_fill(course, cmd))
        events = term.decide_change(course, heads, cmd, self.now())
        changes = self._course_changes(course, events)
        return TermPlan(events, changes + self._promotions(cmd.course_id, events, heads))

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
                changes += [("waiting", waiting_key(course_id, place.ticket), None),
                            ("places", place_key(course_id, place.signup_id),
                             place_to_value(Place(place.signup_id, place.seat_key,
                                                  place.date_of_birth)))]
        return tuple(changes)

    def _course_changes(self, course: TermCourse | None,
                        events: tuple[Event, ...]) -> tuple[Change, ...]:
        evolved = course
        for event in events:
            evolved = term.evolve(evolved, event)
        if evolved is None or evolved == course:
            return ()
        return (("courses", evolved.course_id, asdict(evolved)),)

    def _remembered(self, now: datetime, name: str) -> bool:
        return any(self.decided.get(k) is not None for k in remembered_keys(now.date(), name))

    def _remember(self, now: datetime, name: str, outcome: str) -> list[Change]:
        today = now.date()
        forget: list[Change] = [("decided_signups", k, None)
                                for k in self.oldest(FORGET_PER_DECISION) if expired(k, today)]
        return [("decided_signups", memory_key(today, name), outcome), *forget]


def _outcome(event: Event) -> str:
    if isinstance(event, StudentSignedUp):
        return f"accepted {event.seats_taken}"
    if isinstance(event, StudentWaitlisted):
        return f"waitlisted {event.position}"
    if isinstance(event, SignUpRejected):
        return f"rejected {event.reason}"
    raise TypeError(f"{type(event).__name__} is not a sign-up decision")

