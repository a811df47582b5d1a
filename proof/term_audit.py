"""The registration term's invariants, checked at every prefix of the event log: pure.

`audit_term` replays each course's events in log order (a course lives on one partition,
so a course's prefix is its partition's prefix) and after every record checks:

- enrolled <= capacity, and a student joined the waiting list only while it had room;
- every `seats_taken` equals the recount of enrolled students; a waitlisted position is
  one more than the students waiting;
- first come, first served: each promotion takes the student who has waited longest,
  and only a withdrawal from the course or a course change frees a seat for it, with the
  same causation id; once a command's events are all in, nobody waits while a seat is
  free;
- one student (seat key) holds at most one place (a seat or a place on the list);
- a withdrawal names a sign-up holding what it leaves.

A record repeating an event_id already seen (a crash's redo) counts once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from schemas.messages import (
    CourseChanged,
    CourseCreated,
    Event,
    StudentPromoted,
    StudentSignedUp,
    StudentWaitlisted,
    StudentWithdrew,
)

_MAX_PROBLEMS = 20
_Problem = Callable[[str], None]


@dataclass
class _Course:
    capacity: int
    waitlist_capacity: int
    enrolled: dict[str, str | None] = field(default_factory=dict)  # sign-up -> seat key
    waiting: dict[str, str | None] = field(default_factory=dict)  # insertion = FIFO order
    freed_by: set[str] = field(default_factory=set)  # causation ids that freed seats
    open_command: str | None = None


@dataclass(frozen=True)
class TermAudit:
    courses: int
    promotions: int
    withdrawals: int
    waitlisted: int
    violations: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.violations


def audit_term(events: Iterable[Event]) -> TermAudit:
    courses: dict[str, _Course] = {}
    seen: set[str] = set()
    problems: list[str] = []
    counts = {"promotions": 0, "withdrawals": 0, "waitlisted": 0}

    def problem(text: str) -> None:
        if len(problems) < _MAX_PROBLEMS:
            problems.append(text)

    for event in events:
        if event.event_id in seen:
            continue
        seen.add(event.event_id)
        course = courses.get(event.course_id)
        if isinstance(event, CourseCreated):
            if course is None:
                courses[event.course_id] = _Course(event.capacity, event.waitlist_capacity)
            continue
        if course is None:
            continue
        where = f"{event.course_id} at {event.event_type} {event.event_id}"
        if event.causation_id != course.open_command:
            # A new command: the one before it has all its events in the log now.
            if course.waiting and len(course.enrolled) < course.capacity:
                problem(f"{where}: {len(course.waiting)} wait while "
                        f"{course.capacity - len(course.enrolled)} seats are free")
            course.open_command, course.freed_by = event.causation_id, set()
        _step(course, event, where, problem, counts)
        if len(course.enrolled) > course.capacity:
            problem(f"{where}: {len(course.enrolled)} enrolled for {course.capacity} seats")
        holders = [k for k in (*course.enrolled.values(), *course.waiting.values()) if k]
        if len(holders) != len(set(holders)):
            problem(f"{where}: a student holds two places")
    return TermAudit(len(courses), counts["promotions"], counts["withdrawals"],
                     counts["waitlisted"], tuple(problems))


def _step(course: _Course, event: Event, where: str, problem: _Problem,
          counts: dict[str, int]) -> None:
    if isinstance(event, StudentSignedUp):
        course.enrolled[event.signup_id] = event.seat_key
        _seats(course, event.seats_taken, where, problem)
    elif isinstance(event, StudentWaitlisted):
        counts["waitlisted"] += 1
        if len(course.waiting) >= course.waitlist_capacity:
            problem(f"{where}: joined a full waiting list ({len(course.waiting)} of "
                    f"{course.waitlist_capacity})")
        if len(course.enrolled) < course.capacity:
            problem(f"{where}: waitlisted while a seat was free")
        if event.position != len(course.waiting) + 1:
            problem(f"{where}: position {event.position}, expected {len(course.waiting) + 1}")
        course.waiting[event.signup_id] = event.seat_key
    elif isinstance(event, StudentWithdrew):
        counts["withdrawals"] += 1
        places = course.enrolled if event.from_ == "enrolled" else course.waiting
        if event.signup_id not in places:
            problem(f"{where}: {event.signup_id} withdrew from {event.from_} without a place")
        places.pop(event.signup_id, None)
        if event.from_ == "enrolled":
            course.freed_by.add(event.causation_id)
        _seats(course, event.seats_taken, where, problem)
    elif isinstance(event, StudentPromoted):
        counts["promotions"] += 1
        head = next(iter(course.waiting), None)
        if event.signup_id != head:
            problem(f"{where}: promoted {event.signup_id}, but {head} has waited longest")
        if event.causation_id not in course.freed_by:
            problem(f"{where}: no withdrawal or change of command {event.causation_id} "
                    "freed the seat")
        if event.signup_id in course.waiting:
            course.enrolled[event.signup_id] = course.waiting.pop(event.signup_id)
        _seats(course, event.seats_taken, where, problem)
    elif isinstance(event, CourseChanged):
        if event.capacity < len(course.enrolled):
            problem(f"{where}: capacity {event.capacity} below {len(course.enrolled)} enrolled")
        course.capacity, course.waitlist_capacity = event.capacity, event.waitlist_capacity
        course.freed_by.add(event.causation_id)


def _seats(course: _Course, seats_taken: int, where: str, problem: _Problem) -> None:
    if seats_taken != len(course.enrolled):
        problem(f"{where}: seats_taken {seats_taken}, recount {len(course.enrolled)}")
