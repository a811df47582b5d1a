"""Shadow copies of the views, which a replay fills, and the swap that puts them in place.

A replay writes its batches with `apply_staged`: the batch's decisions go into the copy
of the decisions by one binary COPY, and the accepted ones' birth dates by another into
an unindexed table, which `merge_births` groups into the per-course rows and birth-date
counts once, in PostgreSQL (a batch repeating a stored decision is staged and folded by
one statement instead). The global rows,
which every worker of a parallel replay would otherwise update (one row, one lock), are
summed from the per-course ones once, before the swap (`fill_globals`). Each batch
stores its partitions' positions in the same transaction, so a replay killed at any
moment resumes from its last committed batch (`shadow_exists`).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import replace

import psycopg
from psycopg import sql

from projections.batch import EventRecord, UnreadableRecord, build
from projections.staged import Decision, Staged
from projections.store.positions import store_positions
from projections.store.views import (
    CHANGES_CHANNEL,
    EVERYTHING,
    RETIRED_SUFFIX,
    SHADOW_SUFFIX,
    VIEWS,
    Target,
    apply,
    fill_global_birth_dates,
    insert_courses,
    shadow,
)

_STAGE = "replay_stage"


def shadow_exists(conn: psycopg.Connection, projection: str) -> bool:
    """Whether every shadow copy is there, intact (`create_shadow` makes them in one
    transaction). They are UNLOGGED: after a crash of PostgreSQL they come back empty,
    the global row that `create_shadow` inserts included, while the positions they were
    written with survive; then they are no longer what their positions say."""
    target = shadow(projection)
    names = [name + target.suffix for name in (*VIEWS, BIRTHS_PENDING)]
    row = conn.execute("SELECT count(to_regclass(n)) FROM unnest(%s::text[]) AS n",
                       (names,)).fetchone()
    if row is None or row[0] != len(names):
        return False
    marker = conn.execute(sql.SQL("SELECT count(*) FROM {g}").format(
        g=target.table("global_stats"))).fetchone()
    return marker is not None and marker[0] == 1


def set_logged(conn: psycopg.Connection, projection: str,
               views: Sequence[str] = VIEWS) -> None:
    """Make the shadow copies of `views` crash-safe before they become the views: one
    sequential write of each table to the WAL instead of one WAL record per row during
    the replay."""
    target = shadow(projection)
    for name in views:
        # The columns the copy compared in byte order get the view's collation back in
        # the same statement: the rewrite builds each index once, in the end's collation.
        back = [sql.SQL("ALTER COLUMN {c} TYPE text COLLATE {k}").format(
                    c=sql.Identifier(column), k=sql.Identifier(collation))
                for column in BYTE_ORDER.get(name, ())
                if (collation := _collation(conn, name, column))
                != _collation(conn, name + target.suffix, column)]
        conn.execute(sql.SQL("ALTER TABLE {s} ").format(s=target.table(name))
                     + sql.SQL(", ").join([sql.SQL("SET LOGGED"), *back]))


def _collation(conn: psycopg.Connection, table: str, column: str) -> str:
    row = conn.execute(
        "SELECT c.collname FROM pg_attribute a JOIN pg_collation c ON c.oid = a.attcollation"
        " WHERE a.attrelid = to_regclass(%s) AND a.attname = %s", (table, column)).fetchone()
    if row is None:
        raise LookupError(f"{table}.{column}: no such column")
    return str(row[0])


def prepare_staging(conn: psycopg.Connection) -> None:
    """The session's staging table: temporary (no WAL), emptied at every commit."""
    conn.execute(
        f"CREATE TEMP TABLE IF NOT EXISTS {_STAGE} (signup_id text, course_id text,"
        " reason text, event_id text, at_ms bigint, dob_days int, part int)"
        " ON COMMIT DELETE ROWS")


# The unindexed, unlogged table where a replay's batches append one row per accepted
# sign-up: (partition, course id, birth date). Upserting each batch's per-course rows and
# per-(course, birth date) counts into their primary keys was most of PostgreSQL's time
# per batch (EXPLAIN ANALYZE); appended rows cost a heap insert each, and `merge_births`
# groups them into `course_stats` and `course_birth_dates` in one statement: before the
# swap for every partition, and before a batch with a term's events for the batch's
# partitions (a withdrawal reads and decrements its course's counts; a course lives in
# one partition, a partition in one worker).
BIRTHS_PENDING = "course_births_pending"

