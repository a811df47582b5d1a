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
import hmac
import logging
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal, Protocol, TypeVar

import psycopg
from psycopg_pool import AsyncConnectionPool, PoolTimeout

import migrations
from schemas.personal import KEY_IN_USE_LOCK, new_data_key

log = logging.getLogger("command_api.keys")
T = TypeVar("T")

# How often the erasure worker looks for pending erasures without being woken: it is
# woken by every POST /erasures of this process; this covers erasures left pending by
# a crash, and by another instance of the command API.
SWEEP_SECONDS = 2.0
ERASURES_PER_TRANSACTION = 100
VACUUM_TIMEOUT_SECONDS = 600.0
# How long an erasure waits for a notifier to finish a send to that student (the SMTP
# timeout is 15 s per step) before it leaves the erasure pending for the next round.
KEY_IN_USE_WAIT_SECONDS = 60.0


# A keyed sign-up request being produced holds its record this long; a retry meanwhile
# is answered 409. Longer than a produce may take (PRODUCE_TIMEOUT_SECONDS, 5 s).
LEASE_SECONDS = 30.0
# A record never marked produced may still have been produced, by a process that died
# between Kafka's acknowledgement and the mark. Within the processor's memory of
# decisions (7 days, course_processor/deciding/values.py) producing it again is harmless, as
# the processor recognises the repeat; after that a copy could be decided a second
# time, so past this age such a record is never produced again.
TAKEOVER_LIMIT = timedelta(days=6)

# What a keyed sign-up request may do: produce its command (claimed), answer with the
# sign-up produced before (produced), wait (in_flight), never be produced (in_doubt), or
# be refused as another body under the same key (mismatch).
Verdict = Literal["claimed", "produced", "in_flight", "in_doubt", "mismatch"]


@dataclass(frozen=True)
class SignupRequest:
    """A keyed sign-up request as recorded (table signup_requests)."""

    fingerprint: str
    created_at: datetime
    lease_until: datetime
    produced: bool


def verdict(found: SignupRequest, fingerprint: str, now: datetime) -> Verdict:
    """What a retry of a recorded request may do at `now` (the database's clock)."""
    if not hmac.compare_digest(found.fingerprint, fingerprint):
        return "mismatch"
    if found.produced:
        return "produced"
    if now < found.lease_until:
        return "in_flight"
    if now - found.created_at >= TAKEOVER_LIMIT:
        return "in_doubt"
    return "claimed"


class KeyStoreUnavailable(Exception):
    """PostgreSQL did not answer in time: the request is answered 503 with Retry-After."""


@dataclass(frozen=True)
class DataKey:
    key_id: str  # the student's key, in student_keys
    key: bytes
    # This sign-up's reference to the key (signup_keys): what its records carry in their
    # `key_id` field. A new one per sign-up, so the log does not link a student's
    # sign-ups to each other, and it points nowhere once the key is erased.
    ref: str


class KeyStore(Protocol):
    async def start(self) -> None: ...
    async def stop(self) -> None: ...
    async def ready(self) -> bool: ...
    async def key_for(self, student: str) -> DataKey: ...
    async def request_erasure(self, student: str) -> str: ...
    async def claim_signup(self, signup_id: str, key_id: str, fingerprint: str) -> Verdict: ...
    async def signup_produced(self, signup_id: str) -> None: ...
    async def release_signup(self, signup_id: str) -> None: ...


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
        """The student's data key, created on their first sign-up, with a new reference
        to it for one sign-up (committed when this returns)."""
        return await self._run(lambda conn: _key_for(conn, student))

    async def keys_for(self, students: Sequence[str]) -> list[DataKey | None]:
        """One key per entry of `students` (a student may come more than once), each with
        a reference of its own, those missing created, in one round trip and one commit:
        one INSERT of the new students' keys and one INSERT of every reference. None where
        the student's key was erased meanwhile."""
        return await self._run(lambda conn: _keys_for(conn, students))

    async def claim_signup(self, signup_id: str, key_id: str, fingerprint: str) -> Verdict:
        """Record a keyed sign-up request, or say what its earlier record allows."""
        return await self._run(lambda conn: _claim(conn, signup_id, key_id, fingerprint))

    async def signup_produced(self, signup_id: str) -> None:
        """Kafka holds the sign-up's command: no retry produces it again."""
        await self._run(lambda conn: conn.execute(
            "UPDATE signup_requests SET produced_at = now() WHERE signup_id = %s",
            (signup_id,)))

    async def release_signup(self, signup_id: str) -> None:
        """The produce failed (503): a retry may produce it at once, without waiting
        out the lease. (A produce that timed out may still have been written; the
        processor recognises the repeat, see TAKEOVER_LIMIT.)"""
        await self._run(lambda conn: conn.execute(
            "UPDATE signup_requests SET lease_until = now()"
            " WHERE signup_id = %s AND produced_at IS NULL", (signup_id,)))

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
            batch = await self._run(_erase_batch, timeout=KEY_IN_USE_WAIT_SECONDS + 10)
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


