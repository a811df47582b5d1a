"""Concurrent key lookups coalesced into one key-store round trip per batch.

Every sign-up needs its student's key (`command_api.keys`). One query per request costs
a pool connection and a round trip each, and a new student's key one commit each. This
layer, under the same `KeyStore` interface, gathers the lookups of concurrent requests:
while a batch is in flight the next one fills, so at a trickle a lookup goes out at once
(no added wait) and under load each round trip serves many requests: one multi-row
`INSERT ... ON CONFLICT` of the new students' keys and one `INSERT` of every request's
key reference, pipelined, whose single commit makes all of them durable.

What stays as it was: a request gets its key only after the key is committed (so no
command is produced sealed under a key PostgreSQL could lose), every new key is created
under its student's advisory lock (so an erasure never misses it), nothing is cached
beyond the batch in flight (an erasure takes effect for every lookup sent after its
commit), and a lookup that the key store does not answer within its timeout raises
`KeyStoreUnavailable` (a 503).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Protocol

from command_api.keys import DataKey, KeyStoreUnavailable, Verdict

MAX_BATCH = 256  # students per round trip
MAX_IN_FLIGHT = 2  # batches at once: one filling while the other is out


class BulkKeyStore(Protocol):
    timeout: float

    async def start(self) -> None: ...
    async def stop(self) -> None: ...
    async def ready(self) -> bool: ...
    async def keys_for(self, students: Sequence[str]) -> list[DataKey | None]: ...
    async def request_erasure(self, student: str) -> str: ...
    async def claim_signup(self, signup_id: str, key_id: str, fingerprint: str) -> Verdict: ...
    async def signup_produced(self, signup_id: str) -> None: ...
    async def release_signup(self, signup_id: str) -> None: ...


class BatchingKeyStore:
    """A `KeyStore` whose `key_for` calls share round trips (see the module's docstring)."""

    def __init__(self, store: BulkKeyStore, max_batch: int = MAX_BATCH,
                 max_in_flight: int = MAX_IN_FLIGHT,
                 on_batch: Callable[[int], None] | None = None) -> None:
        self.store = store
        self.on_batch = on_batch  # told the size of every batch the store answered
        self.max_batch = max_batch
        self.max_in_flight = max_in_flight
        self._waiting: dict[str, list[asyncio.Future[DataKey]]] = {}
        self._in_flight = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self.batches = 0  # round trips made, and students they served (for tests, metrics)
        self.served = 0

    async def start(self) -> None:
        await self.store.start()

    async def stop(self) -> None:
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.store.stop()

    async def ready(self) -> bool:
        return await self.store.ready()

    async def request_erasure(self, student: str) -> str:
        return await self.store.request_erasure(student)

    async def claim_signup(self, signup_id: str, key_id: str, fingerprint: str) -> Verdict:
        return await self.store.claim_signup(signup_id, key_id, fingerprint)

    async def signup_produced(self, signup_id: str) -> None:
        await self.store.signup_produced(signup_id)

    async def release_signup(self, signup_id: str) -> None:
        await self.store.release_signup(signup_id)

    async def key_for(self, student: str) -> DataKey:
        """The student's data key, created (and committed) on their first sign-up."""
        future: asyncio.Future[DataKey] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(student, []).append(future)
        self._dispatch()
        try:
            async with asyncio.timeout(self.store.timeout):
                # Shielded: the batch settles the future later whatever this request does.
                return await asyncio.shield(future)
        except TimeoutError:
            raise KeyStoreUnavailable("no key in time") from None
        finally:
            if not future.done():  # given up (timed out, or the client went away)
                future.add_done_callback(_retrieve)

    def _dispatch(self) -> None:
        while self._waiting and self._in_flight < self.max_in_flight:
            students = list(self._waiting)[: self.max_batch]
            batch = {s: self._waiting.pop(s) for s in students}
            self._in_flight += 1
            task = asyncio.get_running_loop().create_task(self._fetch(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _fetch(self, batch: dict[str, list[asyncio.Future[DataKey]]]) -> None:
        try:
            students = [s for s, futures in batch.items() for _ in futures]
            keys = iter(await self.store.keys_for(students))
        except Exception as exc:  # noqa: BLE001 - every waiter of the batch gets the failure
            failure = exc if isinstance(exc, KeyStoreUnavailable) else KeyStoreUnavailable(
                type(exc).__name__)
            for futures in batch.values():
                _settle(futures, exception=failure)
        else:
            self.batches += 1
            self.served += len(batch)
            if self.on_batch is not None:
                self.on_batch(len(batch))
            for futures in batch.values():
                for future in futures:  # each request has a key reference of its own
                    key = next(keys)
                    if key is None:
                        # Erased between the key's creation and the reference's INSERT:
                        # as in `keys._data_key`, the request is retried by the client.
                        _settle([future], exception=KeyStoreUnavailable(
                            "the student's key vanished (erased meanwhile); retry"))
                    else:
                        _settle([future], result=key)
        finally:
            self._in_flight -= 1
            self._dispatch()  # what gathered meanwhile goes out now


def _settle(futures: list[asyncio.Future[DataKey]], result: DataKey | None = None,
            exception: BaseException | None = None) -> None:
    for future in futures:
        if future.done():
            continue
        if exception is not None:
            future.set_exception(exception)
        else:
            assert result is not None
            future.set_result(result)


def _retrieve(future: asyncio.Future[DataKey]) -> None:
    # Nobody awaits it any more: take its exception, or asyncio logs it as never retrieved.
    if not future.cancelled():
        future.exception()
