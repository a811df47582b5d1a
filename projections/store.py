"""The read model in PostgreSQL: views, consumed offsets, shadow copies and their swap.

Tables (migrations 0001 and 0002):
- `signup_decisions`: the decision per sign-up id.
- `course_stats`: per course its title, lecturer, capacity and the aggregate of its
  accepted sign-ups' birth dates (count = `enrolled`, sum of ordinals, min, max).
- `global_stats`: the same aggregate over every course, in one row.
- `course_birth_dates`, `global_birth_dates` (migration 0003): accepted sign-ups per
  birth date, per course and overall, from which the age distribution at any date
  follows.
- `projection_offsets`: per projection and topic-partition, the next offset to read.
- `projection_generations`: bumped by every swap; see `apply` and `projections.replay`.

Which index serves which query (there are no others: nothing filters on another
column, and every extra index would slow the per-batch upserts):
- `signup_decisions_pkey (signup_id)`: GET /signups/{id}, one probe; and the batch's
  `INSERT ... ON CONFLICT DO NOTHING RETURNING`, which tells new decisions from repeats.
- `course_stats_pkey (course_id)`: GET /courses/{id}/stats, one probe; and the batch's
  upserts of courses and per-course deltas.
- `global_stats_pkey (id)`: the single row of GET /stats and of the batch's update.
- `course_birth_dates_pkey (course_id, dob)`: one course's counts as one index range
  (a course's stats, a page of courses, the query API's refresh of changed courses), and
  the batch's upserts. `global_birth_dates_pkey (dob)`: the batch's upserts.
- `projection_offsets_pkey (projection, topic, partition)`: positions read on partition
  assignment and written by every batch.
- `projection_generations_pkey (projection)`: the generation row locked by every batch.

Every change is a delta: a batch never reads or recomputes over all enrollments.

Change notices: a live batch ends with NOTIFY on `CHANGES_CHANNEL` naming the courses it
changed (several notices when they do not fit in one payload), and a swap with one
notice holding `EVERYTHING`. PostgreSQL delivers them at commit, in commit order, and
never for a transaction that rolled back; the query API's cache (`projections.live`)
refreshes what they name.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any

import psycopg
from psycopg import sql

from projections.batch import Batch, CourseRow, DecisionRow, birth_counts, deltas, total
from projections.readmodel import Births, CourseView, GlobalView
from projections.stats import AgeAggregate
from projections.term_store import apply_term, global_min_max

VIEWS = ("signup_decisions", "course_stats", "global_stats", "course_birth_dates",
         "global_birth_dates")
CHANGES_CHANNEL = "course_stats_changed"
EVERYTHING = "*"
# PostgreSQL's limit on a NOTIFY payload is 8000 bytes; stay below it.
_PAYLOAD_BYTES = 7900
SHADOW_SUFFIX = "_shadow"
_RETIRED_SUFFIX = "_retired"


class Stale(Exception):
    """The batch was read from positions that are no longer the stored ones."""


@dataclass(frozen=True)
class Target:
    """Where batches go: the live views, or the shadow copies a replay builds."""

    projection: str  # its rows in projection_offsets
    suffix: str
    live: bool

    def table(self, name: str) -> sql.Identifier:
        return sql.Identifier(name + self.suffix)


def live(projection: str) -> Target:
    return Target(projection, "", True)


def shadow(projection: str) -> Target:
    return Target(f"{projection}{SHADOW_SUFFIX}", SHADOW_SUFFIX, False)


@dataclass(frozen=True)
class Applied:
    new_courses: int
    new_decisions: int
    repeated_decisions: int
    new_enrollments: int


# ------------------------------------------------------------------ positions and generations


def ensure_generation(conn: psycopg.Connection, projection: str) -> None:
    conn.execute(
        "INSERT INTO projection_generations (projection) VALUES (%s) ON CONFLICT DO NOTHING",
        (projection,),
    )


def read_generation(conn: psycopg.Connection, projection: str, lock: bool = False) -> int:
    query = "SELECT generation FROM projection_generations WHERE projection = %s"
    row = conn.execute(query + (" FOR UPDATE" if lock else ""), (projection,)).fetchone()
    if row is None:
        raise LookupError(f"no generation row for projection {projection!r}")
    return int(row[0])


def bump_generation(conn: psycopg.Connection, projection: str) -> int:
    row = conn.execute(
        "UPDATE projection_generations SET generation = generation + 1 WHERE projection = %s"
        " RETURNING generation",
        (projection,),
    ).fetchone()
    if row is None:
        raise LookupError(f"no generation row for projection {projection!r}")
    return int(row[0])


def read_positions(conn: psycopg.Connection, projection: str, topic: str) -> dict[int, int]:
    rows = conn.execute(
        "SELECT partition, next_offset FROM projection_offsets"
        " WHERE projection = %s AND topic = %s",
        (projection, topic),
    )
    return {int(p): int(o) for p, o in rows}


def _store_positions(
    conn: psycopg.Connection, projection: str, topic: str, positions: Mapping[int, int]
) -> None:
    if not positions:
        return
    parts = sorted(positions)
    conn.execute(
        "INSERT INTO projection_offsets (projection, topic, partition, next_offset)"
        " SELECT %s, %s, p, o FROM unnest(%b::int[], %b::bigint[]) AS u(p, o)"
        " ON CONFLICT (projection, topic, partition)"
        " DO UPDATE SET next_offset = EXCLUDED.next_offset",
        (projection, topic, parts, [positions[p] for p in parts]),
    )


# ------------------------------------------------------------------ one batch


def apply(
    conn: psycopg.Connection,
    target: Target,
    batch: Batch,
    *,
    topic: str,
    expected: Mapping[int, int | None] | None,
    generation: int | None,
) -> Applied:
    """Write a batch's changes and its offsets; the caller owns the transaction.

    `expected` holds, per partition of the batch, the stored position the batch was
    read from (None: nothing stored yet). If another writer moved a position (a replay
    swapped tables in, or a second projector took over a partition), or `generation`
    is no longer current, nothing is written and `Stale` is raised. A replay, the only
    writer of its shadow copies, passes None for both.
    """
    # FOR UPDATE: a swap bumps this row first, so it waits for this transaction, and a
    # batch that started after a swap sees the new generation here.
    if generation is not None and read_generation(conn, target.projection, lock=True) != generation:
        raise Stale("a replay swapped the views in since this batch was read")
    if expected is not None:
        stored = read_positions(conn, target.projection, topic)
        moved = {p for p in batch.next_offsets if stored.get(p) != expected.get(p)}
        if moved:
            raise Stale(f"positions of partitions {sorted(moved)} moved since the batch was read")
    new_courses = _insert_courses(conn, target, batch.courses)
    new = _insert_decisions(conn, target, batch.decisions)
    per_course = deltas(new)
    _add_to_courses(conn, target, per_course)
    everything = total(per_course.values())
    _add_to_global(conn, target, len(new_courses), everything)
    _add_birth_dates(conn, target, birth_counts(new), overall=target.live)
    # Waiting lists, promotions, withdrawals and course changes (issue 20).
    term_courses = apply_term(conn, target, batch, new, overall=target.live)
    _store_positions(conn, target.projection, topic, batch.next_offsets)
    if target.live:
        notify(conn, set(new_courses) | set(per_course) | term_courses)
    return Applied(len(new_courses), len(new), len(batch.decisions) - len(new),
                   everything.count)


def notify(conn: psycopg.Connection, course_ids: Iterable[str]) -> None:
    """Tell listeners, at commit, which courses changed (nothing if none did)."""
    for payload in notice_payloads(course_ids):
        conn.execute("SELECT pg_notify(%s, %s)", (CHANGES_CHANNEL, payload))


def notice_payloads(course_ids: Iterable[str]) -> Iterator[str]:
    """Comma-separated course ids, each payload under PostgreSQL's 8000 bytes."""
    chunk: list[str] = []
    size = 0
    for course_id in sorted(course_ids):
        width = len(course_id.encode()) + 1
        if chunk and size + width > _PAYLOAD_BYTES:
            yield ",".join(chunk)
            chunk, size = [], 0
        chunk.append(course_id)
        size += width
    if chunk:
        yield ",".join(chunk)