# The student's key and a new reference to it for one sign-up, in one statement (its
# own transaction). The reference's foreign key locks the key row (KEY SHARE): an
# erasure's DELETE either comes first (no row: the key is created again, for this new
# sign-up) or waits and deletes the reference with the key.
_REFERENCE_KEY = (
    "WITH found AS (SELECT key_id, key FROM student_keys WHERE student_hash = %(student)s),"
    " ref AS (INSERT INTO signup_keys (key_ref, key_id)"
    "  SELECT %(ref)s, key_id FROM found RETURNING key_ref)"
    " SELECT found.key_id, found.key, ref.key_ref FROM found, ref"
)
# One statement (autocommit: its own transaction) that takes the student's advisory
# lock before it inserts, and holds it until it commits: an erasure takes the same lock
# before its DELETE, so it sees this key or comes first.
_CREATE_KEY = (
    "INSERT INTO student_keys (key_id, student_hash, key)"
    " SELECT %s, %s, %s FROM (SELECT pg_advisory_xact_lock(hashtext(%s))) AS locked"
    " ON CONFLICT (student_hash) DO NOTHING"
)


def _reference_params(student: str) -> dict[str, str]:
    return {"student": student, "ref": str(uuid.uuid4())}


def _new_key_params(student: str) -> tuple[str, str, bytes, str]:
    return (str(uuid.uuid4()), student, new_data_key(), student)


def _data_key(row: tuple[Any, ...] | None) -> DataKey:
    if row is None:
        raise KeyStoreUnavailable("the student's key vanished (erased meanwhile); retry")
    return DataKey(str(row[0]), bytes(row[1]), str(row[2]))


async def _key_for(conn: psycopg.AsyncConnection, student: str) -> DataKey:
    found = await (await conn.execute(_REFERENCE_KEY, _reference_params(student))).fetchone()
    if found is None:
        # The student's first sign-up (or a concurrent one created it: a new statement
        # sees it).
        await conn.execute(_CREATE_KEY, _new_key_params(student))
        found = await (await conn.execute(_REFERENCE_KEY,
                                          _reference_params(student))).fetchone()
    return _data_key(found)


# _CREATE_KEY for many students in one statement, so one commit makes all of them durable
# (a group commit). Only students without a key take part: their advisory lock is taken
# before their row is inserted and held to the commit (the OFFSET 0 keeps the filter
# before the lock, so a returning student never waits for an erasure of theirs that is
# waiting for a notifier's send). The students come sorted, as the erasure worker takes
# its locks, so two such statements, or one and an erasure, wait for each other rather
# than deadlock.
_CREATE_KEYS = (
    "INSERT INTO student_keys (key_id, student_hash, key)"
    " SELECT k.key_id, k.student_hash, k.key"
    " FROM (SELECT * FROM unnest(%s::uuid[], %s::text[], %s::bytea[])"
    "  AS k(key_id, student_hash, key)"
    "  WHERE NOT EXISTS (SELECT 1 FROM student_keys s WHERE s.student_hash = k.student_hash)"
    "  OFFSET 0) AS k"
    " CROSS JOIN LATERAL (SELECT pg_advisory_xact_lock(hashtext(k.student_hash))) AS locked"
    " ON CONFLICT (student_hash) DO NOTHING"
)
_REFERENCE_KEYS = (
    "WITH r AS (SELECT r.ref, k.key_id, k.key"
    "  FROM unnest(%s::uuid[], %s::text[]) AS r(ref, student)"
    "  JOIN student_keys k ON k.student_hash = r.student),"
    " ins AS (INSERT INTO signup_keys (key_ref, key_id) SELECT ref, key_id FROM r"
    "  RETURNING key_ref)"
    " SELECT r.ref, r.key_id, r.key FROM r JOIN ins ON ins.key_ref = r.ref"
)


