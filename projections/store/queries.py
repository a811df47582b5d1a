"""The query API's reads of the views."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psycopg

from projections.readmodel import Births, CourseView, GlobalView
from projections.stats import AgeAggregate


@dataclass(frozen=True)
class DecisionView:
    signup_id: str
    course_id: str
    status: str
    reason: str | None
    position: int | None = None  # waitlisted: the 1-based place on the waiting list now


async def fetch_decision(conn: psycopg.AsyncConnection, signup_id: str) -> DecisionView | None:
    cur = await conn.execute(
        "SELECT d.signup_id, d.course_id, d.status, d.reason, CASE WHEN d.status ="
        " 'waitlisted' THEN 1 + (SELECT count(*) FROM signup_decisions w"
        " WHERE w.course_id = d.course_id AND w.status = 'waitlisted'"
        " AND w.ticket < d.ticket) END FROM signup_decisions d WHERE d.signup_id = %s",
        (signup_id,),
    )
    row = await cur.fetchone()
    return None if row is None else DecisionView(*row)


# One statement reads a course and its birth-date counts, so both come from one snapshot
# (autocommit: a batch committing in between cannot split them). The counts travel as two
# int arrays of day ordinals (date.toordinal(): day 1 is 0001-01-01) and counts. A row
# without a title was made by a sign-up whose CourseCreated has not been read: the course
# is not known yet. Course ids compare in "C" collation (bytes), as Python compares them.
_COURSES = (
    "SELECT c.course_id, c.title, c.lecturer, c.capacity, c.enrolled, c.dob_sum_days,"
    " c.dob_min, c.dob_max, b.days, b.counts, c.waitlist_capacity, c.waitlisted"
    " FROM course_stats c"
    " LEFT JOIN LATERAL (SELECT array_agg(d.dob - date '0001-01-01' + 1 ORDER BY d.dob)"
    " AS days, array_agg(d.n ORDER BY d.dob) AS counts FROM course_birth_dates d"
    ' WHERE d.course_id = c.course_id COLLATE "C") b ON true'
    " WHERE c.title IS NOT NULL"
)


def _course(row: tuple[Any, ...]) -> CourseView:
    (cid, title, lecturer, capacity, enrolled, sum_days, dob_min, dob_max, days, counts,
     waitlist_capacity, waitlisted) = row
    return CourseView(cid, title, lecturer, capacity,
                      AgeAggregate(enrolled, sum_days, dob_min, dob_max),
                      Births.of(days, counts), waitlist_capacity, waitlisted)


async def fetch_course(conn: psycopg.AsyncConnection, course_id: str) -> CourseView | None:
    cur = await conn.execute(_COURSES + " AND c.course_id = %s", (course_id,), binary=True)
    row = await cur.fetchone()
    return None if row is None else _course(row)


async def fetch_courses(conn: psycopg.AsyncConnection,
                        course_ids: Sequence[str] | None = None) -> list[CourseView]:
    """The named courses that are known (all of them with None)."""
    # Binary results: the birth-date arrays arrive as machine ints, not text to parse.
    if course_ids is None:
        cur = await conn.execute(_COURSES, binary=True)
    else:
        cur = await conn.execute(_COURSES + " AND c.course_id = ANY(%s)", (list(course_ids),),
                                 binary=True)
    return [_course(row) for row in await cur.fetchall()]


async def fetch_page(conn: psycopg.AsyncConnection, after: str | None,
                     limit: int) -> tuple[list[CourseView], str | None]:
    """Known courses after `after` in course id order, at most `limit`, and the cursor of
    the next page (None on the last)."""
    cur = await conn.execute(
        _COURSES + ' AND (%s::text IS NULL OR c.course_id > %s COLLATE "C")'
        ' ORDER BY c.course_id COLLATE "C" LIMIT %s', (after, after, limit + 1), binary=True)
    rows = [_course(row) for row in await cur.fetchall()]
    more = len(rows) > limit
    rows = rows[:limit]
    return rows, (rows[-1].course_id if more and rows else None)


_GLOBAL = (
    "SELECT g.courses, g.enrollments, g.dob_sum_days, g.dob_min, g.dob_max, b.days,"
    " b.counts FROM global_stats g, LATERAL (SELECT"
    " array_agg(d.dob - date '0001-01-01' + 1 ORDER BY d.dob) AS days,"
    " array_agg(d.n ORDER BY d.dob) AS counts FROM global_birth_dates d) b WHERE g.id"
)


def _global(row: tuple[Any, ...] | None) -> GlobalView:
    if row is None:  # migration 0001 inserts it and nothing deletes it
        return GlobalView(0, AgeAggregate())
    courses, enrollments, sum_days, dob_min, dob_max, days, counts = row
    return GlobalView(courses, AgeAggregate(enrollments, sum_days, dob_min, dob_max),
                      Births.of(days, counts))


async def fetch_global(conn: psycopg.AsyncConnection) -> GlobalView:
    cur = await conn.execute(_GLOBAL, binary=True)
    return _global(await cur.fetchone())


# The first statement of a transaction whose reads must agree with each other: the
# courses and the global figures (`fetch_everything`, `read_everything`).
_ONE_SNAPSHOT = "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY"


async def fetch_everything(conn: psycopg.AsyncConnection,
                           course_ids: Sequence[str] | None = None,
                           ) -> tuple[list[CourseView], GlobalView]:
    """The named courses (all with None) and the global view, from ONE snapshot: a
    REPEATABLE READ transaction, so that the global figures and the courses agree."""
    async with conn.transaction():
        await conn.execute(_ONE_SNAPSHOT)
        courses = await fetch_courses(conn, course_ids)
        overall = await fetch_global(conn)
    return courses, overall


def read_everything(conninfo: str) -> tuple[list[CourseView], GlobalView]:
    """Every known course and the global view, from ONE snapshot (as `fetch_everything`),
    on a blocking connection of its own: for a thread, so that decoding the rows (about a
    second at 800,000 birth-date counts) does not hold an event loop."""
    with psycopg.connect(conninfo, autocommit=True, connect_timeout=5) as conn, \
            conn.transaction():
        conn.execute(_ONE_SNAPSHOT)
        courses = [_course(row) for row in conn.execute(_COURSES, binary=True).fetchall()]
        return courses, _global(conn.execute(_GLOBAL, binary=True).fetchone())
