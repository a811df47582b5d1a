"""Faust's exactly_once, repaired where it leaks, and a fail-stop for what cannot be repaired.

In exactly_once Faust keeps one transactional producer per input partition
(transactional.id "<app id>-<topic group>-<partition>") and commits the consumed
offsets in that producer's transaction. A new owner of the partition initialises the
same transactional.id: the broker bumps the producer epoch, aborts the old owner's
open transaction and rejects everything the old owner sends afterwards. That is
what fences a worker that was paused past its session timeout.

Two leaks in faust-streaming 0.15 break the atomicity, and this module closes them:

* faust-streaming#177: `topic.send()` picks the transactional producer by the
  *destination* partition, looked up in the consumer's metadata. A topic the app
  only writes to (course-events, the DLQ) is not in that metadata, so the record
  silently goes out through the plain, non-transactional producer: a read_committed
  reader sees it even when the transaction that consumed its command aborts.
  `SourcePartitionTransactionManager.send` writes every record sent while
  processing an event in the transaction of that event's *source* partition.
* Table changes are buffered (`send_soon`) and the buffer's flush gives up after
  0.1 s without a delivery, and does not count the record it is handing over.
  The exactly_once commit does not even call it. A commit can therefore carry the
  offset of a command whose table change lands in the next transaction, or never.
  `DurableProducer.flush` waits for every buffered record handed in before it was
  called, and the commit calls it before sending the offsets.

Anything else that goes wrong while writing (a fenced producer, a failed delivery)
ends the process at once (`fail_stop`): nothing is committed, and a restart, or the
worker that took over, redoes the uncommitted work from the last commit, which is
the path the kill -9 tests prove.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
from collections.abc import Awaitable, Mapping, MutableMapping
from typing import NoReturn, cast

from confluent_kafka import Consumer as ConfluentConsumer
from confluent_kafka import TopicPartition as ConfluentTopicPartition
from faust.streams import current_event
from faust.transport.consumer import TransactionManager
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP, RecordMetadata
from faust.types.core import HeadersArg
from faust.types.tuples import FutureMessage

log = logging.getLogger(__name__)

FAIL_STOP_EXIT_CODE = 70
PENDING_TRANSACTIONS_TIMEOUT = 60.0


def fail_stop(reason: str, exc: BaseException | None = None) -> NoReturn:
    """Log and end the process now, without committing anything (same as kill -9)."""
    log.critical("fail-stop: %s", reason, exc_info=exc)
    for handler in logging.getLogger().handlers:
        handler.flush()
    sys.stderr.flush()
    os._exit(FAIL_STOP_EXIT_CODE)


class DurableProducer(faust_aiokafka.Producer):
    """A producer whose flush() really waits for the buffered table changes."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self._unsent: set[FutureMessage] = set()
        self._failure: BaseException | None = None

    def send_soon(self, fut: FutureMessage) -> None:
        self._unsent.add(fut)
        fut.add_done_callback(self._on_sent)
        super().send_soon(fut)

    def _on_sent(self, fut: asyncio.Future) -> None:
        self._unsent.discard(fut)  # type: ignore[arg-type]
        if not fut.cancelled() and fut.exception() is not None and self._failure is None:
            self._failure = fut.exception()

    async def flush(self) -> None:
        # Only what was handed in so far: later records belong to commands whose
        # offsets are not in the commit that is waiting for this flush.
        pending = list(self._unsent)
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
        if self._failure is not None:
            fail_stop("a table change could not be written", self._failure)
        await super().flush()


