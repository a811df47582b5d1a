"""One transaction's commit (course_processor/faust_eos/transactions.py, commit_in_order):
its records acknowledged, then its offsets, then EndTxn, never the offsets while a
record is still on its way (Kafka's transaction verification refuses such a produce,
and every refusal costs the commit a retry)."""

import asyncio
from typing import Any, cast

import pytest
from faust.types import TP

from course_processor.faust_eos.transactions import commit_in_order

COMMANDS = TP("course-commands", 3)


class Producer:
    """Records the transactional calls in the order they are made."""

    def __init__(self, calls: list[str]) -> None:
        self.calls = calls

    async def send_offsets_to_transaction(self, offsets: Any, group_id: str) -> None:
        self.calls.append(f"offsets {group_id} {[(tp.partition, o) for tp, o in offsets.items()]}")
        await asyncio.sleep(0)

    async def commit_transaction(self) -> None:
        self.calls.append("end")
        await asyncio.sleep(0)


async def test_the_offsets_wait_for_the_records_and_end_comes_last() -> None:
    calls: list[str] = []
    acked = asyncio.get_running_loop().create_future()

    async def delivered() -> None:
        await acked
        calls.append("acknowledged")

    commit = asyncio.ensure_future(
        commit_in_order(cast(Any, Producer(calls)), {COMMANDS: 5}, "app", delivered()))
    for _ in range(20):  # every step the commit could take without the acknowledgement
        await asyncio.sleep(0)
    assert calls == []
    assert not commit.done()
    acked.set_result(None)
    await asyncio.wait_for(commit, 1)
    assert calls == ["acknowledged", "offsets app [(3, 5)]", "end"]


async def test_nothing_to_deliver_goes_straight_to_the_offsets() -> None:
    calls: list[str] = []
    await commit_in_order(cast(Any, Producer(calls)), {COMMANDS: 1}, "app", None)
    assert calls == ["offsets app [(3, 1)]", "end"]


async def test_a_failed_delivery_commits_nothing() -> None:
    calls: list[str] = []

    async def delivered() -> None:
        raise RuntimeError("refused")

    with pytest.raises(RuntimeError, match="refused"):
        await commit_in_order(cast(Any, Producer(calls)), {COMMANDS: 1}, "app", delivered())
    assert calls == []
