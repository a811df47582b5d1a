"""When the processor commits (course_processor/faust_eos/pacing.py): pure timing rule."""

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