class SourcePartitionTransactionManager(TransactionManager):
    """Faust's transaction manager with the record routing and commit fixed (see above)."""

    def transactional_id(self, tp: TP) -> str:
        # The same format Faust uses for the producers it starts and commits.
        group = self.app.assignor.group_for_topic(tp.topic)
        return f"{self.app.conf.id}-{group}-{tp.partition}"

    async def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        partition: int | None,
        timestamp: float | None,
        headers: HeadersArg | None,
        *,
        transactional_id: str | None = None,
    ) -> Awaitable[RecordMetadata]:
        event = current_event()
        if event is None:
            # Table changes, sent from the producer buffer: Faust sends them to the
            # changelog partition equal to the source partition, which is right.
            return await super().send(topic, key, value, partition, timestamp, headers)
        return await self.producer.send(
            topic, key, value, partition, timestamp, headers,
            transactional_id=self.transactional_id(event.message.tp),
        )

    async def on_rebalance(
        self, assigned: set[TP], revoked: set[TP], newly_assigned: set[TP]
    ) -> None:
        # Faust stops the producers of revoked partitions only; a kept partition's
        # producer stays in its open transaction, which holds writes of commands
        # whose offsets are not committed. Restarting every producer makes the new
        # one's init abort that transaction, so a rebalance, like a crash, leaves
        # exactly the committed state, which the tables are then restored from.
        producers = cast(faust_aiokafka.Producer, self.producer)._transaction_producers
        await self._stop_transactions(sorted(producers))
        await super().on_rebalance(assigned, revoked, newly_assigned)

    async def commit(self, offsets: Mapping[TP, int], start_new_transaction: bool = True) -> bool:
        await self.producer.flush()
        by_transactional_id: MutableMapping[str, dict[TP, int]] = {}
        for tp, offset in offsets.items():
            by_transactional_id.setdefault(self.transactional_id(tp), {})[tp] = offset
        if not by_transactional_id:
            return True
        log.debug("commit %s", {tp.partition: o for tp, o in offsets.items()})
        try:
            await self.producer.commit_transactions(
                by_transactional_id, self.app.conf.id,
                start_new_transaction=start_new_transaction,
            )
        except Exception as exc:
            # Fenced (another worker owns the partition now) or the broker refused:
            # the transaction aborts, so this worker's uncommitted work never shows.
            fail_stop("transaction commit failed", exc)
        return True


class StableOffsetConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    async def _highwaters(self, partitions: list[TP]) -> Mapping[TP, int]:
        # Faust asks aiokafka for the last stable offset it saw in a fetch response,
        # which is None for a changelog partition this worker was just given: faust
        # takes None for an empty changelog and restores nothing (a course "not
        # found" right after a failover). A ListOffsets request made with
        # isolation.level=read_committed answers the last stable offset outright.
        #
        # The last stable offset stops short of a transaction whose commit markers
        # are still being written (EndTxn returns before the markers land), so a
        # restore cut there can hold one table's share of a command and miss
        # another's. The previous owner's transactions are settled by now (faust
        # initialised this worker's transactional producers, fencing it, before the
        # restore), so wait until nothing is pending: stable offset == high watermark.
        consumer = self._ensure_consumer()
        deadline = time.monotonic() + PENDING_TRANSACTIONS_TIMEOUT
        while True:
            stable = cast(Mapping[TP, int], await consumer.end_offsets(list(partitions)))
            watermarks = await asyncio.get_running_loop().run_in_executor(
                None, self._watermark_offsets, list(partitions))
            pending = [tp for tp in partitions if stable[tp] < watermarks[tp][1]]
            if not pending:
                lows = {tp: low for tp, (low, _) in watermarks.items()}
                return await asyncio.get_running_loop().run_in_executor(
                    None, self._after_last_records, dict(stable), lows)
            if time.monotonic() > deadline:
                fail_stop(f"transactions still pending on {pending} after "
                          f"{PENDING_TRANSACTIONS_TIMEOUT:.0f}s; cannot restore a consistent state")
            await asyncio.sleep(0.05)

    def _watermark_offsets(self, partitions: list[TP]) -> dict[TP, tuple[int, int]]:
        """(low, high) watermark of each partition, read_uncommitted, asked of the broker."""
        consumer = self._watermark_consumer()
        return {tp: cast(tuple[int, int], consumer.get_watermark_offsets(
                    ConfluentTopicPartition(tp.topic, tp.partition), timeout=10, cached=False))
                for tp in partitions}

    def _after_last_records(self, ends: dict[TP, int], lows: Mapping[TP, int]
                            ) -> dict[TP, int]:
        """Per partition, the offset after its last committed record, below `ends`.

        Faust waits until it has read the offset before the end it was given. In a
        transactional changelog that offset is a commit marker, which no consumer ever
        sees, so faust would only notice the end after two 5 s read timeouts (its
        aborted-transaction check): every restore, at every start and rebalance, took
        10 s longer than its data. This reads the tail of each partition, committed
        records only, to give faust the end of its data instead. With no committed
        record at all, the partition's first offset: there is nothing to restore.
        """
        result: dict[TP, int] = {}
        todo: dict[TP, int] = {}
        for tp, end in ends.items():
            (todo if end > 0 else result)[tp] = end
        window = 64
        deadline = time.monotonic() + PENDING_TRANSACTIONS_TIMEOUT
        while todo:
            starts = {tp: max(lows[tp], end - window) for tp, end in todo.items()}
            last = self._read_tails(starts, todo, deadline)
            for tp in list(todo):
                if tp in last:
                    result[tp] = last[tp] + 1
                elif starts[tp] <= lows[tp]:
                    result[tp] = lows[tp]
                else:
                    continue
                del todo[tp]
            window *= 8
        return result

    def _read_tails(self, starts: Mapping[TP, int], ends: Mapping[TP, int],
                    deadline: float) -> dict[TP, int]:
        """The offset of the last committed record of each partition in [start, end)."""
        if self._tails is None:
            self._tails = ConfluentConsumer({
                "bootstrap.servers": self._hosts(), "group.id": "course-processor-tails",
                "enable.auto.commit": False, "isolation.level": "read_committed",
                "enable.partition.eof": False,
            })
        tails = self._tails
        tps = [ConfluentTopicPartition(tp.topic, tp.partition, starts[tp]) for tp in starts]
        by_key = {(tp.topic, tp.partition): tp for tp in starts}
        tails.assign(tps)
        last: dict[TP, int] = {}
        try:
            while True:
                for msg in tails.consume(1000, 0.2):
                    topic, partition, offset = msg.topic(), msg.partition(), msg.offset()
                    if msg.error() is None and topic and partition is not None \
                            and offset is not None:
                        tp = by_key[(topic, partition)]
                        if offset < ends[tp]:
                            last[tp] = max(last.get(tp, -1), offset)
                positions = tails.position(tps)
                if all(pos.offset >= ends[by_key[(pos.topic, pos.partition)]]
                       for pos in positions):
                    return last
                if time.monotonic() > deadline:
                    fail_stop(f"could not read the changelog tails up to {dict(ends)}")
        finally:
            tails.unassign()

    def _hosts(self) -> str:
        return ",".join(f"{url.host}:{url.port or 9092}" for url in self.app.conf.broker)

    def _watermark_consumer(self) -> ConfluentConsumer:
        if self._watermarks is None:
            self._watermarks = ConfluentConsumer({
                "bootstrap.servers": self._hosts(), "group.id": "course-processor-watermarks",
                "enable.auto.commit": False, "isolation.level": "read_uncommitted",
            })
        return self._watermarks

    _watermarks: ConfluentConsumer | None = None
    _tails: ConfluentConsumer | None = None


class StableOffsetConsumer(faust_aiokafka.Consumer):
    def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
        return StableOffsetConsumerThread(self, loop=self.loop, beacon=self.beacon)


class FencedTransport(faust_aiokafka.Transport):
    Consumer = StableOffsetConsumer
    Producer = DurableProducer
    TransactionManager = SourcePartitionTransactionManager