# Both folds end alike: the accepted decisions' birth dates appended for the merge.
_APPEND_BIRTHS = """
)
INSERT INTO {pending} (part, course_id, dob)
SELECT part, course_id, dob FROM births
"""


# One statement: the new decisions (the primary key keeps out those already there), then
# their birth dates appended for `merge_births`. Dates travel as epoch days and
# timestamps as epoch milliseconds.
_FOLD = """
WITH new AS (
    INSERT INTO {decisions} (signup_id, course_id, status, reason, event_id, decided_at)
    SELECT signup_id, course_id,
           CASE WHEN reason IS NULL THEN 'accepted' ELSE 'rejected' END, reason, event_id,
           timestamptz 'epoch' + at_ms * interval '1 millisecond'
    FROM {stage}
    ON CONFLICT (signup_id) DO NOTHING
    RETURNING signup_id
), births AS (
    SELECT s.part, s.course_id, date '1970-01-01' + s.dob_days AS dob
    FROM {stage} s JOIN new ON new.signup_id = s.signup_id COLLATE "C"
    WHERE s.dob_days IS NOT NULL
""" + _APPEND_BIRTHS

# The appended birth dates (`moved`) folded into the per-course aggregates and
# per-(course, birth date) counts: one upsert per course and one per course and birth
# date, in key order (the index grows at its right edge when the tables are empty): the
# grouped rows are sorted once and inserted in the order the CTE holds them, not sorted
# again (the merge of 480,000 appended rows: 2.4-2.5 s of the backend's CPU instead of
# 2.6-2.9 s, alternating, load 3.5; the order only serves the inserts' locality).
# Grouped and sorted in byte order (COLLATE "C"): the same order as the database's
# C.UTF-8 for UTF-8 text, without a strcoll per comparison (and any other order would
# only cost the inserts locality). date '0001-01-01' is day 1 of date.toordinal().
_MERGE = """
, births AS (
    SELECT course_id COLLATE "C" AS course_id, dob, count(*) AS n FROM moved GROUP BY 1, 2
    ORDER BY 1, 2
), per_course AS (
    INSERT INTO {courses} AS c (course_id, enrolled, dob_sum_days, dob_min, dob_max)
    SELECT course_id, sum(n)::int, sum(n * (dob - date '0001-01-01' + 1))::bigint,
           min(dob), max(dob)
    FROM births GROUP BY course_id ORDER BY course_id
    ON CONFLICT (course_id) DO UPDATE SET
        enrolled = c.enrolled + EXCLUDED.enrolled,
        dob_sum_days = c.dob_sum_days + EXCLUDED.dob_sum_days,
        dob_min = LEAST(c.dob_min, EXCLUDED.dob_min),
        dob_max = GREATEST(c.dob_max, EXCLUDED.dob_max),
        updated_at = now()
)
INSERT INTO {births} AS b (course_id, dob, n)
SELECT course_id, dob, n FROM births
"""
_ADD_TO_COUNTS = "ON CONFLICT (course_id, dob) DO UPDATE SET n = b.n + EXCLUDED.n"

# Whether any of the moved rows' courses already has a birth-date count. Most merges are
# a course's first (a worker's merge after its last batch, in a log without a term's
# events): then their counts are plain inserts, without ON CONFLICT's speculative
# insertion, which probes the index once more per row (a worker's merge of 480,000 rows:
# 1.5-1.7 s of the backend's CPU instead of 2.3-2.5 s; the check about 0.1 s). A course
# lives in one partition and a partition in one worker, so no one else adds counts of
# these courses between the check and the insert.
_COUNTED = """
SELECT EXISTS (SELECT 1 FROM (SELECT DISTINCT course_id COLLATE "C" AS course_id
                              FROM moved) m
               WHERE EXISTS (SELECT 1 FROM {births} b WHERE b.course_id = m.course_id))
"""


