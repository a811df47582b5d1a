"""Shadow copies of the views, which a replay fills, and the swap that puts them in place."""

from __future__ import annotations

from collections.abc import Mapping

import psycopg
from psycopg import sql

from projections.store.positions import store_positions
from projections.store.views import (
    CHANGES_CHANNEL,
    EVERYTHING,
    RETIRED_SUFFIX,
    SHADOW_SUFFIX,
    VIEWS,
    Target,
    fill_global_birth_dates,
    shadow,
)


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
        retired = sql.Identifier(name + RETIRED_SUFFIX)
        conn.execute(sql.SQL("ALTER TABLE {t} RENAME TO {r}").format(
            t=sql.Identifier(name), r=retired))
        conn.execute(sql.SQL("ALTER TABLE {s} RENAME TO {t}").format(
            s=target.table(name), t=sql.Identifier(name)))
        conn.execute(sql.SQL("DROP TABLE {r}").format(r=retired))
        _rename_indexes(conn, name)
    conn.execute("DELETE FROM projection_offsets WHERE projection IN (%s, %s) AND topic = %s",
                 (projection, target.projection, topic))
    store_positions(conn, projection, topic, positions)
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
