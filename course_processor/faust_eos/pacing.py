"""When the processor commits: as soon as it has caught up, at most every commit interval.

A decision is invisible to read_committed readers until the transaction that carries it
commits. faust commits on a fixed timer (broker_commit_interval), so a decision waited
half an interval on average for the next commit, and a whole one at worst, even on an
idle worker. PacedConsumer commits instead as soon as everything fetched has been
decided, or all but a few records (`caught_up`), and at least `floor` has passed
since the last commit began; the interval stays the longest a decision waits while the
worker keeps finding input. So the transactions are small when the worker is idle
(latency) and grow under load (throughput): a commit takes what was decided while the
one before it ran. A worker with nothing new commits nothing (faust commits only
offsets past the committed ones), so an idle worker does not loop on empty transactions.

Only the moment changes: what a commit carries, and that it carries all of a command or
none of it, is transactions.py's, and holds for a commit at any moment.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Mapping
from time import monotonic
from typing import Any

from aiokafka.consumer.fetcher import OffsetResetStrategy
from faust.transport.drivers import aiokafka as faust_aiokafka
from mode import Service

from course_processor.faust_eos.delivery import InlineFirst

# The most commands faust may still hold from its last fetch, not yet given to the stream,
# for the worker to count as caught up. faust gives a fetch's records to the stream one
# at a time, yielding to the event loop between two (Consumer._drain_messages), and
# tracks a message as unacked only from the stream taking it. So between any two
# decisions nothing is unacked, and once aiokafka's position reached the end the rest of
# the backlog waits in faust's hands, unseen. A drain committed at such pauses: 500-900
# commits of 30,100 commands instead of the interval's 100-160, 12-30% more CPU per
# command. Live input arrives a few records a fetch, which stay under this.
UNDELIVERED_SLACK = 16


def caught_up(consumer: PacedConsumer) -> bool:
    """Every record fetched so far is decided, or nearly, and the last fetch found nothing
    more: none unacked in a stream (faust tracks a message from the stream taking it to
    its ack), at most UNDELIVERED_SLACK of faust's last fetch not yet given to the stream
    or waiting in its queue,
    and in every partition faust reads (course-commands'; the changelogs are assigned
    too, but only read on restore) aiokafka has handed out everything up to the last
    stable offset its last fetch saw (its position is there). Read from the worker's
    thread while the consumer's thread updates it: a stale answer only moves a commit,
    never changes what it carries."""
    if consumer._unacked_messages:  # noqa: SLF001
        return False
    kafka = consumer._thread._consumer  # noqa: SLF001
    subscription = None if kafka is None else kafka._subscription.subscription  # noqa: SLF001
    assignment = None if subscription is None else subscription.assignment
    active = consumer._active_partitions  # noqa: SLF001
    if assignment is None or not active:
        return False
    left = undelivered(consumer.handed, consumer._read_offset, active)  # noqa: SLF001
    if left + queued(consumer.app.topics) > UNDELIVERED_SLACK:
        return False
    return all(_fetched_all(assignment.state_value(tp)) for tp in active)


def undelivered(handed: Mapping[Any, int], read: Mapping[Any, int | None],
                partitions: Iterable[Any]) -> int:
    """How many records faust got from aiokafka (up to `handed`, the last offset per
    partition) and has not given to a stream yet (faust's read offset, the last one it
    gave, or the seek position after an assignment). A partition faust has not read since
    its assignment (no read offset) counts none: what it got before is not its to give."""
    left = 0
    for tp in partitions:
        last, given = handed.get(tp), read.get(tp)
        if last is not None and given is not None and given < last:
            left += last - given
    return left


def queued(channels: Iterable[Any]) -> int:
    """How many events wait in the streams' queues (faust's channels, the conductor's
    set): given to a stream, not taken by it yet, so neither unacked nor undelivered.
    The fetcher hands a fetch's records to them inline (delivery.py), up to a hundred
    before it yields to the agent."""
    return sum(channel.queue.qsize() for channel in channels)


def _fetched_all(state: Any) -> bool:
    if state is None or not state.has_valid_position:
        return False
    # The last stable offset under read_committed, the high watermark otherwise; None
    # before the partition's first fetch answered (nothing known to wait for).
    end = state.lso if state.lso is not None and state.lso >= 0 else state.highwater
    return end is None or state.position >= end


def due(now: float, last: float, *, floor: float, interval: float, drained: bool,
        pending: bool) -> bool:
    """Whether to commit now, the last commit having begun at `last`."""
    waited = now - last
    return waited >= interval or (pending and drained and waited >= floor)


class ShortPollThread(faust_aiokafka.AIOKafkaConsumerThread):
    """faust's consumer thread with a short fetch wait, and a seek to the committed
    offsets that leaves no command partition where a dropped fetch put it.

    aiokafka keeps one fetch request in flight per broker, and a partition with
    fetched records still to hand out is left out of the next request. When those are
    handed out, the partition waits for the request in flight to come back, which the
    broker holds for fetch_max_wait_ms when its partitions get nothing new: faust sets
    1.5 s, and at 100 commands/s a command reached the agent 0.6 s after it was written
    (1.5 s at p90). A short wait bounds that; the worker pays with an empty fetch per
    wait whenever the fetch in flight holds only partitions with nothing new. The
    figures that follow were measured while faust's leader topic and the changelogs,
    assigned but never read while deciding, were in every fetch; they are paused now
    (recovery.py), and the default wait is PROCESSOR_FETCH_MAX_WAIT's (settings.py).
    Measured then at 100 commands/s, produce to visible p50/p99: 69-84/282-310 ms at
    10 ms, 127/446 ms at 20 ms, 249-346/1230-1466 ms at 50 ms; a drain's CPU per
    command at 10 ms was 5% above the code before pacing in one run and 55% in a
    noisier one (the machine shared, load average 5 to 9).
    """

    async def seek_to_committed(self) -> Mapping[Any, int]:
        """faust's seek to the committed offsets (Consumer.perform_seek), moving the
        command partitions committed at 0 or never too (seek_to_committed below)."""
        app: Any = self.app
        return await self.call_thread(seek_to_committed, self._ensure_consumer(),
                                      app.runtime.config.commands_topic)

    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        wait = getattr(self.app, "fetch_wait", None)
        if wait is not None:
            # Read by start(), which builds the fetcher; the constructor only stores it.
            consumer._fetch_max_wait_ms = max(1, int(wait * 1000))  # noqa: SLF001
        return consumer


async def seek_to_committed(kafka: Any, topic: str) -> Mapping[Any, int | None]:
    """Seek every assigned partition to its committed offset, as aiokafka's
    seek_to_committed does, and also the partitions of `topic` that aiokafka leaves
    where they are: those committed at offset 0 and those with no committed offset,
    which go where the reset policy puts a partition without one (aiokafka seeks only
    to an offset above 0). The committed offsets, None where there is none.

    faust relies on this seek to undo a fetch it threw away: records fetched while a
    rebalance stopped the flow are dropped unread (Consumer.getmany), and the seek at
    the end of recovery is what makes them be fetched again. Left where the dropped
    fetch moved it, a partition that had no commit past 0 was read from after those
    records, the next commit covered them, and their commands were never decided: a
    worker that took over a partition right after a kill lost a few hundred sign-ups
    that way (test_two_workers_one_killed, under load)."""
    committed: Mapping[Any, int | None] = await kafka.seek_to_committed()
    for tp, offset in committed.items():
        if tp.topic == topic and offset == 0:
            kafka.seek(tp, 0)
    unset = [tp for tp, offset in committed.items() if tp.topic == topic and offset is None]
    if unset:
        await reset_to_policy(kafka, unset)
    return committed


async def reset_to_policy(kafka: Any, partitions: list[Any]) -> None:
    """Put `partitions`, which have no committed offset, where the consumer's
    auto_offset_reset puts such a partition (the processor's is "earliest"); with
    "none" there is no such place, and they stay."""
    strategy = kafka._fetcher._default_reset_strategy  # noqa: SLF001
    if strategy == OffsetResetStrategy.EARLIEST:
        await kafka.seek_to_beginning(*partitions)
    elif strategy == OffsetResetStrategy.LATEST:
        await kafka.seek_to_end(*partitions)


class UnreadPausedAtAssignment(faust_aiokafka.ConsumerRebalanceListener):
    """faust's rebalance listener, pausing in aiokafka, the moment they are assigned and
    before the fetcher can see them, the partitions the worker never reads from its
    consumer: the changelogs (restored from the worker's own consumer, recovery.py)
    and faust's leader topic. recovery.py pauses them again once recovery completes,
    as before; this only closes the window in between. In it, aiokafka had no
    committed offset for a changelog partition, so it fetched every changelog from its
    first record, all through the restore, and held up to a fetch's worth of records
    of each of them: a burst of 100-150 MB of RSS at 1 M sign-ups of history that
    grew with the history, next to the restore's own CPU."""

    def on_partitions_assigned(self, assigned: Any) -> Any:
        app: Any = self._thread.app
        kafka = self._thread._consumer  # noqa: SLF001 - the aiokafka consumer
        commands = app.runtime.config.commands_topic
        unread = [tp for tp in assigned if tp.topic != commands]
        if kafka is not None and unread:
            kafka.pause(*unread)  # synchronously: no fetch is built in between
        return super().on_partitions_assigned(assigned)


class PacedConsumer(InlineFirst, faust_aiokafka.Consumer):
    """faust's aiokafka consumer, committing when caught up (see the module doc), with
    a short fetch wait (ShortPollThread), the partitions it never reads paused from
    their assignment (UnreadPausedAtAssignment), and each fetched record handed to the
    stream inline (InlineFirst)."""

    RebalanceListener = UnreadPausedAtAssignment

    def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
        return ShortPollThread(self, loop=self.loop, beacon=self.beacon)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # The least time between the starts of two commits (the most is commit_interval).
        self.commit_floor = min(self.commit_interval,
                                getattr(self.app, "commit_floor", self.commit_interval))
        self._acked_at_commit = 0
        # The last offset of each partition faust got from aiokafka (see caught_up).
        self.handed: dict[Any, int] = {}

    async def _getmany(self, active_partitions: Any, timeout: float) -> Any:
        records = await super()._getmany(active_partitions, timeout)
        for tp, batch in records.items():
            if batch:
                self.handed[tp] = batch[-1].offset
        return records

    def pending(self) -> bool:
        """A record was acked since the last commit began."""
        # faust counts every ack in _n_acked and resets it only for broker_commit_every,
        # which the processor does not set.
        return self._n_acked != self._acked_at_commit

    @Service.task
    async def _commit_handler(self) -> None:
        await self.sleep(self.commit_interval)

        def begin() -> None:
            self._acked_at_commit = self._n_acked

        await paced_commits(self.commit, floor=self.commit_floor,
                            interval=self.commit_interval,
                            drained=lambda: caught_up(self), pending=self.pending,
                            begin=begin, stopped=lambda: self.should_stop)


async def paced_commits(commit: Callable[[], Awaitable[object]], *, floor: float,
                        interval: float, drained: Callable[[], bool],
                        pending: Callable[[], bool], begin: Callable[[], None],
                        stopped: Callable[[], bool]) -> None:
    """Commit whenever `due`, until stopped; `begin` marks what a commit starting now
    carries (the acks so far).

    Polled, not woken per record: a check costs microseconds, a wake-up per acked
    record would cost every decision. Right after a commit it checks again at once,
    not after a poll: the decisions made while it ran (at 388 commands/s most
    decisions are made while a commit runs) are due as soon as it ends, and a poll's
    sleep there (5 ms at the default floor) was added to every one of them."""
    last = monotonic()
    poll = max(floor / 2, 0.001)
    committed = False
    while not stopped():
        if not committed:
            await asyncio.sleep(poll)
        committed = False
        now = monotonic()
        if due(now, last, floor=floor, interval=interval, drained=drained(),
               pending=pending()):
            last = now
            begin()
            await commit()
            committed = True