def merge_births(conn: psycopg.Connection, target: Target,
                 partitions: Sequence[int] | None = None) -> None:
    """Fold the appended birth dates into the shadow's course rows and counts: those of
    `partitions` (before a batch that reads those counts back), or all of them (None).
    The caller owns the transaction."""
    tables = {"courses": target.table("course_stats"),
              "births": target.table("course_birth_dates"),
              "pending": target.table(BIRTHS_PENDING)}
    # The grouping and sorting of up to millions of appended rows: in memory where they
    # fit, not spilled to disk past the default 4 MB (no measured gain yet at 300,000
    # events, where the merge took 5.5 s either way at load 10).
    conn.execute("SET LOCAL work_mem = '128MB'")
    if partitions is not None:
        parts = list(partitions)
        moved = sql.SQL("WITH moved AS (SELECT course_id, dob FROM {pending}"
                        " WHERE part = ANY(%s))").format(**tables)
        _merge(conn, moved, tables, (parts,))
        # Emptied by TRUNCATE where they have a table of their own (`create_shadow`),
        # instead of a DELETE of every row; any left elsewhere (the default part: a
        # partition the topic gained after the copies were made) by the DELETE, which
        # reads only the parts that can hold them.
        own = [sql.Identifier(name) for (name,) in conn.execute(
            "SELECT n FROM unnest(%s::text[]) AS n WHERE to_regclass(n) IS NOT NULL",
            ([_pending_part(target, p) for p in parts],))]
        if own:
            conn.execute(sql.SQL("TRUNCATE {}").format(sql.SQL(", ").join(own)))
        conn.execute(sql.SQL("DELETE FROM {pending} WHERE part = ANY(%s)").format(**tables),
                     (parts,), prepare=False)
        return
    # No row may come between the read and the TRUNCATE (a worker of a killed replay
    # still committing its last batch): hold the table until the commit.
    conn.execute(sql.SQL("LOCK TABLE {pending} IN ACCESS EXCLUSIVE MODE").format(**tables))
    _merge(conn, sql.SQL("WITH moved AS (SELECT course_id, dob FROM {pending})").format(
        **tables), tables, ())
    conn.execute(sql.SQL("TRUNCATE {pending}").format(**tables))


def _merge(conn: psycopg.Connection, moved: sql.Composed, tables: Mapping[str, sql.Identifier],
           params: tuple[object, ...]) -> None:
    # Never prepared (nor `merge_births`' DELETE): planned with its partitions known, the
    # statement opens and locks only their parts of the pending table. A generic plan
    # (which PostgreSQL may choose for a statement psycopg prepared after five runs, as
    # a worker merging before each batch with a term's events runs it) prunes at run
    # time, after locking every part: another worker's too, whose TRUNCATE of its own
    # parts then waited for this transaction while this one's waited for it (a deadlock,
    # seen with two workers on a log with a withdrawal per hundred sign-ups).
    row = conn.execute(moved + sql.SQL(_COUNTED).format(**tables), params,
                       prepare=False).fetchone()
    merge = _MERGE + (_ADD_TO_COUNTS if row is None or row[0] else "")
    conn.execute(moved + sql.SQL(merge).format(**tables), params, prepare=False)


def apply_staged(conn: psycopg.Connection, target: Target, staged: Staged, *,
                 topic: str) -> None:
    """Write a replay batch and its positions; the caller owns the transaction.

    A shadow copy has one writer per course (a course lives in one partition, a
    partition in one worker), so these upserts never wait for another worker's.
    The batch's term events, if any, are folded after its other events as the live
    projector folds a batch: one fold per batch, not the whole batch through the live
    fold (a log with one withdrawal per hundred sign-ups put every batch there, and
    the replay at a third of its speed).
    """
    insert_courses(conn, target, staged.courses)
    _record_failures(conn, target, staged.failures)
    if staged.decisions:
        try:
            with conn.transaction():  # a savepoint: a repeat undoes these COPYs only
                _copy_new(conn, target, staged.decisions)
        except psycopg.errors.UniqueViolation:
            # A decision of this batch is already in the copy (repeated in the log after
            # a processor crash): keep the first, count it once.
            _fold_repeats(conn, target, staged.decisions)
    if staged.live is not None:
        # The live fold reads and decrements its courses' counts: they must hold every
        # birth date appended so far, this batch's included.
        merge_births(conn, target, sorted({r.partition for r in staged.live}))
        batch = build(staged.live)
        # The positions are the whole batch's, stored below.
        apply(conn, target, replace(batch, next_offsets={}), topic=topic, expected=None,
              generation=None)
        _record_failures(conn, target, batch.failures)
    store_positions(conn, target.projection, topic, staged.next_offsets)


