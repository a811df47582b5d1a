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

A commit's round trips, one after the other, are what a decision waits for before a
read_committed reader sees it. One of them is taken off that path: the partitions the
last commit wrote to are added to the transaction (AddPartitionsToTxn) as soon as a
decision stages records for it (`DurableProducer.prepare`). The offsets go to the
transaction (AddOffsetsToTxn, TxnOffsetCommit) only once its records are acknowledged
(`commit_in_order`): sent side by side, Kafka's transaction verification refused a
produce as NotEnoughReplicas whenever it met the coordinator writing AddOffsetsToTxn,
and each refusal cost a retry. What a commit carries is unchanged.

The local state (state/local.py) follows the transactions: the offset of every changelog
record delivered is noted, a commit moves the committed partitions' staged writes to
disk with those offsets, and a rebalance, which aborts every open transaction, drops
what they staged.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Mapping, MutableMapping
from typing import Any, cast

from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.producer.message_accumulator import BatchBuilder
from faust.streams import current_event
from faust.transport.consumer import TransactionManager
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP, AppT, RecordMetadata
from faust.types.core import HeadersArg
from faust.types.transports import ConsumerT, ProducerT, TransactionManagerT
from faust.types.tuples import FutureMessage
from yarl import URL

from course_processor.faust_eos.failstop import fail_stop
from course_processor.faust_eos.pacing import PacedConsumer
from course_processor.state.runtime import StateRuntime

log = logging.getLogger(__name__)
# key, value, headers, timestamp in epoch milliseconds (None: now) of a record in a batch.
Record = tuple[bytes | None, bytes | None, list[tuple[str, bytes]], int | None]
# How long the producers wait before retrying a refused request (aiokafka: 100 ms).
RETRY_BACKOFF_MS = 20
# Keys whose partition is remembered (course ids, mostly); past it the memory starts anew.
PARTITION_CACHE = 100_000


