"""Bring the local state of newly owned partitions up to the end of their changelogs.

Runs on every partition assignment, before the worker decides anything there. The
disk holds a prefix of each committed changelog (state.py) and the offset where it
ends, so only the records after that offset are read: none after a clean restart,
the tail after a crash, everything for a partition this worker never held or whose
disk was lost. The read bypasses faust's record-by-record recovery: confluent-kafka
`consume(n)` batches, read_committed, written to RocksDB in one WriteBatch per batch
and partition (with the offset of the batch's last record, so a restore cut short
resumes where it stopped).
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import groupby

from confluent_kafka import Consumer, Message, TopicPartition
from confluent_kafka.admin import AdminClient

from course_processor.state.local import LocalState
from service_kit.topic_ends import Where, read_to_end, settled_end_offsets

log = logging.getLogger(__name__)

# The previous owner of a restored partition is fenced by then (the producers of the
# new assignment were initialised before the restore), so its transactions settle at
# once; this long without progress means something else is wrong.
PENDING_TRANSACTIONS_TIMEOUT = 60.0
BATCH = 10_000
# The restore's consumer. Large fetches: every fetch is a round trip to the broker
# whatever it carries, and with 16 MB per fetch (4 MB per partition) a full restore
# took about 1.7x as long as with these (docs/notes/n19-restore.md). Their buffers are
# large blocks, mapped alone and unmapped when freed (memory.MMAP_THRESHOLD_BYTES), so
# they raise the restore's peak RSS only: nothing of them stays while deciding. The
# prefetch queue stays bounded (32 MB; 256 MB once left its heap in the RSS).
CONSUMER: dict[str, object] = {
    "group.id": "course-processor-restore",
    "enable.auto.commit": False, "isolation.level": "read_committed",
    "enable.partition.eof": False, "fetch.max.bytes": 64 << 20,
    "max.partition.fetch.bytes": 16 << 20, "queued.max.messages.kbytes": 32 << 10,
}


@dataclass(frozen=True)
class RestoreStats:
    records: int
    seconds: float


def restore(state: LocalState, kafka: Mapping[str, str], changelogs: Mapping[str, str],
            partitions: set[int]) -> RestoreStats:
    """Read every changelog record after the stored offsets into the local state.

    `kafka` is the client configuration (bootstrap.servers and credentials);
    `changelogs` maps each table to its changelog topic; the changelog partitions are
    the command partitions (co-partitioned). Raises when the changelogs cannot be
    read to their ends (service_kit.topic_ends.TopicReadError).
    """
    started = time.monotonic()
    state.retain(partitions)
    for partition in partitions:
        if state.stale(partition):
            log.warning("local state too old to trust: restoring it whole",
                        extra={"partition": partition})
            state.wipe(partition)
        state.open(partition)
    table_of = {topic: table for table, topic in changelogs.items()}
    tps = [TopicPartition(topic, p) for topic in changelogs.values() for p in sorted(partitions)]
    if not tps:
        return RestoreStats(0, 0.0)
    ends = settled_end_offsets(AdminClient(dict(kafka)), tps, PENDING_TRANSACTIONS_TIMEOUT)
    starts: dict[Where, int] = {}
    for topic, table in table_of.items():
        for partition in partitions:
            stored = state.persisted_offset(table, partition)
            start = 0 if stored is None else stored + 1
            if stored is not None and stored >= ends[(topic, partition)]:
                # The disk is ahead of the log: the topic was deleted and created
                # again (a reset), so the disk describes another history.
                log.warning("local state ahead of its changelog: wiping it",
                            extra={"topic": topic, "partition": partition})
                state.wipe(partition)
                return restore(state, kafka, changelogs, partitions)
            if start < ends[(topic, partition)]:
                starts[(topic, partition)] = start
    records = _read(state, kafka, table_of, starts, ends) if starts else 0
    read = time.monotonic() - started
    if records:
        state.persist()
    seconds = time.monotonic() - started
    # The read apart from the flush after it: which one a slow restore waited for.
    log.info("local state restored: %d changelog records in %.2fs (read %.2fs, flushed "
             "%.2fs)", records, seconds, read, seconds - read, extra={"kind": "restore"})
    return RestoreStats(records, seconds)


def _read(state: LocalState, kafka: Mapping[str, str], table_of: Mapping[str, str],
          starts: Mapping[Where, int], ends: Mapping[Where, int]) -> int:
    consumer = Consumer({**kafka, **CONSUMER})
    total = 0
    try:
        with paused_gc():
            for messages in read_to_end(consumer, starts, ends, BATCH,
                                        idle_limit=PENDING_TRANSACTIONS_TIMEOUT):
                load(state, table_of, messages)
                total += len(messages)
    finally:
        consumer.close()
    return total


def load(state: LocalState, table_of: Mapping[str, str], messages: Sequence[Message]) -> None:
    """A batch of changelog records to disk: one WriteBatch per run of one partition's
    records (consume() hands them over a fetched partition at a time), in order, with
    the offset of the run's last record, so a restore cut short resumes where it
    stopped. One pass, the records going straight into the batch."""
    for (topic, partition), run in groupby(messages, _where):
        records = list(run)
        pairs = ((m.key(), m.value()) for m in records)
        state.load(partition, table_of[topic], pairs,  # type: ignore[arg-type]
                   records[-1].offset())  # type: ignore[arg-type]


@contextmanager
def paused_gc() -> Iterator[None]:
    """The cyclic garbage collector off for a restore's read, as it was found after.

    The batches make a Message object per record, each tracked by the collector: its
    passes over them were about a tenth of a restore's time (py-spy), and none of them
    is part of a cycle; reference counting frees them. A restore runs alone (the agent
    is stopped for the whole rebalance), for seconds."""
    collecting = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if collecting:
            gc.enable()


def _where(message: Message) -> tuple[str, int]:
    return message.topic(), message.partition()  # type: ignore[return-value]