def _record_failures(conn: psycopg.Connection, target: Target,
                     failures: Sequence[UnreadableRecord]) -> None:
    if failures:
        conn.cursor().executemany(
            "INSERT INTO replay_failures (projection, partition, \"offset\", key, value, reason)"
            " VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
            [(target.projection, f.record.partition, f.record.offset, f.record.key,
              f.record.value, f.reason) for f in failures])


# Binary COPY sends a timestamptz as microseconds and a date as days since 2000-01-01
# (PostgreSQL's epoch); the staged decisions carry them since 1970-01-01.
_PG_EPOCH_MS = 946_684_800_000
_PG_EPOCH_DAYS = 10_957


def _copy_new(conn: psycopg.Connection, target: Target,
              decisions: Sequence[Decision]) -> None:
    """A batch whose decisions are all new, which is every batch of a log without
    repeated decisions: the rows COPYed straight into the copy of the decisions and the
    accepted ones' birth dates into the pending table, two binary COPYs and nothing
    else. Through a staging table and an INSERT ... SELECT (`_fold_repeats`), PostgreSQL
    wrote and read every row twice more. A repeat raises UniqueViolation (primary key)."""
    decisions_copy = sql.SQL(
        "COPY {d} (signup_id, course_id, status, reason, event_id, decided_at)"
        " FROM STDIN (FORMAT BINARY)").format(d=target.table("signup_decisions"))
    births_copy = sql.SQL("COPY {p} (part, course_id, dob) FROM STDIN (FORMAT BINARY)"
                          ).format(p=target.table(BIRTHS_PENDING))
    epoch_ms, epoch_days = _PG_EPOCH_MS, _PG_EPOCH_DAYS
    with conn.cursor() as cur:
        with cur.copy(decisions_copy) as copy:
            # int8 is timestamptz's binary form: microseconds since 2000-01-01.
            copy.set_types(["text", "text", "text", "text", "text", "int8"])
            write = copy.write_row
            for signup_id, course_id, reason, event_id, at_ms, _, _ in decisions:
                write((signup_id, course_id, "accepted" if reason is None else "rejected",
                       reason, event_id, (at_ms - epoch_ms) * 1000))
        with cur.copy(births_copy) as copy:
            copy.set_types(["int4", "text", "int4"])  # int4: date's binary form
            write = copy.write_row
            for _, course_id, _, _, _, dob, part in decisions:
                if dob is not None:
                    write((part, course_id, dob - epoch_days))


def _fold_repeats(conn: psycopg.Connection, target: Target,
                  decisions: Sequence[Decision]) -> None:
    """A batch with a decision already in the copy: staged, then folded by one statement
    that keeps the first of each sign-up and appends only the new ones' birth dates."""
    with conn.cursor() as cur:
        with cur.copy(f"COPY {_STAGE} FROM STDIN (FORMAT BINARY)") as copy:
            copy.set_types(["text", "text", "text", "text", "int8", "int4", "int4"])
            for row in decisions:
                copy.write_row(row)
        cur.execute(sql.SQL(_FOLD).format(decisions=target.table("signup_decisions"),
                                          pending=target.table(BIRTHS_PENDING),
                                          stage=sql.Identifier(_STAGE)))


def failures_since(conn: psycopg.Connection, projection: str,
                   positions: Mapping[int, int]) -> list[UnreadableRecord]:
    """What the replay could not decode at or past `positions` (per partition)."""
    rows = conn.execute(
        "SELECT partition, \"offset\", key, value, reason FROM replay_failures"
        " WHERE projection = %s ORDER BY partition, \"offset\"",
        (shadow(projection).projection,)).fetchall()
    return [UnreadableRecord(EventRecord(p, o, k, v), why) for p, o, k, v, why in rows
            if o >= positions.get(p, 0)]


