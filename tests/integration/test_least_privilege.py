"""Who may connect (issue 18): each service's PostgreSQL role and Kafka principal is
refused what its service does not need, and nobody gets in without a password.

Against the native stack of the session (tests/infra.py), whose roles, principals and
ACLs are made by the same code as `make up`.
"""

from __future__ import annotations

import psycopg
import pytest

from stack.config import PG_OWNER, PG_SERVICE_ROLES, StackConfig
from tests.infra import Infra


@pytest.fixture(scope="module")
def stack(infra: Infra) -> StackConfig:
    assert infra.config is not None, "roles and principals are the native stack's"
    return infra.config


def refused(url: str, statement: str) -> str:
    """The error class PostgreSQL answers `statement` with, as `url`'s role."""
    with (psycopg.connect(url, autocommit=True, connect_timeout=5) as conn,
          pytest.raises(psycopg.Error) as caught):
        conn.execute(statement)
    return type(caught.value).__name__


def test_query_api_may_not_read_the_students_keys(stack: StackConfig) -> None:
    url = stack.service_database_url("query-api")
    assert refused(url, "SELECT student_hash, key FROM student_keys") == "InsufficientPrivilege"
    assert refused(url, "SELECT student_hash FROM erasures") == "InsufficientPrivilege"
    with psycopg.connect(url) as conn:  # what it serves, it reads
        conn.execute("SELECT count(*) FROM course_stats").fetchone()
        conn.execute("SELECT status, completed_at FROM erasures LIMIT 1").fetchall()
    assert refused(url, "DELETE FROM course_stats") == "InsufficientPrivilege"


def test_projector_may_not_read_the_students_keys(stack: StackConfig) -> None:
    url = stack.service_database_url("projector")
    assert refused(url, "SELECT key FROM student_keys") == "InsufficientPrivilege"
    assert refused(url, "SELECT * FROM erasures") == "InsufficientPrivilege"
    with psycopg.connect(url) as conn:
        conn.execute("SELECT generation FROM projection_generations FOR UPDATE").fetchall()
        conn.rollback()


def test_notifier_reads_a_key_by_id_but_never_which_student_it_belongs_to(
        stack: StackConfig) -> None:
    url = stack.service_database_url("notifier")
    assert refused(url, "SELECT student_hash FROM student_keys") == "InsufficientPrivilege"
    assert refused(url, "DELETE FROM student_keys") == "InsufficientPrivilege"
    with psycopg.connect(url) as conn:
        conn.execute("SELECT key FROM student_keys WHERE key_id = gen_random_uuid()").fetchall()


def test_command_api_may_not_touch_the_read_side(stack: StackConfig) -> None:
    url = stack.service_database_url("command-api")
    assert refused(url, "SELECT * FROM signup_decisions") == "InsufficientPrivilege"
    assert refused(url, "UPDATE student_keys SET key = key") == "InsufficientPrivilege"


@pytest.mark.parametrize("service", sorted(PG_SERVICE_ROLES))
def test_no_service_role_changes_the_schema(stack: StackConfig, service: str) -> None:
    url = stack.service_database_url(service)
    assert refused(url, "CREATE TABLE intruder (x int)") == "InsufficientPrivilege"
    assert refused(url, "CREATE TEMP TABLE intruder (x int)") == "InsufficientPrivilege"
    assert refused(url, "ALTER TABLE course_stats ADD COLUMN x int") == "InsufficientPrivilege"
    assert refused(url, "DROP TABLE sent_notifications") == "InsufficientPrivilege"


@pytest.mark.parametrize("role", [PG_OWNER, "postgres", *PG_SERVICE_ROLES.values()])
def test_a_connection_without_the_password_is_refused(stack: StackConfig, role: str) -> None:
    for password in ("", ":wrong"):
        url = f"postgresql://{role}{password}@127.0.0.1:{stack.pg_port}/coursesignup"
        with pytest.raises(psycopg.OperationalError, match="password"):
            psycopg.connect(url, connect_timeout=5, sslmode="disable")


def test_the_owners_connection_string_is_written_privately(stack: StackConfig) -> None:
    path = stack.postgres_admin_url_file
    assert path.read_text().strip() == stack.database_url
    assert path.stat().st_mode & 0o777 == 0o600
    with psycopg.connect(stack.database_url) as conn:
        assert conn.execute("SELECT current_user").fetchone() == (PG_OWNER,)
