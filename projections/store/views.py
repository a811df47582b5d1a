"""The views and one batch's writes to them (`apply`): the live views or a replay's shadow
copies, chosen by a `Target`.

Every change is a delta: a batch never reads or recomputes over all enrollments. A live
batch ends with NOTIFY on `CHANGES_CHANNEL` naming the courses it changed (several
notices when they do not fit in one payload); PostgreSQL delivers them at commit, in
commit order, and never for a transaction that rolled back.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import date

import psycopg
from psycopg import sql

from projections.batch import Batch, CourseRow, DecisionRow, birth_counts, deltas, total
from projections.stats import AgeAggregate
from projections.store.positions import read_generation, read_positions, store_positions
from projections.term_store import apply_term, global_min_max

VIEWS = ("signup_decisions", "course_stats", "global_stats", "course_birth_dates",
         "global_birth_dates")
CHANGES_CHANNEL = "course_stats_changed"
EVERYTHING = "*"
# PostgreSQL's limit on a NOTIFY payload is 8000 bytes; stay below it.
_PAYLOAD_BYTES = 7900
SHADOW_SUFFIX = "_shadow"
RETIRED_SUFFIX = "_retired"


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
    new_courses = insert_courses(conn, target, batch.courses)
    new = _insert_decisions(conn, target, batch.decisions)
    per_course = deltas(new)
    _add_to_courses(conn, target, per_course)
    everything = total(per_course.values())
    _add_to_global(conn, target, len(new_courses), everything)
    _add_birth_dates(conn, target, birth_counts(new), overall=target.live)
    # Waiting lists, promotions, withdrawals and course changes (issue 20).
    term_courses = apply_term(conn, target, batch, new, overall=target.live)
    store_positions(conn, target.projection, topic, batch.next_offsets)
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


def insert_courses(
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
