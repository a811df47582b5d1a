"""Versioned plain-SQL migrations, applied idempotently by every service that uses PostgreSQL.

Each file `NNNN_name.sql` runs once, in order, in its own transaction, and is
recorded in `schema_migrations`. An advisory lock serialises services that start
at the same moment.
"""

from __future__ import annotations

from importlib import resources

import psycopg

_LOCK_KEY = 0x636F7572  # any constant shared by every service of this project


def migration_files() -> list[tuple[str, str]]:
    folder = resources.files(__package__)
    names = sorted(p.name for p in folder.iterdir() if p.name.endswith(".sql"))
    return [(name.removesuffix(".sql"), (folder / name).read_text()) for name in names]


def apply(conninfo: str) -> list[str]:
    """Apply what is missing; returns the versions applied now."""
    applied_now: list[str] = []
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (_LOCK_KEY,))
        try:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            done = {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}
            for version, sql in migration_files():
                if version in done:
                    continue
                with conn.transaction():
                    conn.execute(sql.encode())
                    conn.execute("INSERT INTO schema_migrations (version) VALUES (%s)", (version,))
                applied_now.append(version)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (_LOCK_KEY,))
    return applied_now