async def _keys_for(conn: psycopg.AsyncConnection,
                    students: Sequence[str]) -> list[DataKey | None]:
    # One round trip: both statements go out in a pipeline and run in the one implicit
    # transaction that ends at the pipeline's sync, so every key returned is committed
    # once the block exits. The second statement takes a new snapshot, so it sees the
    # keys the first created and any a concurrent batch committed (ON CONFLICT waited
    # for it).
    wanted = sorted(set(students))
    new = [(uuid.uuid4(), new_data_key()) for _ in wanted]
    # One reference per request, inserted only where the student's key is there now (a
    # concurrent erasure may have taken it: that request gets None, a 503, and retries).
    refs = [str(uuid.uuid4()) for _ in students]
    async with conn.pipeline():
        await conn.execute(_CREATE_KEYS, ([k for k, _ in new], wanted, [key for _, key in new]))
        found = await conn.execute(_REFERENCE_KEYS, (refs, list(students)))
    rows = await found.fetchall()
    by_ref = {str(r[0]): DataKey(str(r[1]), bytes(r[2]), str(r[0])) for r in rows}
    return [by_ref.get(ref) for ref in refs]


def key_for_sync(conn: psycopg.Connection, student: str) -> DataKey:
    """`key_for` on a blocking autocommit connection (the one-off reseal migration)."""
    found = conn.execute(_REFERENCE_KEY, _reference_params(student)).fetchone()
    if found is None:
        conn.execute(_CREATE_KEY, _new_key_params(student))
        found = conn.execute(_REFERENCE_KEY, _reference_params(student)).fetchone()
    return _data_key(found)


async def _claim(conn: psycopg.AsyncConnection, signup_id: str, key_id: str,
                 fingerprint: str) -> Verdict:
    lease = timedelta(seconds=LEASE_SECONDS)
    async with conn.transaction():
        # A concurrent first request with the same id waits here for the other's commit,
        # then finds its record below.
        inserted = await (await conn.execute(
            "INSERT INTO signup_requests (signup_id, key_id, fingerprint, lease_until)"
            " VALUES (%s, %s, %s, now() + %s) ON CONFLICT (signup_id) DO NOTHING RETURNING 1",
            (signup_id, key_id, fingerprint, lease))).fetchone()
        if inserted is not None:
            return "claimed"
        row = await (await conn.execute(
            "SELECT fingerprint, created_at, lease_until, produced_at IS NOT NULL, now()"
            " FROM signup_requests WHERE signup_id = %s FOR UPDATE", (signup_id,))).fetchone()
        if row is None:
            raise KeyStoreUnavailable("the sign-up's record vanished (erased meanwhile); retry")
        found = verdict(SignupRequest(str(row[0]), row[1], row[2], bool(row[3])),
                        fingerprint, row[4])
        if found == "claimed":  # the lease of an earlier attempt ran out: take it over
            await conn.execute(
                "UPDATE signup_requests SET lease_until = now() + %s WHERE signup_id = %s",
                (lease, signup_id))
        return found


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
        # A notifier holds a key in use (shared) from reading it until its e-mail is sent
        # or failed: wait for that, so `done` is reported only once no mail to the
        # student can still go out. Bounded: a send stalled longer leaves the erasure
        # pending, and the next round tries again.
        await conn.execute(f"SET LOCAL lock_timeout = '{int(KEY_IN_USE_WAIT_SECONDS)}s'")
        key_ids = await (await conn.execute(
            "SELECT key_id::text FROM student_keys WHERE student_hash = ANY(%s) ORDER BY 1",
            (students,))).fetchall()
        for (key_id,) in key_ids:
            await conn.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))",
                               (KEY_IN_USE_LOCK, key_id))
        # signup_requests and signup_keys rows go with their key (ON DELETE CASCADE).
        await conn.execute("DELETE FROM student_keys WHERE student_hash = ANY(%s)", (students,))
        await conn.execute(
            # clock_timestamp(): when the keys were deleted, after any wait for a send.
            "UPDATE erasures SET status = 'done', completed_at = clock_timestamp(),"
            " student_hash = NULL WHERE erasure_id = ANY(%s)", ([r[0] for r in rows],))
    return len(rows)