class DurableProducer(faust_aiokafka.Producer):
    """A producer whose flush() really waits for the buffered table changes."""

    def __init__(self, transport: Any, *, runtime: StateRuntime, **kwargs: Any) -> None:
        self.runtime = runtime
        super().__init__(transport, **kwargs)

    def __post_init__(self) -> None:
        super().__post_init__()
        self._unsent: set[FutureMessage] = set()
        self._failure: BaseException | None = None
        # Numbers the records handed in, so a commit knows which ones it carries.
        self.sequence = 0
        # Per transactional id: the partitions its last commit wrote to, and whether its
        # open transaction has them already (prepare), or should once its commit ends.
        self._destinations: dict[str, set[TopicPartition]] = {}
        self._ahead: set[str] = set()
        self._wanted: set[str] = set()

    def send_soon(self, fut: FutureMessage) -> None:
        self.sequence += 1
        self._unsent.add(fut)
        fut.add_done_callback(functools.partial(self._on_sent, self.sequence))
        super().send_soon(fut)

    def _on_sent(self, sequence: int, fut: asyncio.Future) -> None:
        self._unsent.discard(fut)  # type: ignore[arg-type]
        if fut.cancelled():
            return
        if fut.exception() is not None:
            if self._failure is None:
                self._failure = fut.exception()
            return
        # Only table changes go through send_soon: note where each landed, so the
        # commit stores the offset with the data (state/local.py).
        metadata = cast(RecordMetadata, fut.result())
        table = self.runtime.table_of(metadata.topic)
        if table is not None:
            self.runtime.local.written(table, metadata.partition, metadata.offset, sequence)

    async def flush(self) -> None:
        await self.flush_handed_in()
        await super().flush()

    async def flush_handed_in(self) -> None:
        """Wait for the records handed to send_soon so far (table changes faust's own
        table methods write), and fail-stop if one of them failed."""
        # Only what was handed in so far: later records belong to commands whose
        # offsets are not in the commit that is waiting for this flush.
        pending = list(self._unsent)
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
        if self._failure is not None:
            fail_stop("a table change could not be written", self._failure)

    def prepare(self, transactional_id: str) -> None:
        """The open transaction of `transactional_id` is going to carry records: add the
        partitions its last commit wrote to (AddPartitionsToTxn) now, while the worker
        goes on deciding, instead of as the first round trip of the commit. Only then:
        a transaction with partitions open on the broker that nobody commits would be
        aborted by the broker's transaction timeout, fencing the worker. A partition
        added that gets no record in the end only gets the commit's marker."""
        if transactional_id in self._ahead:
            return
        lock = self._trn_locks.get(transactional_id)
        if lock is not None and lock.locked():
            # Its commit is under way: the records staged now are the next one's.
            self._wanted.add(transactional_id)
            return
        self._add_ahead(transactional_id)

    def _add_ahead(self, transactional_id: str) -> None:
        producer = self._transaction_producers.get(transactional_id)
        txn = None if producer is None else producer._txn_manager  # noqa: SLF001
        if txn is None or not txn.is_in_transaction():
            return
        self._ahead.add(transactional_id)
        for tp in self._destinations.get(transactional_id, ()):
            txn.maybe_add_partition_to_txn(tp)

    def wrote_to(self, transactional_id: str, partitions: set[TopicPartition]) -> None:
        """The partitions a commit of `transactional_id` writes to (for prepare)."""
        if partitions:
            self._destinations[transactional_id] = partitions

    def forget_prepared(self) -> None:
        """Every transaction is aborted (a rebalance): nothing is added ahead any more."""
        self._ahead.clear()
        self._wanted.clear()

    def _settings_extra(self) -> Mapping[str, Any]:
        # A produce that Kafka refuses as retriable (NotEnoughReplicas, which is how
        # transaction verification answers a client as old as aiokafka's protocol while
        # the coordinator is writing a change of the same transaction) is retried after
        # retry_backoff_ms, 100 ms by default, which every decision of that commit
        # waited. commit_in_order avoids the usual cause; this bounds the rest.
        return {**super()._settings_extra(), "retry_backoff_ms": RETRY_BACKOFF_MS}

    def transaction_producer(self, transactional_id: str) -> AIOKafkaProducer:
        producer = self._transaction_producers.get(transactional_id)
        if producer is None:
            raise RuntimeError(f"no transactional producer {transactional_id}")
        return producer

    async def commit_transactions(
        self,
        tid_to_offset_map: Mapping[str, Mapping[TP, int]],
        group_id: str,
        start_new_transaction: bool = True,
        delivered: Mapping[str, Awaitable[None]] | None = None,
    ) -> None:
        """faust's commit_transactions, with the partitions' transactions committed side
        by side instead of one after the other.

        Each transactional producer commits its own transaction (AddOffsetsToTxn,
        TxnOffsetCommit, EndTxn: three round trips, each waiting for the one before);
        the transactions are independent, so with four partitions faust's loop made a
        commit four times as long as one. `delivered[tid]`, if given, is done when the
        records the commit handed to that producer are acknowledged; the offsets go to
        the transaction after that (commit_in_order). They all must commit before the
        staged writes go to disk (finish_commit, after this returns); a failure of any
        of them fail-stops the worker (SourcePartitionTransactionManager.commit).
        """
        await asyncio.gather(*(
            self._commit_one(tid, offsets, group_id, start_new_transaction,
                             None if delivered is None else delivered.get(tid))
            for tid, offsets in tid_to_offset_map.items()))

    async def _commit_one(self, transactional_id: str, offsets: Mapping[TP, int],
                          group_id: str, start_new_transaction: bool,
                          delivered: Awaitable[None] | None = None) -> None:
        # The lock of faust's send(): no record joins this transaction while it commits.
        async with self._trn_locks[transactional_id]:
            producer = self.transaction_producer(transactional_id)
            self._ahead.discard(transactional_id)
            await commit_in_order(producer, offsets, group_id, delivered)
            if start_new_transaction:
                await producer.begin_transaction()
                if transactional_id in self._wanted:
                    self._wanted.discard(transactional_id)
                    self._add_ahead(transactional_id)


async def commit_in_order(producer: AIOKafkaProducer, offsets: Mapping[TP, int],
                          group_id: str, delivered: Awaitable[None] | None) -> None:
    """Commit one open transaction: its records acknowledged (`delivered`), then its
    offsets (AddOffsetsToTxn, TxnOffsetCommit), then EndTxn.

    Not the offsets while the records are on their way, although that saves a round
    trip. Kafka verifies a transactional produce from a client as old as aiokafka's
    protocol with the transaction's coordinator, which refuses while it is writing a
    change of that transaction, AddOffsetsToTxn included; the broker answers the
    produce NotEnoughReplicas and the client retries after its backoff. Side by side,
    a processor deciding 400 commands/s met that about 150 times in 20 s, and its p99
    from command to visible decision varied from 76 to 504 ms; in this order it met it
    none, at 72 to 93 ms (proof.bench_processor --latency)."""
    if delivered is not None:
        await delivered
    await producer.send_offsets_to_transaction(offsets, group_id)
    # EndTxn: aiokafka first closes the transaction's batches and waits for them
    # (lingering ones too), so every record handed in is in it.
    await producer.commit_transaction()