def fill_globals(conn: psycopg.Connection, target: Target) -> None:
    """The global row and birth-date counts as the sums of the per-course ones: how a
    replay builds them, once, after its last batch (one pass over the courses and over
    at most one row per course and birth date). A course counts once it has a title.
    Every writer's appended birth dates are merged first: no worker may be writing."""
    merge_births(conn, target)
    fill_global_birth_dates(conn, target)
    conn.execute(sql.SQL(
        "UPDATE {g} SET (courses, enrollments, dob_sum_days, dob_min, dob_max, updated_at) ="
        " (SELECT count(*) FILTER (WHERE title IS NOT NULL), coalesce(sum(enrolled), 0),"
        " coalesce(sum(dob_sum_days), 0), min(dob_min), max(dob_max), now() FROM {c})"
        " WHERE id").format(g=target.table("global_stats"), c=target.table("course_stats")))


def _pending_part(target: Target, partition: int) -> str:
    return f"{BIRTHS_PENDING}{target.suffix}_p{partition}"


_NO_AUTOVACUUM = "autovacuum_enabled = false, toast.autovacuum_enabled = false"
_AUTOVACUUM_BACK = "autovacuum_enabled, toast.autovacuum_enabled"

# Columns a replay's copy keys in byte order (COLLATE "C") while its workers load it:
# a replay inserts millions of random sign-up ids into the decisions' primary key, and
# under the database's C.UTF-8 (any libc collation) each comparison is a strcoll, under
# "C" a memcmp (COPY of 600,000 decisions: 2.1 s of the backend's CPU instead of 2.6 s).
# Equality is the same under both. `set_logged` gives the column the view's collation
# back in the rewrite it does anyway, so the swapped-in view has the old one's column
# types: a statement the query API or the projector prepared against the old view
# fails after a swap that changed a result column's collation ("cached plan must not
# change result type").
BYTE_ORDER = {"signup_decisions": ("signup_id",)}


def create_shadow(conn: psycopg.Connection, projection: str,
                  partitions: Sequence[int] = ()) -> Target:
    """Empty copies of every view (same columns, constraints and indexes), unlogged; drops
    old ones. The appended birth dates get a table per partition of `partitions` (and
    one for any other), so that a worker's merge empties its own with a TRUNCATE."""
    target = shadow(projection)
    for name in VIEWS:
        conn.execute(sql.SQL("DROP TABLE IF EXISTS {s}").format(s=target.table(name)))
        # UNLOGGED: no WAL while the replay writes them (see shadow_exists, set_logged).
        # No autovacuum either (`swap` gives it back): one that starts on a freshly
        # loaded copy holds a lock the swap's renames wait for until PostgreSQL cancels
        # it, one deadlock_timeout (1 s) later, with the query API's reads queued behind.
        conn.execute(sql.SQL("CREATE UNLOGGED TABLE {s} (LIKE {t} INCLUDING ALL)"
                             " WITH (" + _NO_AUTOVACUUM + ")").format(
            s=target.table(name), t=sql.Identifier(name)))
        for column in BYTE_ORDER.get(name, ()):
            # The copy is empty: only its (empty) indexes are rebuilt.
            conn.execute(sql.SQL('ALTER TABLE {s} ALTER COLUMN {c} TYPE text COLLATE "C"')
                         .format(s=target.table(name), c=sql.Identifier(column)))
    pending = target.table(BIRTHS_PENDING)
    conn.execute(sql.SQL("DROP TABLE IF EXISTS {p}").format(p=pending))
    # A partitioned table has no storage of its own (and cannot be UNLOGGED): its parts are.
    conn.execute(sql.SQL("CREATE TABLE {p} (part int NOT NULL, course_id text NOT NULL,"
                         " dob date NOT NULL) PARTITION BY LIST (part)").format(p=pending))
    conn.execute(sql.SQL("CREATE UNLOGGED TABLE {d} PARTITION OF {p} DEFAULT").format(
        d=sql.Identifier(f"{BIRTHS_PENDING}{target.suffix}_default"), p=pending))
    for p in partitions:
        conn.execute(sql.SQL("CREATE UNLOGGED TABLE {t} PARTITION OF {p} FOR VALUES IN ({n})")
                     .format(t=sql.Identifier(_pending_part(target, p)), p=pending,
                             n=sql.Literal(p)))
    conn.execute(sql.SQL("INSERT INTO {s} (id) VALUES (true)").format(
        s=target.table("global_stats")))
    conn.execute("DELETE FROM projection_offsets WHERE projection = %s", (target.projection,))
    conn.execute("DELETE FROM replay_failures WHERE projection = %s", (target.projection,))
    return target