def _insert_courses(
    conn: psycopg.Connection, target: Target, courses: Iterable[CourseRow]
) -> list[str]:
    rows = sorted(courses, key=lambda c: c.course_id)
    if not rows:
        return []
    # A course row may exist without a title when a sign-up arrived first; the first
    # CourseCreated fills it in, a repeated one (same course) changes nothing. RETURNING
    # yields exactly the courses created now, so the global count stays exact.
    cur = conn.execute(
        sql.SQL(
            "INSERT INTO {t} AS c (course_id, title, lecturer, capacity, waitlist_capacity)"
            " SELECT * FROM unnest(%b::text[], %b::text[], %b::text[], %b::int[], %b::int[])"
            " ON CONFLICT (course_id) DO UPDATE SET title = EXCLUDED.title,"
            " lecturer = EXCLUDED.lecturer, capacity = EXCLUDED.capacity,"
            " waitlist_capacity = EXCLUDED.waitlist_capacity, updated_at = now()"
            " WHERE c.title IS NULL"
            " RETURNING course_id"
        ).format(t=target.table("course_stats")),
        ([c.course_id for c in rows], [c.title for c in rows], [c.lecturer for c in rows],
         [c.capacity for c in rows], [c.waitlist_capacity for c in rows]),
    )
    return [r[0] for r in cur.fetchall()]