class SourcePartitionTransactionManager(TransactionManager):
    """Faust's transaction manager with the record routing and commit fixed (see above)."""

    def __init__(self, transport: Any, *, runtime: StateRuntime, **kwargs: Any) -> None:
        self.runtime = runtime
        # (topic, key) -> the partition the producer's partitioner gives the key.
        self._partitions: dict[tuple[str, bytes | None], int] = {}
        self._tids: dict[TP, str] = {}
        super().__init__(transport, **kwargs)

    def prepare(self, tp: TP) -> None:
        """A command of `tp` staged records: its transaction is added, ahead of the
        commit, the partitions the last commit wrote to (DurableProducer.prepare)."""
        tid = self._tids.get(tp)
        if tid is None:
            tid = self._tids[tp] = self.transactional_id(tp)
        cast(DurableProducer, self.producer).prepare(tid)

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
        cast(DurableProducer, self.producer).forget_prepared()
        # Those transactions are aborted now: so is everything they staged.
        self.runtime.local.drop_staged()
        await super().on_rebalance(assigned, revoked, newly_assigned)

    async def commit(self, offsets: Mapping[TP, int], start_new_transaction: bool = True) -> bool:
        local = self.runtime.local
        producer = cast(DurableProducer, self.producer)
        partitions = {tp.partition for tp in offsets}
        # The records and table writes staged so far are what this commit carries:
        # taken aside now, they go into the transaction below, the records (events,
        # dead letters) in the order they were decided, then the table writes as
        # changelog records, one per key however often the key was written since the
        # last commit (a course's seat counter). What is staged from here on waits for
        # the next commit. A command stages its records and writes without awaiting in
        # between (agents.py), so a commit carries all of a command or none of it.
        # Every offset committed here is of a command handled before this commit
        # began, so its records and writes are carried here or by an earlier commit.
        sequence = producer.sequence
        local.begin_commit(partitions, sequence)
        by_transactional_id: MutableMapping[str, dict[TP, int]] = {}
        for tp, offset in offsets.items():
            by_transactional_id.setdefault(self.transactional_id(tp), {})[tp] = offset
        if not by_transactional_id:
            return True
        try:
            await producer.flush_handed_in()
            delivered = await self._send_carried(producer, offsets, sequence)
            log.debug("commit %s", {tp.partition: o for tp, o in offsets.items()})
            await producer.commit_transactions(
                by_transactional_id, self.app.conf.id,
                start_new_transaction=start_new_transaction, delivered=delivered,
            )
        except Exception as exc:
            # Fenced (another worker owns the partition now) or the broker refused:
            # the transaction aborts, so this worker's uncommitted work never shows.
            fail_stop("transaction commit failed", exc)
        # Committed in Kafka: now, and only now, the same changes go to disk.
        local.finish_commit(partitions)
        return True

    async def _send_carried(self, producer: DurableProducer, offsets: Mapping[TP, int],
                            sequence: int) -> dict[str, Awaitable[None]]:
        """What the commit carries for each committed partition, in that partition's
        transaction: the staged records, then the table writes as changelog records,
        whose offsets are stored with them on disk (noted under the commit's own
        sequence number, so finish_commit counts them). Returns, per transactional id,
        what is done when that transaction's records are acknowledged and noted.

        Everything goes as whole batches, closed before they are handed over: a closed
        batch is sent at once instead of lingering, and a batch skips the per-record
        path of faust's and aiokafka's send (about a third of the processor's time per
        decision when every event went that way). aiokafka adds each batch's partition
        to the transaction (AddPartitionsToTxn) before it sends it. Every batch is
        awaited before EndTxn (commit_transactions): a record that failed fails the
        commit.
        """
        local = self.runtime.local
        delivered: dict[str, Awaitable[None]] = {}
        for tp in offsets:
            tid = self.transactional_id(tp)
            sender = producer.transaction_producer(tid)
            pending: list[tuple[str | None, int, int, Awaitable[RecordMetadata]]] = []
            by_destination: dict[tuple[str, int], list[Record]] = {}
            for r in local.carried_records(tp.partition):
                # The partition faust's send chose: the producer's partitioner over the
                # key (murmur2, as the command API's), so a course's events share one
                # partition of course-events, in the order they were decided.
                destination = (r.topic, await self.partition_of(sender, r.topic, r.key))
                by_destination.setdefault(destination, []).append(
                    (r.key, r.value, r.headers, r.timestamp_ms))
            written = set()
            for (topic, partition), records in by_destination.items():
                pending += await _send_batches(sender, None, topic, partition, records)
                written.add(TopicPartition(topic, partition))
            for table, entries in local.carried(tp.partition).items():
                changelog = self.runtime.changelogs[table]
                pending += await _send_batches(
                    sender, table, changelog, tp.partition,
                    [(key, value, [], None) for key, value in entries.items()])
                written.add(TopicPartition(changelog, tp.partition))
            producer.wrote_to(tid, written)
            before = delivered.get(tid)
            noted = self._note_written(pending, sequence)
            delivered[tid] = noted if before is None else _both(before, noted)
        return delivered

    async def _note_written(
            self, pending: list[tuple[str | None, int, int, Awaitable[RecordMetadata]]],
            sequence: int) -> None:
        local = self.runtime.local
        for written_table, partition, count, future in pending:
            metadata = await future
            if written_table is not None:
                # A batch's records have consecutive offsets from its base offset.
                local.written(written_table, partition, metadata.offset + count - 1, sequence)

    async def partition_of(self, sender: AIOKafkaProducer, topic: str, key: bytes | None) -> int:
        cached = self._partitions.get((topic, key))
        if cached is None:
            await sender.partitions_for(topic)  # the topic's metadata, if not known yet
            cached = sender._partition(topic, None, None, None, key, None)  # noqa: SLF001
            if len(self._partitions) >= PARTITION_CACHE:
                self._partitions.clear()
            self._partitions[(topic, key)] = cached
        return cached