def drop_shadow(conn: psycopg.Connection, projection: str) -> None:
    target = shadow(projection)
    for name in (*VIEWS, BIRTHS_PENDING):
        conn.execute(sql.SQL("DROP TABLE IF EXISTS {s}").format(s=target.table(name)))
    conn.execute("DELETE FROM projection_offsets WHERE projection = %s", (target.projection,))
    conn.execute("DELETE FROM replay_failures WHERE projection = %s", (target.projection,))


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
    fill_globals(conn, shadow(projection))
    # A long read holding a view would make every query queue behind this lock: give up
    # instead, and let the caller try again.
    conn.execute("SET LOCAL lock_timeout = '5s'")
    conn.execute(sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(
        sql.SQL(", ").join(sql.Identifier(name) for name in VIEWS)))
    target = shadow(projection)
    for name in VIEWS:
        retired = sql.Identifier(name + RETIRED_SUFFIX)
        conn.execute(sql.SQL("ALTER TABLE {t} RENAME TO {r}").format(
            t=sql.Identifier(name), r=retired))
        conn.execute(sql.SQL("ALTER TABLE {s} RENAME TO {t}").format(
            s=target.table(name), t=sql.Identifier(name)))
        conn.execute(sql.SQL("ALTER TABLE {t} RESET (" + _AUTOVACUUM_BACK + ")").format(
            t=sql.Identifier(name)))
        conn.execute(sql.SQL("DROP TABLE {r}").format(r=retired))
        _rename_indexes(conn, name)
    conn.execute(sql.SQL("DROP TABLE {p}").format(p=target.table(BIRTHS_PENDING)))
    # The swapped-in tables are new and have no grants: the services' roles get theirs
    # back from the function their migration defined, in this same transaction.
    conn.execute("SELECT grant_view_privileges()")
    conn.execute("DELETE FROM projection_offsets WHERE projection IN (%s, %s) AND topic = %s",
                 (projection, target.projection, topic))
    conn.execute("DELETE FROM replay_failures WHERE projection = %s", (target.projection,))
    store_positions(conn, projection, topic, positions)
    conn.execute("UPDATE projection_generations SET swapped_at = now() WHERE projection = %s",
                 (projection,))
    # Every view is new: listeners re-read everything once this commits.
    conn.execute("SELECT pg_notify(%s, %s)", (CHANGES_CHANNEL, EVERYTHING))


def _maintenance_running(conn: psycopg.Connection, projection: str) -> int:
    """How many sessions hold SHARE UPDATE EXCLUSIVE (a VACUUM or ANALYZE, autovacuum's
    above all) on a view, its shadow copy or their TOAST tables: the swap's locks would
    wait for them (an autovacuum is cancelled only after deadlock_timeout, 1 s), and the
    query API's reads behind the swap. pg_locks shows every session's locks to any role."""
    names = [n for name in VIEWS for n in (name, name + shadow(projection).suffix)]
    row = conn.execute(
        "WITH r AS (SELECT c.oid, c.reltoastrelid FROM pg_class c"
        "  WHERE c.oid = ANY(ARRAY(SELECT to_regclass(n) FROM unnest(%s::text[]) AS n)))"
        " SELECT count(DISTINCT l.pid) FROM pg_locks l"
        " WHERE l.granted AND l.pid <> pg_backend_pid()"
        "  AND l.mode = 'ShareUpdateExclusiveLock' AND l.locktype = 'relation'"
        "  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())"
        "  AND (l.relation IN (SELECT oid FROM r) OR l.relation IN (SELECT reltoastrelid FROM r))",
        (names,)).fetchone()
    return 0 if row is None else int(row[0])


def wait_out_maintenance(conn: psycopg.Connection, projection: str, timeout: float,
                         poll: float = 0.05) -> tuple[bool, bool]:
    """Until no session runs a VACUUM or ANALYZE on the projection's tables
    (`_maintenance_running`), at most `timeout` seconds: (whether it waited at all,
    whether they are free now)."""
    deadline = time.monotonic() + timeout
    waited = False
    while _maintenance_running(conn, projection):
        if time.monotonic() > deadline:
            return waited, False
        waited = True
        time.sleep(poll)
    return waited, True


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