def _insert_decisions(
    conn: psycopg.Connection, target: Target, decisions: Iterable[DecisionRow]
) -> list[DecisionRow]:
    rows = list(decisions)
    if not rows:
        return []
    # The primary key on signup_id decides what is new: a decision already stored (the
    # same event read again, or repeated in the log) returns nothing and adds nothing.
    cur = conn.execute(
        sql.SQL(
            "INSERT INTO {t} (signup_id, course_id, status, reason, event_id, decided_at,"
            " ticket) SELECT * FROM unnest(%b::text[], %b::text[], %b::text[], %b::text[],"
            " %b::text[], %b::timestamptz[], %b::bigint[])"
            " ON CONFLICT (signup_id) DO NOTHING RETURNING signup_id"
        ).format(t=target.table("signup_decisions")),
        ([d.signup_id for d in rows], [d.course_id for d in rows], [d.status for d in rows],
         [d.reason for d in rows], [d.event_id for d in rows], [d.decided_at for d in rows],
         [d.ticket for d in rows]),
    )
    new_ids = {r[0] for r in cur.fetchall()}
    return [d for d in rows if d.signup_id in new_ids]


def _add_to_courses(
    conn: psycopg.Connection, target: Target, per_course: Mapping[str, AgeAggregate]
) -> None:
    if not per_course:
        return
    ids = sorted(per_course)  # one lock order for every writer
    aggs = [per_course[c] for c in ids]
    conn.execute(
        sql.SQL(
            "INSERT INTO {t} AS c (course_id, enrolled, dob_sum_days, dob_min, dob_max)"
            " SELECT * FROM unnest(%b::text[], %b::int[], %b::bigint[], %b::date[], %b::date[])"
            " ON CONFLICT (course_id) DO UPDATE SET"
            " enrolled = c.enrolled + EXCLUDED.enrolled,"
            " dob_sum_days = c.dob_sum_days + EXCLUDED.dob_sum_days,"
            " dob_min = LEAST(c.dob_min, EXCLUDED.dob_min),"  # LEAST/GREATEST skip NULLs
            " dob_max = GREATEST(c.dob_max, EXCLUDED.dob_max),"
            " updated_at = now()"
        ).format(t=target.table("course_stats")),
        (ids, [a.count for a in aggs], [a.sum_days for a in aggs],
         [a.min_dob for a in aggs], [a.max_dob for a in aggs]),
    )


def _add_to_global(
    conn: psycopg.Connection, target: Target, new_courses: int, agg: AgeAggregate
) -> None:
    if new_courses == 0 and agg.count == 0:
        return
    conn.execute(
        sql.SQL(
            "UPDATE {t} SET courses = courses + %s, enrollments = enrollments + %s,"
            " dob_sum_days = dob_sum_days + %s,"
            " dob_min = LEAST(dob_min, %s::date), dob_max = GREATEST(dob_max, %s::date),"
            " updated_at = now() WHERE id"
        ).format(t=target.table("global_stats")),
        (new_courses, agg.count, agg.sum_days, agg.min_dob, agg.max_dob),
    )


