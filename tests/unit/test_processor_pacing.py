"""When the processor commits (course_processor/faust_eos/pacing.py): pure timing rule."""

import asyncio
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from course_processor.faust_eos.pacing import due

FLOOR, INTERVAL = 0.01, 0.1


def test_a_caught_up_worker_commits_after_the_floor_not_the_interval() -> None:
    assert due(0.012, 0.0, floor=FLOOR, interval=INTERVAL, drained=True, pending=True)
    assert not due(0.005, 0.0, floor=FLOOR, interval=INTERVAL, drained=True, pending=True)


def test_a_busy_worker_waits_for_the_interval() -> None:
    assert not due(0.05, 0.0, floor=FLOOR, interval=INTERVAL, drained=False, pending=True)
    assert due(0.1, 0.0, floor=FLOOR, interval=INTERVAL, drained=False, pending=True)


def test_an_idle_worker_does_not_commit_early() -> None:
    # Nothing acked since the last commit: only the interval's (empty, so skipped by
    # faust) commit, never a loop of early ones.
    assert not due(0.05, 0.0, floor=FLOOR, interval=INTERVAL, drained=True, pending=False)


@given(st.floats(0, 1), st.booleans(), st.booleans())
def test_never_before_the_floor_never_after_the_interval(waited: float, drained: bool,
                                                         pending: bool) -> None:
    now = 10.0 + waited
    decision = due(now, 10.0, floor=FLOOR, interval=INTERVAL, drained=drained, pending=pending)
    if now - 10.0 < FLOOR:
        assert not decision
    if now - 10.0 >= INTERVAL:
        assert decision


async def test_a_partition_is_caught_up_once_its_position_reaches_the_stable_end() -> None:
    # aiokafka's own partition state, as the consumer thread keeps it.
    from aiokafka.consumer.subscription_state import TopicPartitionState

    from course_processor.faust_eos.pacing import _fetched_all

    state = TopicPartitionState(assignment=None)
    assert not _fetched_all(state)  # no position yet: not known to be caught up
    state.seek(10)
    assert _fetched_all(state)  # nothing fetched yet: nothing known to wait for
    state.highwater, state.lso = 14, 12
    assert not _fetched_all(state)  # records up to the stable end not handed out
    state.seek(12)
    assert _fetched_all(state)  # the rest is in an open transaction: not readable yet
    state.lso = -1  # read_uncommitted: aiokafka reports -1, the high watermark counts
    assert not _fetched_all(state)
    state.seek(14)
    assert _fetched_all(state)


async def test_the_decisions_made_during_a_commit_are_committed_as_soon_as_it_ends() -> None:
    # A commit takes longer than the floor and decisions keep coming while it runs: the
    # next commit starts when it ends, not a poll (floor / 2) later.
    import asyncio
    from time import monotonic

    from course_processor.faust_eos.pacing import paced_commits

    floor, took = 0.1, 0.15
    spans: list[tuple[float, float]] = []

    async def commit() -> None:
        began = monotonic()
        await asyncio.sleep(took)
        spans.append((began, monotonic()))

    await paced_commits(commit, floor=floor, interval=1.0, drained=lambda: True,
                        pending=lambda: True, begin=lambda: None,
                        stopped=lambda: len(spans) >= 3)
    gaps = [began - ended for (_, ended), (began, _) in zip(spans, spans[1:], strict=False)]
    assert max(gaps) < floor / 4, gaps  # the poll is floor / 2


def test_a_drain_s_backlog_in_faust_s_hands_is_not_caught_up() -> None:
    # faust gives a fetch's records to the stream one at a time and tracks each only from
    # then: between two decisions of a drain nothing is unacked and aiokafka's position
    # may be at the end, while thousands of fetched commands wait in faust's hands.
    from course_processor.faust_eos.pacing import UNDELIVERED_SLACK, undelivered

    handed = {"p0": 7_499, "p1": 7_500}
    assert undelivered(handed, {"p0": 120, "p1": 7_500}, ["p0", "p1"]) == 7_379
    assert undelivered(handed, {"p0": 120, "p1": 7_500}, ["p0", "p1"]) > UNDELIVERED_SLACK


