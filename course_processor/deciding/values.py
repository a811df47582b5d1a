"""What the processor keeps per key in its tables: pure functions, no I/O.

Only what deciding needs, and no personal data:

* `courses`: course id -> the course and the seats taken (JSON, readable with any
  Kafka tool).
* `seat_holders`: seat key (a keyed hash of course id and e-mail,
  `schemas.pseudonyms.seat_key`) -> the sign-up id holding that seat. Never forgotten:
  it is what keeps one student to one seat.
* `decided_signups`: "<day>/<sign-up id>" -> the compact outcome of that sign-up
  ("accepted 17", "rejected course_full", "waitlisted 3"), and "<day>/<command id>" of
  a withdrawal or a course change ("withdrawn enrolled", "rejected not_enrolled",
  "changed 40").
* `places`, `waiting`: a registration term's live places and waiting lists
  (handler.py). It makes a repeated request write nothing
  and never change its answer. The day in front of the key (the day of the decision)
  orders the table by age, so the entries older than `MEMORY_DAYS` are found from
  the start of the table and forgotten, and the table stays as large as a week of
  sign-ups.
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass
from datetime import date, timedelta
from typing import Any, Literal

from course_processor.deciding.domain import Course
from schemas.messages import Event, SignUpRejected, StudentSignedUp, StudentWaitlisted

# The tables' names; each one's changelog topic is "<app id>-<name>-changelog". They
# are not the names of the in-memory tables of earlier versions (`seats`,
# `decisions`), whose changelogs held personal data: those are left alone
# (state/migrate.py).
COURSES, SEATS, DECIDED = "courses", "seat_holders", "decided_signups"
# A registration term's live places and waiting lists (handler.py says what they hold).
PLACES, WAITING = "places", "waiting"
TABLES = (COURSES, SEATS, DECIDED, PLACES, WAITING)

# The contract promises the same answer to a repeated request for 7 days; one day
# more covers a decision made just before midnight.
MEMORY_DAYS = 7
# Sort after every "<day>/..." key, so expiry, which walks the table from its start,
# never reaches them. BUILT_KEY records that this version built the partition's tables
# from course-events (state/migrate.py); MIGRATED_KEY was the mark of the version
# before the registration term, which a rebuild deletes.
BUILT_KEY = "~built-from-course-events-with-term"
MIGRATED_KEY = "~migrated-from-course-events"


def course_to_value(course: Course) -> dict[str, Any]:
    return asdict(course)


def course_from_value(value: dict[str, Any] | None) -> Course | None:
    return None if value is None else Course(**value)


@dataclass(frozen=True)
class SignupOutcome:
    status: Literal["accepted", "rejected", "waitlisted", "withdrawn", "changed"]
    # The seat number when accepted, the reason when rejected, the position when
    # waitlisted, what was left (enrolled, waitlist) when withdrawn, the capacity when a
    # course change went through. Keyed by sign-up id, or by command id for a
    # withdrawal or a course change.
    detail: str

    def encode(self) -> str:
        return f"{self.status} {self.detail}"

    @classmethod
    def decode(cls, value: str) -> SignupOutcome:
        status, _, detail = value.partition(" ")
        if status not in ("accepted", "rejected", "waitlisted", "withdrawn", "changed") \
                or not detail:
            raise ValueError(f"not an outcome: {value!r}")
        return cls(status, detail)  # type: ignore[arg-type]


def outcome_of(event: Event) -> SignupOutcome | None:
    """The compact outcome of a sign-up decision; None for course events."""
    if isinstance(event, StudentSignedUp):
        return SignupOutcome("accepted", str(event.seats_taken))
    if isinstance(event, SignUpRejected):
        return SignupOutcome("rejected", event.reason)
    if isinstance(event, StudentWaitlisted):
        return SignupOutcome("waitlisted", str(event.position))
    return None


def memory_key(day: date, signup_id: str) -> str:
    return f"{day.isoformat()}/{signup_id}"


def remembered_keys(today: date, signup_id: str) -> list[str]:
    """Where a decision of the last MEMORY_DAYS days about `signup_id` would be."""
    return [f"{day}/{signup_id}" for day in _window(today)]


def expired(key: str, today: date) -> bool:
    """True for a memory entry from before the window; never for the migration mark."""
    return key < _window(today)[-1]


@functools.lru_cache(maxsize=4)
def _window(today: date) -> tuple[str, ...]:
    """The days of the memory, newest first, as keys spell them: asked for twice by
    every decision, and the same all day."""
    return tuple((today - timedelta(days=n)).isoformat() for n in range(MEMORY_DAYS + 1))
