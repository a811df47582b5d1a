"""Positions and generations: where each projection stands in the event log.

`projection_offsets` holds, per projection and topic-partition, the next offset to read;
a projection's positions are written in the same transaction as its view changes, so
they never disagree. `projection_generations` holds one row per projection, bumped by
every swap (`projections.store.shadow.swap`) and locked by every live batch.
"""

from __future__ import annotations

from collections.abc import Mapping

import psycopg


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


def store_positions(
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


# ------------------------------------------------------------------ a replay in progress

# A replay refreshes its row every second; one not refreshed for this long was killed.
REPLAY_FRESH_SECONDS = 10

# (running, the share of the log in the shadow copies): one row, read on every scrape.
REPLAY_PROGRESS = (
    "SELECT coalesce(bool_or(heartbeat_at > now() - make_interval(secs => %s)), false),"
    " coalesce(max(done::float8 / greatest(total, 1)), 0)"
    " FROM replay_runs WHERE projection = %s"
)


def record_replay(conn: psycopg.Connection, projection: str, workers: int, done: int,
                  total: int) -> None:
    conn.execute(
        "INSERT INTO replay_runs (projection, workers, done, total) VALUES (%s, %s, %s, %s)"
        " ON CONFLICT (projection) DO UPDATE SET heartbeat_at = now(),"
        " workers = EXCLUDED.workers, done = EXCLUDED.done, total = EXCLUDED.total",
        (projection, workers, done, total))


def start_replay(conn: psycopg.Connection, projection: str, workers: int) -> None:
    conn.execute("DELETE FROM replay_runs WHERE projection = %s", (projection,))
    record_replay(conn, projection, workers, 0, 0)


def end_replay(conn: psycopg.Connection, projection: str) -> None:
    conn.execute("DELETE FROM replay_runs WHERE projection = %s", (projection,))


def replay_progress(conn: psycopg.Connection, projection: str) -> tuple[bool, float]:
    row = conn.execute(REPLAY_PROGRESS, (REPLAY_FRESH_SECONDS, projection)).fetchone()
    return (False, 0.0) if row is None else (bool(row[0]), float(row[1]))
