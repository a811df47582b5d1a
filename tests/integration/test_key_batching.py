"""The command API's batched key store on a real PostgreSQL: concurrent lookups share
round trips, every key returned is committed, two API instances asking for the same new
students agree on their keys, and an erasure still removes a key (the next sign-up gets
a new one)."""

from __future__ import annotations

import asyncio
import os
import tempfile
import uuid
from collections.abc import AsyncIterator

import psycopg
import pytest

import migrations
from command_api.keybatch import BatchingKeyStore
from command_api.keys import PostgresKeyStore, _keys_for

pytestmark = pytest.mark.integration


def _store() -> BatchingKeyStore:
    return BatchingKeyStore(PostgresKeyStore(os.environ["DATABASE_URL"], timeout=10.0,
                                             sweep_seconds=0.2))


@pytest.fixture
async def keys() -> AsyncIterator[BatchingKeyStore]:
    migrations.apply(os.environ["DATABASE_URL"])
    store = _store()
    await store.start()
    try:
        yield store
    finally:
        await store.stop()


def _stored(students: list[str]) -> dict[str, str]:
    with psycopg.connect(os.environ["DATABASE_URL"]) as conn:
        rows = conn.execute("SELECT student_hash, key_id FROM student_keys"
                            " WHERE student_hash = ANY(%s)", (students,)).fetchall()
    return {r[0]: str(r[1]) for r in rows}


async def test_concurrent_new_students_share_round_trips_and_every_key_is_committed(
    keys: BatchingKeyStore,
) -> None:
    students = [f"batch-{uuid.uuid4().hex}" for _ in range(300)]
    found = await asyncio.gather(*(keys.key_for(s) for s in students))
    # Committed when returned: another connection sees every key, with the same id.
    assert _stored(students) == {s: k.key_id for s, k in zip(students, found, strict=True)}
    assert len({k.key for k in found}) == 300
    assert keys.served == 300 and keys.batches <= 30, keys.batches
    # A returning student gets the same key back, under a reference of this sign-up's own.
    again = await asyncio.gather(*(keys.key_for(s) for s in students[:50]))
    assert [(k.key_id, k.key) for k in again] == [(k.key_id, k.key) for k in found[:50]]
    assert not {k.ref for k in again} & {k.ref for k in found}


async def test_two_instances_asking_for_the_same_new_students_agree(
    keys: BatchingKeyStore,
) -> None:
    other = _store()
    await other.start()
    try:
        students = [f"race-{uuid.uuid4().hex}" for _ in range(100)]
        mine, theirs = await asyncio.gather(
            asyncio.gather(*(keys.key_for(s) for s in students)),
            asyncio.gather(*(other.key_for(s) for s in reversed(students))))
    finally:
        await other.stop()
    assert [(k.key_id, k.key) for k in mine] == [(k.key_id, k.key) for k in reversed(theirs)]
    assert _stored(students) == {s: k.key_id for s, k in zip(students, mine, strict=True)}


async def test_an_erased_key_is_gone_and_the_next_sign_up_gets_a_new_one(
    keys: BatchingKeyStore,
) -> None:
    student = f"erased-{uuid.uuid4().hex}"
    first = await keys.key_for(student)
    await keys.request_erasure(student)
    store = keys.store
    assert isinstance(store, PostgresKeyStore)
    await store.finish_pending()
    # The worker, woken by the request, may hold that erasure (SKIP LOCKED hides it from
    # finish_pending): wait for its commit.
    deadline = asyncio.get_running_loop().time() + 10
    while _stored([student]) and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.05)
    assert _stored([student]) == {}
    second = await keys.key_for(student)
    assert second.key_id != first.key_id and _stored([student]) == {student: second.key_id}


async def test_a_batch_is_one_round_trip_and_one_commit() -> None:
    # libpq's trace of what the client sends: one Sync (one round trip, one implicit
    # transaction) for the new students' keys and every request's reference together.
    migrations.apply(os.environ["DATABASE_URL"])
    returning = f"back-{uuid.uuid4().hex}"
    students = [returning, f"new-{uuid.uuid4().hex}", returning]
    async with await psycopg.AsyncConnection.connect(os.environ["DATABASE_URL"],
                                                     autocommit=True) as conn:
        await _keys_for(conn, [returning])
        with tempfile.TemporaryFile("w+") as trace:
            conn.pgconn.trace(trace.fileno())
            found = await _keys_for(conn, students)
            conn.pgconn.untrace()
            trace.seek(0)
            sent = [line.split("\t")[3].split()[0] for line in trace if "\tF\t" in line]
    assert sent.count("Sync") == 1 and sent.count("Execute") == 2, sent
    keys = [k for k in found if k is not None]
    assert len(keys) == 3 and keys[0].key_id == keys[2].key_id
    assert _stored(students[:2]) == {s: k.key_id for s, k in zip(students[:2], keys[:2],
                                                                  strict=True)}
