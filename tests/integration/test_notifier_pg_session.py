"""The notifier's PostgreSQL session against a real server: a session the server ended
while it sat idle (as a restart of PostgreSQL ends every session) is replaced at a
batch's start, and nowhere else, where the key-in-use locks it held went with it."""

from __future__ import annotations

import os
import uuid

import psycopg
import pytest

from notifier.store import PostgresStore
from schemas.personal import KEY_IN_USE_LOCK
from stack.waiting import wait_until

pytestmark = pytest.mark.integration


def _end_session(store: PostgresStore) -> int:
    """Terminate the store's backend as a fast shutdown does (57P01, admin_shutdown), and
    wait until it is gone. Returns its pid."""
    assert store._conn is not None
    pid = store._conn.info.backend_pid
    with psycopg.connect(os.environ["DATABASE_URL"], autocommit=True) as admin:
        assert admin.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchone() == (True,)
        wait_until(lambda: admin.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s",
                                         (pid,)).fetchone() == (0,), 10, "the backend to end")
    return pid


def test_a_session_ended_while_idle_is_replaced_at_a_batchs_start_and_not_inside_one() -> None:
    store = PostgresStore(os.environ["DATABASE_URL"])
    event_id = f"pg-session-{uuid.uuid4()}"
    try:
        store.begin()
        assert store.handled_saving([event_id], []) == set()
        ended = _end_session(store)

        # The next batch's first statement finds the session gone: it runs again on a
        # new one, and the batch goes on (before: the batch failed, and the worker took
        # it for an outage of PostgreSQL).
        store.begin()
        assert store.handled_saving([event_id], []) == set()
        assert store._conn is not None and store._conn.info.backend_pid != ended

        # Inside a batch (its first statement done, its locks taken) a lost session
        # fails the statement: the locks went with the session, so the batch must not
        # go on as if it held them.
        store.begin()
        assert store.handled_saving([event_id], []) == set()
        with store._conn.cursor() as cur:
            cur.execute("SELECT pg_advisory_lock_shared(%s, hashtext('k'))", (KEY_IN_USE_LOCK,))
        _end_session(store)
        with pytest.raises(psycopg.OperationalError):
            store.contacts_of([str(uuid.uuid4())])
        # The failed call closed it; the next one (the retried batch) opens a new one.
        assert store._conn is None
        store.begin()
        assert store.handled_saving([event_id], []) == set()

        # A server that is really away still fails the batch's first statement.
        away = PostgresStore("postgresql://nobody@127.0.0.1:1/none", connect_timeout=1)
        away.begin()
        with pytest.raises(psycopg.OperationalError):
            away.handled_saving([event_id], [])
    finally:
        store.close()
