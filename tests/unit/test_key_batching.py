"""The key-store batcher (command_api/keybatch.py) over an in-memory bulk store: concurrent
lookups share round trips, a trickle is not delayed, failures and timeouts reach every
waiter as KeyStoreUnavailable."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from command_api.keybatch import BatchingKeyStore
from command_api.keys import DataKey, KeyStoreUnavailable


class HeldStore:
    """A bulk key store whose round trips wait until the test lets them go."""

    def __init__(self, timeout: float = 2.0) -> None:
        self.timeout = timeout
        self.keys: dict[str, DataKey] = {}
        self.calls: list[list[str]] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.fail: Exception | None = None
        self.forget: set[str] = set()  # students whose key "vanished" (erased meanwhile)

    async def start(self) -> None: ...
    async def stop(self) -> None: ...
    async def ready(self) -> bool:
        return True

    async def request_erasure(self, student: str) -> str:
        return "erasure"

    async def keys_for(self, students: Sequence[str]) -> dict[str, DataKey]:
        self.calls.append(list(students))
        await self.gate.wait()
        if self.fail is not None:
            raise self.fail
        for s in students:
            self.keys.setdefault(s, DataKey(f"id-{s}", s.encode().ljust(32, b"\0")))
        return {s: self.keys[s] for s in students if s not in self.forget}


async def test_a_lone_lookup_goes_out_at_once() -> None:
    store = HeldStore()
    keys = BatchingKeyStore(store)
    key = await asyncio.wait_for(keys.key_for("ann"), 0.5)
    assert key.key_id == "id-ann" and store.calls == [["ann"]]


async def test_concurrent_lookups_share_round_trips() -> None:
    store = HeldStore()
    keys = BatchingKeyStore(store, max_in_flight=1)
    store.gate.clear()
    first = asyncio.create_task(keys.key_for("s0"))
    await asyncio.sleep(0)  # the first batch is out and held
    rest = [asyncio.create_task(keys.key_for(f"s{i}")) for i in range(1, 100)]
    await asyncio.sleep(0)
    store.gate.set()
    found = await asyncio.gather(first, *rest)
    assert [k.key_id for k in found] == [f"id-s{i}" for i in range(100)]
    assert [len(c) for c in store.calls] == [1, 99]
    assert keys.batches == 2 and keys.served == 100


async def test_batches_are_bounded_and_in_flight_bounded() -> None:
    store = HeldStore()
    keys = BatchingKeyStore(store, max_batch=10, max_in_flight=2)
    store.gate.clear()
    tasks = [asyncio.create_task(keys.key_for(f"s{i}")) for i in range(35)]
    await asyncio.sleep(0.01)
    assert len(store.calls) == 2  # two out, the rest waiting for a free slot
    store.gate.set()
    await asyncio.gather(*tasks)
    assert sorted(s for c in store.calls for s in c) == sorted(f"s{i}" for i in range(35))
    assert all(len(c) <= 10 for c in store.calls)


async def test_one_student_twice_in_a_batch_is_asked_once_and_both_get_the_key() -> None:
    store = HeldStore()
    keys = BatchingKeyStore(store, max_in_flight=1)
    store.gate.clear()
    first = asyncio.create_task(keys.key_for("x"))
    await asyncio.sleep(0)
    a, b = asyncio.create_task(keys.key_for("bob")), asyncio.create_task(keys.key_for("bob"))
    await asyncio.sleep(0)
    store.gate.set()
    await first
    assert await a == await b
    assert store.calls[1] == ["bob"]


async def test_a_failed_round_trip_fails_every_waiter_with_key_store_unavailable() -> None:
    store = HeldStore()
    store.fail = OSError("connection reset")
    keys = BatchingKeyStore(store)
    results = await asyncio.gather(*(keys.key_for(f"s{i}") for i in range(5)),
                                   return_exceptions=True)
    assert all(isinstance(r, KeyStoreUnavailable) for r in results)
    store.fail = None
    assert (await keys.key_for("s0")).key_id == "id-s0"  # the next batch goes out again


async def test_a_key_store_that_does_not_answer_is_a_prompt_key_store_unavailable() -> None:
    store = HeldStore(timeout=0.05)
    store.gate.clear()
    keys = BatchingKeyStore(store)
    with pytest.raises(KeyStoreUnavailable):
        await asyncio.wait_for(keys.key_for("slow"), 1.0)
    store.gate.set()
    await asyncio.sleep(0.01)  # the late answer settles a future nobody awaits, quietly


async def test_a_key_erased_meanwhile_is_key_store_unavailable_for_that_student_only() -> None:
    store = HeldStore()
    store.forget = {"gone"}
    keys = BatchingKeyStore(store, max_in_flight=1)
    store.gate.clear()
    first = asyncio.create_task(keys.key_for("x"))
    await asyncio.sleep(0)
    gone, kept = asyncio.create_task(keys.key_for("gone")), asyncio.create_task(keys.key_for("k"))
    await asyncio.sleep(0)
    store.gate.set()
    await first
    with pytest.raises(KeyStoreUnavailable):
        await gone
    assert (await kept).key_id == "id-k"


async def test_every_answered_batch_is_reported_with_its_size() -> None:
    store = HeldStore()
    sizes: list[int] = []
    keys = BatchingKeyStore(store, max_in_flight=1, on_batch=sizes.append)
    store.gate.clear()
    first = asyncio.create_task(keys.key_for("a"))
    await asyncio.sleep(0)
    rest = [asyncio.create_task(keys.key_for(s)) for s in ("b", "c", "c")]
    await asyncio.sleep(0)
    store.gate.set()
    await asyncio.gather(first, *rest)
    assert sizes == [1, 2]  # students per round trip: "c" asked twice counts once