def _add_birth_dates(
    conn: psycopg.Connection, target: Target, per_course: Mapping[str, Counter[date]],
    overall: bool,
) -> None:
    """Add to the per-course counts and, with `overall`, to the global ones. A replay
    builds the global counts once at the end instead (`fill_global_birth_dates`): per
    batch, their upserts cost a replay more than a third of its speed."""
    if not per_course:
        return
    rows = sorted((c, dob, n) for c, births in per_course.items() for dob, n in births.items())
    conn.execute(
        sql.SQL(
            "INSERT INTO {t} AS c (course_id, dob, n)"
            " SELECT * FROM unnest(%b::text[], %b::date[], %b::int[])"
            " ON CONFLICT (course_id, dob) DO UPDATE SET n = c.n + EXCLUDED.n"
        ).format(t=target.table("course_birth_dates")),
        ([r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows]),
    )
    if not overall:
        return
    everyone: Counter[date] = Counter()
    for births in per_course.values():
        everyone.update(births)
    dobs = sorted(everyone)  # one lock order for every writer
    conn.execute(
        sql.SQL(
            "INSERT INTO {t} AS g (dob, n)"
            " SELECT * FROM unnest(%b::date[], %b::bigint[])"
            " ON CONFLICT (dob) DO UPDATE SET n = g.n + EXCLUDED.n"
        ).format(t=target.table("global_birth_dates")),
        (dobs, [everyone[d] for d in dobs]),
    )


def fill_global_birth_dates(conn: psycopg.Connection, target: Target) -> None:
    """The global counts as the sum of the per-course ones: how a replay builds them,
    once, after its last batch (one pass over at most one row per course and birth date)."""
    conn.execute(sql.SQL("DELETE FROM {g}").format(g=target.table("global_birth_dates")))
    conn.execute(sql.SQL(
        "INSERT INTO {g} (dob, n) SELECT dob, sum(n) FROM {c} GROUP BY dob").format(
            g=target.table("global_birth_dates"), c=target.table("course_birth_dates")))
    # Withdrawals took birth dates away during the replay, which the per-batch LEAST and
    # GREATEST could not undo: the youngest and oldest as the counts say now.
    global_min_max(conn, target.table)


# ------------------------------------------------------------------ shadow copies and the swap


def create_shadow(conn: psycopg.Connection, projection: str) -> Target:
    """Empty copies of every view (same columns, constraints and indexes); drops old ones."""
    target = shadow(projection)
    for name in VIEWS:
        conn.execute(sql.SQL("DROP TABLE IF EXISTS {s}").format(s=target.table(name)))
        conn.execute(sql.SQL("CREATE TABLE {s} (LIKE {t} INCLUDING ALL)").format(
            s=target.table(name), t=sql.Identifier(name)))
    conn.execute(sql.SQL("INSERT INTO {s} (id) VALUES (true)").format(
        s=target.table("global_stats")))
    conn.execute("DELETE FROM projection_offsets WHERE projection = %s", (target.projection,))
    return target


def drop_shadow(conn: psycopg.Connection, projection: str) -> None:
    target = shadow(projection)
    for name in VIEWS:
        conn.execute(sql.SQL("DROP TABLE IF EXISTS {s}").format(s=target.table(name)))
    conn.execute("DELETE FROM projection_offsets WHERE projection = %s", (target.projection,))