def test_live_input_s_last_few_records_do_not_hold_the_commit_back() -> None:
    # At 388 commands/s a fetch brings a few records: the worker commits between them, as
    # before, rather than waiting for a moment when all are given out.
    from course_processor.faust_eos.pacing import UNDELIVERED_SLACK, undelivered

    handed = {"p0": 52, "p1": 40, "p2": 9}
    read = {"p0": 50, "p1": 40, "p2": 8}
    assert undelivered(handed, read, ["p0", "p1", "p2"]) == 3 <= UNDELIVERED_SLACK


def test_what_faust_got_before_an_assignment_counts_only_once_it_reads_again() -> None:
    # A revoked partition loses its read offset; what was got for it before is not this
    # worker's to give, and a partition no longer active is not asked about at all.
    from course_processor.faust_eos.pacing import undelivered

    handed = {"p0": 1_000, "p1": 500}
    assert undelivered(handed, {}, ["p0", "p1"]) == 0
    assert undelivered(handed, {"p0": 10, "p1": 20}, ["p1"]) == 480
    assert undelivered({}, {"p0": 10}, ["p0"]) == 0


@given(st.dictionaries(st.sampled_from("abcd"), st.integers(0, 10_000)),
       st.dictionaries(st.sampled_from("abcd"), st.integers(0, 10_000)))
def test_undelivered_counts_the_gap_between_got_and_given(handed: dict[str, int],
                                                         read: dict[str, int]) -> None:
    from course_processor.faust_eos.pacing import undelivered

    expected = sum(max(0, handed[tp] - read[tp]) for tp in handed if tp in read)
    assert undelivered(handed, read, "abcd") == expected


async def test_a_worker_is_not_caught_up_while_faust_holds_records_it_fetched() -> None:
    # caught_up reads the consumer's own bookkeeping: here a drain's moment between two
    # decisions, every position at the stable end and nothing unacked.
    from types import SimpleNamespace

    from aiokafka.consumer.subscription_state import TopicPartitionState

    from course_processor.faust_eos.pacing import UNDELIVERED_SLACK, caught_up

    tps = ["p0", "p1"]
    states = {tp: TopicPartitionState(assignment=None) for tp in tps}
    for state in states.values():
        state.seek(7_500)
        state.highwater = state.lso = 7_500
    assignment = SimpleNamespace(state_value=states.get)
    kafka = SimpleNamespace(_subscription=SimpleNamespace(
        subscription=SimpleNamespace(assignment=assignment)))
    stream_queue: asyncio.Queue[int] = asyncio.Queue()
    consumer: Any = SimpleNamespace(
        _unacked_messages=set(), _thread=SimpleNamespace(_consumer=kafka),
        _active_partitions=set(tps), handed={"p0": 7_499, "p1": 7_499},
        _read_offset={"p0": 120, "p1": 7_499},
        app=SimpleNamespace(topics=[SimpleNamespace(queue=stream_queue)]))
    assert not caught_up(consumer)
    consumer._read_offset["p0"] = 7_490  # the last few: live input's
    assert caught_up(consumer)
    consumer._unacked_messages = {object()}
    assert not caught_up(consumer)
    consumer._unacked_messages = set()
    # Handed to the stream (the read offsets at the end) but waiting in its queue: the
    # fetcher hands up to a hundred records at a time (delivery.py).
    consumer._read_offset = {"p0": 7_499, "p1": 7_499}
    for n in range(100):
        stream_queue.put_nowait(n)
    assert not caught_up(consumer)
    while stream_queue.qsize() > UNDELIVERED_SLACK:
        stream_queue.get_nowait()
    assert caught_up(consumer)