async def _both(first: Awaitable[None], second: Awaitable[None]) -> None:
    await asyncio.gather(first, second)


async def _send_batches(sender: AIOKafkaProducer, table: str | None, topic: str,
                        partition: int, records: list[Record],
                        ) -> list[tuple[str | None, int, int, Awaitable[RecordMetadata]]]:
    """`records` to one topic partition as closed batches, in order; (table, partition,
    record count, delivery future) of each batch."""
    sent = []
    batch = sender.create_batch()
    for key, value, headers, timestamp in records:
        if batch.append(key=key, value=value, timestamp=timestamp, headers=headers) is None:
            sent.append(await _submit(sender, batch, table, topic, partition))
            batch = sender.create_batch()
            if batch.append(key=key, value=value, timestamp=timestamp, headers=headers) is None:
                raise ValueError(f"a record of {topic} does not fit in a batch")
    if batch.record_count():
        sent.append(await _submit(sender, batch, table, topic, partition))
    return sent


async def _submit(sender: AIOKafkaProducer, batch: BatchBuilder, table: str | None, topic: str,
                  partition: int) -> tuple[str | None, int, int, Awaitable[RecordMetadata]]:
    batch.close()
    future = await sender.send_batch(batch, topic, partition=partition)
    return table, partition, batch.record_count(), future


class FencedTransport(faust_aiokafka.Transport):
    """faust's aiokafka transport, building the producer and transaction manager above
    with the worker's StateRuntime, and a consumer that commits when caught up."""

    Consumer = PacedConsumer

    def __init__(self, url: list[URL], app: AppT, runtime: StateRuntime) -> None:
        self.runtime = runtime
        super().__init__(url, app)

    def create_producer(self, **kwargs: Any) -> ProducerT:
        return DurableProducer(self, runtime=self.runtime, **kwargs)

    def create_transaction_manager(self, consumer: ConsumerT, producer: ProducerT,
                                   **kwargs: Any) -> TransactionManagerT:
        return SourcePartitionTransactionManager(
            self, runtime=self.runtime, consumer=consumer, producer=producer, **kwargs)
