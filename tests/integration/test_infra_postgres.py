"""The database started by the project, with the migrations applied once."""

from __future__ import annotations

import psycopg

import migrations
from tests.infra import Infra


def test_every_migration_is_recorded(infra: Infra) -> None:
    with psycopg.connect(infra.database_url) as conn:
        recorded = [r[0] for r in conn.execute("SELECT version FROM schema_migrations ORDER BY 1")]
    assert recorded == [version for version, _ in migrations.migration_files()]


def test_applying_again_changes_nothing(infra: Infra) -> None:
    assert migrations.apply(infra.database_url) == []


def test_read_model_tables_exist(infra: Infra) -> None:
    with psycopg.connect(infra.database_url) as conn:
        tables = {r[0] for r in conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'")}
        server = conn.execute("SHOW listen_addresses").fetchone()
    assert {"signup_decisions", "course_stats", "global_stats", "projection_offsets",
            "sent_notifications"} <= tables
    assert server == ("127.0.0.1",)
