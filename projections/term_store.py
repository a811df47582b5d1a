"""A term's view changes in PostgreSQL: waiting lists, promotions, withdrawals, course changes.

Part of each batch's one transaction (`store.apply` calls `apply_term` after inserting
the batch's decisions), so it is as idempotent and resumable as the rest:

- A promotion or withdrawal is an UPDATE of the sign-up's status guarded by the status
  it leaves (`WHERE status = was`). A sign-up's lifecycle never goes back (waitlisted ->
  accepted -> withdrawn), so a repeated event finds another status and changes nothing.
- Only the transitions that changed a row move the figures: `enrolled`, the birth-date
  sum and counts (down on a withdrawal, up on a promotion), and `waitlisted`.
- Removing a birth date can remove the youngest or the oldest: then the course's (and
  the global) min and max are read again from the birth-date counts, two index
  endpoint probes on (course_id, dob), never a scan of enrollments.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import TYPE_CHECKING

import psycopg
from psycopg import sql

from projections.batch import ACCEPTED, WAITLISTED, Batch, CourseRow, DecisionRow, Transition

if TYPE_CHECKING:
    from projections.store import Target

Table = Callable[[str], sql.Identifier]  # a view's name -> the table a batch writes


@dataclass
class CourseDelta:
    enrolled: int = 0
    sum_days: int = 0
    waitlisted: int = 0
    births: Counter[date] = field(default_factory=Counter)
    removed: bool = False  # a birth date left: min and max must be read again


def apply_term(conn: psycopg.Connection, target: Target, batch: Batch,
               new_decisions: Sequence[DecisionRow], overall: bool) -> set[str]:
    """Apply the batch's course changes, new waiting entries and transitions; returns the
    courses whose figures changed."""
    table = target.table
    _change_courses(conn, table, batch.changed)
    deltas: dict[str, CourseDelta] = {}
    for decision in new_decisions:
        if decision.status == WAITLISTED:
            deltas.setdefault(decision.course_id, CourseDelta()).waitlisted += 1
    for transition in batch.transitions:
        if _moved(conn, table, transition):
            _count(deltas.setdefault(transition.course_id, CourseDelta()), transition)
    _apply_deltas(conn, table, deltas, overall)
    return {c.course_id for c in batch.changed} | set(deltas)


def _change_courses(conn: psycopg.Connection, table: Table,
                    changed: Iterable[CourseRow]) -> None:
    rows = sorted(changed)
    if not rows:
        return
    conn.execute(
        sql.SQL(
            "UPDATE {t} AS c SET title = u.title, lecturer = u.lecturer, capacity = u.capacity,"
            " waitlist_capacity = u.waitlist_capacity, updated_at = now()"
            " FROM unnest(%b::text[], %b::text[], %b::text[], %b::int[], %b::int[])"
            " AS u(course_id, title, lecturer, capacity, waitlist_capacity)"
            " WHERE c.course_id = u.course_id"
        ).format(t=table("course_stats")),
        ([r.course_id for r in rows], [r.title for r in rows], [r.lecturer for r in rows],
         [r.capacity for r in rows], [r.waitlist_capacity for r in rows]),
    )


def _moved(conn: psycopg.Connection, table: Table, transition: Transition) -> bool:
    # Transitions are rare next to sign-ups (one per withdrawal or promotion): one
    # primary-key UPDATE each, in log order, so a sign-up promoted and withdrawn in the
    # same batch goes through both.
    cur = conn.execute(
        sql.SQL("UPDATE {t} SET status = %s, ticket = NULL WHERE signup_id = %s"
                " AND status = %s").format(t=table("signup_decisions")),
        (transition.becomes, transition.signup_id, transition.was),
    )
    return cur.rowcount == 1


def _count(delta: CourseDelta, transition: Transition) -> None:
    dob = transition.date_of_birth
    if transition.was == WAITLISTED:
        delta.waitlisted -= 1
    if transition.becomes == ACCEPTED:
        delta.enrolled += 1
        delta.sum_days += dob.toordinal()
        delta.births[dob] += 1
    elif transition.was == ACCEPTED:
        delta.enrolled -= 1
        delta.sum_days -= dob.toordinal()
        delta.births[dob] -= 1
        delta.removed = True


def _apply_deltas(conn: psycopg.Connection, table: Table, deltas: dict[str, CourseDelta],
                  overall: bool) -> None:
    t = table  # a callable name -> sql.Identifier
    ids = sorted(deltas)  # one lock order for every writer
    if not ids:
        return
    ds = [deltas[c] for c in ids]
    added = [min((d for d, n in x.births.items() if n > 0), default=None) for x in ds]
    added_max = [max((d for d, n in x.births.items() if n > 0), default=None) for x in ds]
    conn.execute(
        sql.SQL(
            "UPDATE {t} AS c SET enrolled = c.enrolled + u.e, dob_sum_days = c.dob_sum_days + u.s,"
            " waitlisted = c.waitlisted + u.w, dob_min = LEAST(c.dob_min, u.lo),"
            " dob_max = GREATEST(c.dob_max, u.hi), updated_at = now()"
            " FROM unnest(%b::text[], %b::int[], %b::bigint[], %b::int[], %b::date[], %b::date[])"
            " AS u(course_id, e, s, w, lo, hi) WHERE c.course_id = u.course_id"
        ).format(t=t("course_stats")),
        (ids, [d.enrolled for d in ds], [d.sum_days for d in ds], [d.waitlisted for d in ds],
         added, added_max),
    )
    births = sorted((c, dob, n) for c in ids for dob, n in deltas[c].births.items() if n)
    if births:
        conn.execute(
            sql.SQL(
                "INSERT INTO {t} AS b (course_id, dob, n)"
                " SELECT * FROM unnest(%b::text[], %b::date[], %b::int[])"
                " ON CONFLICT (course_id, dob) DO UPDATE SET n = b.n + EXCLUDED.n"
            ).format(t=t("course_birth_dates")),
            ([r[0] for r in births], [r[1] for r in births], [r[2] for r in births]),
        )
        conn.execute(sql.SQL("DELETE FROM {t} WHERE n <= 0 AND course_id = ANY(%s)").format(
            t=t("course_birth_dates")), (ids,))
    removed = [c for c in ids if deltas[c].removed]
    if removed:
        conn.execute(
            sql.SQL(
                "UPDATE {c} AS c SET"
                " dob_min = (SELECT min(dob) FROM {b} b WHERE b.course_id = c.course_id),"
                " dob_max = (SELECT max(dob) FROM {b} b WHERE b.course_id = c.course_id)"
                " WHERE c.course_id = ANY(%s)"
            ).format(c=t("course_stats"), b=t("course_birth_dates")),
            (removed,),
        )
    _apply_global(conn, t, ds, overall)


def _apply_global(conn: psycopg.Connection, t: Table, ds: list[CourseDelta],
                  overall: bool) -> None:
    enrolled = sum(d.enrolled for d in ds)
    sum_days = sum(d.sum_days for d in ds)
    births: Counter[date] = Counter()
    for d in ds:
        births.update(d.births)
    if not births and enrolled == 0:
        return
    gained = [d for d, n in births.items() if n > 0]
    conn.execute(
        sql.SQL(
            "UPDATE {g} SET enrollments = enrollments + %s, dob_sum_days = dob_sum_days + %s,"
            " dob_min = LEAST(dob_min, %s::date), dob_max = GREATEST(dob_max, %s::date),"
            " updated_at = now() WHERE id"
        ).format(g=t("global_stats")),
        (enrolled, sum_days, min(gained, default=None), max(gained, default=None)),
    )
    if not overall:
        # A replay sums the global birth dates from the per-course ones after its last
        # batch and reads min and max again then (store.fill_global_birth_dates).
        return
    dobs = sorted(d for d, n in births.items() if n)
    conn.execute(
        sql.SQL(
            "INSERT INTO {g} AS g (dob, n) SELECT * FROM unnest(%b::date[], %b::bigint[])"
            " ON CONFLICT (dob) DO UPDATE SET n = g.n + EXCLUDED.n"
        ).format(g=t("global_birth_dates")),
        (dobs, [births[d] for d in dobs]),
    )
    conn.execute(sql.SQL("DELETE FROM {g} WHERE n <= 0 AND dob = ANY(%s)").format(
        g=t("global_birth_dates")), (dobs,))
    if any(n < 0 for n in births.values()):
        global_min_max(conn, t)


def global_min_max(conn: psycopg.Connection, t: Table) -> None:
    """The global youngest and oldest birth dates read again from the global counts."""
    conn.execute(
        sql.SQL(
            "UPDATE {g} SET dob_min = (SELECT min(dob) FROM {b}),"
            " dob_max = (SELECT max(dob) FROM {b}) WHERE id"
        ).format(g=t("global_stats"), b=t("global_birth_dates")),
    )