def swap(
    conn: psycopg.Connection, projection: str, topic: str, positions: Mapping[int, int]
) -> None:
    """Put the shadow copies in place of the views, with `positions` as the live offsets.

    Runs inside the caller's transaction, after `bump_generation`. Renaming takes an
    ACCESS EXCLUSIVE lock, so a query API read waits for the commit (milliseconds) and
    then reads the new table: PostgreSQL looks a name up again after waiting on a lock
    on a relation that was renamed meanwhile, and re-plans prepared statements.
    """
    # Before the lock below: reads of the live views go on meanwhile.
    fill_global_birth_dates(conn, shadow(projection))
    # A long read holding a view would make every query queue behind this lock: give up
    # instead, and let the caller try again.
    conn.execute("SET LOCAL lock_timeout = '5s'")
    conn.execute(sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(
        sql.SQL(", ").join(sql.Identifier(name) for name in VIEWS)))
    target = shadow(projection)
    for name in VIEWS:
        retired = sql.Identifier(name + _RETIRED_SUFFIX)
        conn.execute(sql.SQL("ALTER TABLE {t} RENAME TO {r}").format(
            t=sql.Identifier(name), r=retired))
        conn.execute(sql.SQL("ALTER TABLE {s} RENAME TO {t}").format(
            s=target.table(name), t=sql.Identifier(name)))
        conn.execute(sql.SQL("DROP TABLE {r}").format(r=retired))
        _rename_indexes(conn, name)
    # The swapped-in tables are new and have no grants: the services' roles get theirs
    # back from the function their migration defined, in this same transaction.
    conn.execute("SELECT grant_view_privileges()")
    conn.execute("DELETE FROM projection_offsets WHERE projection IN (%s, %s) AND topic = %s",
                 (projection, target.projection, topic))
    _store_positions(conn, projection, topic, positions)
    conn.execute("UPDATE projection_generations SET swapped_at = now() WHERE projection = %s",
                 (projection,))
    # Every view is new: listeners re-read everything once this commits.
    conn.execute("SELECT pg_notify(%s, %s)", (CHANGES_CHANNEL, EVERYTHING))


def _rename_indexes(conn: psycopg.Connection, table: str) -> None:
    # CREATE TABLE ... LIKE named the copies' indexes after the shadow table; give them
    # the original names back, so the next shadow copy gets the same names again.
    prefix = table + SHADOW_SUFFIX
    rows = conn.execute(
        "SELECT indexname FROM pg_indexes WHERE schemaname = current_schema()"
        " AND tablename = %s",
        (table,),
    ).fetchall()
    for (index,) in rows:
        if index.startswith(prefix):
            conn.execute(sql.SQL("ALTER INDEX {i} RENAME TO {n}").format(
                i=sql.Identifier(index), n=sql.Identifier(table + index[len(prefix):])))


# ------------------------------------------------------------------ reads for the query API

@dataclass(frozen=True)
class DecisionView:
    signup_id: str
    course_id: str
    status: str
    reason: str | None
    position: int | None = None  # waitlisted: the 1-based place on the waiting list now


async def fetch_decision(conn: psycopg.AsyncConnection, signup_id: str) -> DecisionView | None:
    # A waiting student's place: one more than those of its course waiting with a lower
    # ticket, counted on the partial index signup_decisions_waiting (the waiting list
    # ahead of it, never the course's other sign-ups).
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


async def fetch_global(conn: psycopg.AsyncConnection) -> GlobalView:
    cur = await conn.execute(
        "SELECT g.courses, g.enrollments, g.dob_sum_days, g.dob_min, g.dob_max, b.days,"
        " b.counts FROM global_stats g, LATERAL (SELECT"
        " array_agg(d.dob - date '0001-01-01' + 1 ORDER BY d.dob) AS days,"
        " array_agg(d.n ORDER BY d.dob) AS counts FROM global_birth_dates d) b WHERE g.id",
        binary=True,
    )
    row = await cur.fetchone()
    if row is None:  # migration 0001 inserts it and nothing deletes it
        return GlobalView(0, AgeAggregate())
    courses, enrollments, sum_days, dob_min, dob_max, days, counts = row
    return GlobalView(courses, AgeAggregate(enrollments, sum_days, dob_min, dob_max),
                      Births.of(days, counts))


async def fetch_everything(conn: psycopg.AsyncConnection,
                           course_ids: Sequence[str] | None = None,
                           ) -> tuple[list[CourseView], GlobalView]:
    """The named courses (all with None) and the global view, from ONE snapshot: a
    REPEATABLE READ transaction, so that the global figures and the courses agree."""
    async with conn.transaction():
        await conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        courses = await fetch_courses(conn, course_ids)
        overall = await fetch_global(conn)
    return courses, overall
