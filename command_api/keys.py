"""The key store (PostgreSQL `student_keys`) and the erasure queue (`erasures`), async.

There is no cache of keys in any process: each sign-up reads its student's key (one
primary-key probe, shared with concurrent sign-ups by `command_api.keybatch`), so an
erasure takes effect everywhere the moment its transaction commits, and no process has
a copy to drop. (The benchmark in proof/bench_erasure.py measures what that costs.)

Creating a key and erasing one take the same transaction-scoped advisory lock of the
student, so an erasure never misses a key created concurrently: either the key is
committed before the erasure's DELETE looks, or it is created after the erasure is
done, for a sign-up that came after it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import psycopg
from psycopg_pool import AsyncConnectionPool, PoolTimeout

import migrations
from schemas.personal import new_data_key

log = logging.getLogger("command_api.keys")
T = TypeVar("T")

# How often the erasure worker looks for pending erasures without being woken: it is
# woken by every POST /erasures of this process; this covers erasures left pending by
# a crash, and by another instance of the command API.
SWEEP_SECONDS = 2.0
ERASURES_PER_TRANSACTION = 100
VACUUM_TIMEOUT_SECONDS = 600.0


class KeyStoreUnavailable(Exception):
    """PostgreSQL did not answer in time: the request is answered 503 with Retry-After."""


@dataclass(frozen=True)
class DataKey:
    key_id: str
    key: bytes


class KeyStore(Protocol):
    async def start(self) -> None: ...
    async def stop(self) -> None: ...
    async def ready(self) -> bool: ...
    async def key_for(self, student: str) -> DataKey: ...
    async def request_erasure(self, student: str) -> str: ...


class PostgresKeyStore:
    def __init__(self, conninfo: str, timeout: float, pool_size: int = 10,
                 sweep_seconds: float = SWEEP_SECONDS) -> None:
        self.conninfo = conninfo
        self.timeout = timeout
        self.sweep_seconds = sweep_seconds
        self.pool = AsyncConnectionPool(
            conninfo, min_size=1, max_size=pool_size, timeout=timeout, open=False,
            kwargs={"autocommit": True, "connect_timeout": max(1, int(timeout))},
            name="key-store",
        )
        self._wake = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.pool.open(wait=False)  # start even while PostgreSQL is away; /readyz says so
        self._worker = asyncio.create_task(self._erase_forever(), name="erasures")

    async def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
        await self.pool.close()

    async def ready(self) -> bool:
        try:
            await self._run(lambda conn: conn.execute("SELECT 1 FROM student_keys LIMIT 1"))
        except KeyStoreUnavailable:
            return False
        return True

    async def key_for(self, student: str) -> DataKey:
        """The student's data key, created on their first sign-up."""
        return await self._run(lambda conn: _key_for(conn, student))

    async def keys_for(self, students: Sequence[str]) -> dict[str, DataKey]:
        """The data keys of several students, those missing created, on one connection:
        one SELECT, and for new students one INSERT (one commit) for all of them."""
        return await self._run(lambda conn: _keys_for(conn, students))

    async def request_erasure(self, student: str) -> str:
        """Record a pending erasure (committed when this returns) and wake the worker."""
        erasure_id = str(uuid.uuid4())
        await self._run(lambda conn: conn.execute(
            "INSERT INTO erasures (erasure_id, student_hash, status) VALUES (%s, %s, 'pending')",
            (erasure_id, student)))
        self._wake.set()
        return erasure_id

    async def finish_pending(self) -> int:
        """Do every pending erasure; the number done."""
        done = 0
        while True:
            batch = await self._run(_erase_batch)
            done += batch
            if batch < ERASURES_PER_TRANSACTION:
                break
        if done:
            # The deleted rows stay visible in the table's pages to anyone reading the
            # data files until VACUUM reclaims them (and their bytes may linger in freed
            # space until overwritten; WAL and backups: README, "Personal data and
            # erasure"). Its own, longer timeout: it scans the whole table.
            await self._run(lambda conn: conn.execute("VACUUM student_keys"),
                            timeout=VACUUM_TIMEOUT_SECONDS)
            log.info("erasures done", extra={"erasures": done})
        return done

    async def _erase_forever(self) -> None:
        migrated = False
        while True:
            try:
                if not migrated:
                    # Like every service on PostgreSQL: whoever starts first creates the tables.
                    await asyncio.to_thread(migrations.apply, self.conninfo)
                    migrated = True
                await self.finish_pending()
            except KeyStoreUnavailable:
                pass  # pending stays pending (durably): the next round does it
            except psycopg.Error as exc:
                log.warning("erasure round failed", extra={"error": type(exc).__name__})
            except Exception:  # noqa: BLE001 - the worker must outlive any one round
                log.exception("erasure round failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.sweep_seconds)
            self._wake.clear()

    async def _run(self, query: Callable[[psycopg.AsyncConnection], Awaitable[T]],
                   timeout: float | None = None) -> T:
        try:
            async with asyncio.timeout(timeout or self.timeout), self.pool.connection() as conn:
                return await query(conn)
        # Any database error, not only a lost connection: before the migrations ran the
        # tables are missing, and the answer is the same "not now" (503), never a 500.
        except (psycopg.Error, PoolTimeout, TimeoutError) as exc:
            raise KeyStoreUnavailable(type(exc).__name__) from None


_SELECT_KEY = "SELECT key_id, key FROM student_keys WHERE student_hash = %s"
# One statement (autocommit: its own transaction) that takes the student's advisory
# lock before it inserts, and holds it until it commits: an erasure takes the same lock
# before its DELETE, so it sees this key or comes first.
_CREATE_KEY = (
    "INSERT INTO student_keys (key_id, student_hash, key)"
    " SELECT %s, %s, %s FROM (SELECT pg_advisory_xact_lock(hashtext(%s))) AS locked"
    " ON CONFLICT (student_hash) DO NOTHING RETURNING key_id, key"
)


def _new_key_params(student: str) -> tuple[str, str, bytes, str]:
    return (str(uuid.uuid4()), student, new_data_key(), student)


def _data_key(row: tuple[Any, ...] | None) -> DataKey:
    if row is None:
        raise KeyStoreUnavailable("the student's key vanished (erased meanwhile); retry")
    return DataKey(str(row[0]), bytes(row[1]))


async def _key_for(conn: psycopg.AsyncConnection, student: str) -> DataKey:
    found = await (await conn.execute(_SELECT_KEY, (student,))).fetchone()
    if found is None:
        found = await (await conn.execute(_CREATE_KEY, _new_key_params(student))).fetchone()
    if found is None:
        # A concurrent first sign-up of the same student inserted it; a new statement sees it.
        found = await (await conn.execute(_SELECT_KEY, (student,))).fetchone()
    return _data_key(found)


_SELECT_KEYS = "SELECT student_hash, key_id, key FROM student_keys WHERE student_hash = ANY(%s)"
# _CREATE_KEY for many students in one statement, so one commit makes all of them durable
# (a group commit). Each row's advisory lock is taken before that row is inserted and held
# to the commit; the students come sorted, as the erasure worker takes its locks, so two
# such statements, or one and an erasure, wait for each other rather than deadlock.
_CREATE_KEYS = (
    "INSERT INTO student_keys (key_id, student_hash, key)"
    " SELECT k.key_id, k.student_hash, k.key"
    " FROM unnest(%s::uuid[], %s::text[], %s::bytea[]) AS k(key_id, student_hash, key)"
    " CROSS JOIN LATERAL (SELECT pg_advisory_xact_lock(hashtext(k.student_hash))) AS locked"
    " ON CONFLICT (student_hash) DO NOTHING RETURNING student_hash, key_id, key"
)


async def _keys_for(conn: psycopg.AsyncConnection, students: Sequence[str]) -> dict[str, DataKey]:
    wanted = sorted(set(students))
    rows = await (await conn.execute(_SELECT_KEYS, (wanted,))).fetchall()
    found = {str(r[0]): DataKey(str(r[1]), bytes(r[2])) for r in rows}
    missing = [s for s in wanted if s not in found]
    if missing:
        new = [(uuid.uuid4(), new_data_key()) for _ in missing]
        rows = await (await conn.execute(_CREATE_KEYS, (
            [k for k, _ in new], missing, [key for _, key in new]))).fetchall()
        found.update((str(r[0]), DataKey(str(r[1]), bytes(r[2]))) for r in rows)
        raced = [s for s in missing if s not in found]
        if raced:
            # Concurrent first sign-ups of these students inserted them; a new statement
            # sees their keys.
            rows = await (await conn.execute(_SELECT_KEYS, (raced,))).fetchall()
            found.update((str(r[0]), DataKey(str(r[1]), bytes(r[2]))) for r in rows)
    return found


def key_for_sync(conn: psycopg.Connection, student: str) -> DataKey:
    """`key_for` on a blocking autocommit connection (the one-off reseal migration)."""
    found = conn.execute(_SELECT_KEY, (student,)).fetchone()
    if found is None:
        found = conn.execute(_CREATE_KEY, _new_key_params(student)).fetchone()
    if found is None:
        found = conn.execute(_SELECT_KEY, (student,)).fetchone()
    return _data_key(found)


async def _erase_batch(conn: psycopg.AsyncConnection) -> int:
    """Some pending erasures done in one transaction: the keys deleted and the erasures
    marked done together, so a crash leaves each erasure either pending (and the next
    round does it) or done with its key gone, never half done."""
    async with conn.transaction():
        rows = await (await conn.execute(
            "SELECT erasure_id, student_hash FROM erasures WHERE status = 'pending'"
            " ORDER BY requested_at LIMIT %s FOR UPDATE SKIP LOCKED",
            (ERASURES_PER_TRANSACTION,))).fetchall()
        if not rows:
            return 0
        students = sorted({str(r[1]) for r in rows})
        for student in students:
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (student,))
        await conn.execute("DELETE FROM student_keys WHERE student_hash = ANY(%s)", (students,))
        await conn.execute(
            "UPDATE erasures SET status = 'done', completed_at = now(), student_hash = NULL"
            " WHERE erasure_id = ANY(%s)", ([r[0] for r in rows],))
    return len(rows)
