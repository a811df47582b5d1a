"""The notifier's course lookups against a real PostgreSQL: a course no instance has
learned is asked for once per UNKNOWN_COURSE_SECONDS, not once per e-mail, and a course
learned meanwhile (by this instance or another) is found."""

from __future__ import annotations

import os
import uuid

import psycopg
import pytest

from notifier.emails import CourseInfo
from notifier.store import UNKNOWN_COURSE_SECONDS, PostgresStore

pytestmark = pytest.mark.integration


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _learned_elsewhere(course_id: str, title: str) -> None:
    """As another notifier instance saves a course it learned."""
    with psycopg.connect(os.environ["DATABASE_URL"], autocommit=True) as conn:
        conn.execute("INSERT INTO notifier_courses (course_id, title, lecturer)"
                     " VALUES (%s, %s, 'Dr. Elsewhere')", (course_id, title))


def _last_statement_at(store: PostgresStore) -> object:
    """When the store's session last changed state: every statement turns it active and
    then idle again, so an unchanged time means no statement ran in between."""
    assert store._conn is not None
    with psycopg.connect(os.environ["DATABASE_URL"], autocommit=True) as admin:
        row = admin.execute("SELECT state_change FROM pg_stat_activity WHERE pid = %s",
                            (store._conn.info.backend_pid,)).fetchone()
    assert row is not None
    return row[0]


def test_an_unknown_course_is_looked_up_again_only_after_a_while() -> None:
    clock = Clock()
    store = PostgresStore(os.environ["DATABASE_URL"], clock=clock)
    course_id, other = f"unknown-{uuid.uuid4()}", f"known-{uuid.uuid4()}"
    try:
        assert store.course(course_id) is None
        looked_up = _last_statement_at(store)
        _learned_elsewhere(course_id, "Learned Elsewhere")

        # Within the window the answer is the remembered one, and no statement runs.
        clock.now += UNKNOWN_COURSE_SECONDS - 1
        for _ in range(3):
            assert store.course(course_id) is None
        assert _last_statement_at(store) == looked_up

        # After it, the course another instance saved meanwhile is found, and kept.
        clock.now += 2
        assert store.course(course_id) == CourseInfo("Learned Elsewhere", "Dr. Elsewhere")
        assert _last_statement_at(store) != looked_up

        # A course this instance learns itself is known at once, window or not.
        assert store.course(other) is None
        store.save_course(other, CourseInfo("Learned Here", "Dr. Here"))
        assert store.course(other) == CourseInfo("Learned Here", "Dr. Here")
    finally:
        store.close()
        with psycopg.connect(os.environ["DATABASE_URL"], autocommit=True) as conn:
            conn.execute("DELETE FROM notifier_courses WHERE course_id = ANY(%s)",
                         ([course_id, other],))
