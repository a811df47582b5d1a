"""Versioned plain-SQL migrations, applied idempotently by the schema's owner.

Each file `NNNN_name.sql` runs once, in order, in its own transaction, and is
recorded in `schema_migrations`. An advisory lock serialises callers that start
at the same moment. Every service calls `apply` at its start too: connected as the
owner (a test, a one-database deployment) it migrates; connected as its own role,
which may create nothing, it only finds out whether every migration it knows is
there, and waits (`NotMigrated`) until the owner has applied them.
"""

from __future__ import annotations

from importlib import resources

import psycopg

_LOCK_KEY = 0x636F7572  # any constant shared by every service of this project


class NotMigrated(psycopg.OperationalError):
    """Migrations are missing and this role may not apply them: the owner has to (as
    `make up` does). An OperationalError, so that a service's start waits for it as it
    waits for a database that is not up yet."""


def migration_files() -> list[tuple[str, str]]:
    folder = resources.files(__package__)
    names = sorted(p.name for p in folder.iterdir() if p.name.endswith(".sql"))
    return [(name.removesuffix(".sql"), (folder / name).read_text()) for name in names]


def apply(conninfo: str) -> list[str]:
    """Apply what is missing; returns the versions applied now."""
    applied_now: list[str] = []
    with psycopg.connect(conninfo, autocommit=True) as conn:
        missing = _missing(conn)
        if not missing:
            return applied_now  # nothing to do: no DDL, so any role gets this far
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
        except psycopg.errors.InsufficientPrivilege as exc:
            raise NotMigrated(f"migrations {missing} are not applied, and this role may "
                              "not apply them") from exc
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (_LOCK_KEY,))
    return applied_now


def _missing(conn: psycopg.Connection) -> list[str]:
    try:
        done = {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}
    except (psycopg.errors.UndefinedTable, psycopg.errors.InsufficientPrivilege):
        done = set()
    return [version for version, _ in migration_files() if version not in done]
