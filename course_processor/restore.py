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

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass

from confluent_kafka import Consumer, IsolationLevel, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec

from course_processor.failstop import fail_stop
from course_processor.state import LocalState
from service_kit.kafka_auth import client_config

log = logging.getLogger(__name__)

PENDING_TRANSACTIONS_TIMEOUT = 60.0
BATCH = 10_000


@dataclass(frozen=True)
class RestoreStats:
    records: int
    seconds: float


def committed_ends(admin: AdminClient, tps: list[TopicPartition],
                   timeout: float = PENDING_TRANSACTIONS_TIMEOUT) -> dict[tuple[str, int], int]:
    """Per partition, the end offset once no transaction is pending on it.

    The last stable offset stops short of a transaction whose commit markers are still
    being written (EndTxn returns before the markers land), so a restore cut there
    could hold one table's share of a command and miss another's. The previous owner
    of these partitions is fenced by now (the producers of the new assignment were
    initialised before the restore), so its transactions settle at once: wait until
    the last stable offset equals the high watermark.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            stable = end_offsets(admin, tps, IsolationLevel.READ_COMMITTED)
            high = end_offsets(admin, tps, IsolationLevel.READ_UNCOMMITTED)
        except KafkaException as exc:
            # A leader moving (a broker lost or paused) answers NOT_LEADER for a while:
            # ask again until the deadline.
            if time.monotonic() > deadline:
                fail_stop("could not read the changelogs' end offsets", exc)
            time.sleep(0.2)
            continue
        pending = [key for key in high if stable[key] < high[key]]
        if not pending:
            return high
        if time.monotonic() > deadline:
            fail_stop(f"transactions still pending on {pending} after {timeout:.0f}s; "
                      "cannot restore a consistent state")
        time.sleep(0.05)


def end_offsets(admin: AdminClient, tps: list[TopicPartition],
                isolation: IsolationLevel) -> dict[tuple[str, int], int]:
    """(topic, partition) -> its end offset, as a reader of `isolation` sees it."""
    futures = admin.list_offsets({tp: OffsetSpec.latest() for tp in tps},
                                 isolation_level=isolation, request_timeout=30)
    return {(tp.topic, tp.partition): future.result().offset for tp, future in futures.items()}


def restore(state: LocalState, servers: str, changelogs: Mapping[str, str],
            partitions: set[int]) -> RestoreStats:
    """Read every changelog record after the stored offsets into the local state.

    `changelogs` maps each table to its changelog topic; the changelog partitions are
    the command partitions (co-partitioned).
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
    admin = AdminClient({**client_config(), "bootstrap.servers": servers})
    ends = committed_ends(admin, tps)
    starts: dict[tuple[str, int], int] = {}
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
                return restore(state, servers, changelogs, partitions)
            if start < ends[(topic, partition)]:
                starts[(topic, partition)] = start
    records = _read(state, servers, table_of, starts, ends) if starts else 0
    if records:
        state.persist()
    seconds = time.monotonic() - started
    log.info("local state restored: %d changelog records in %.2fs", records, seconds,
             extra={"kind": "restore"})
    return RestoreStats(records, seconds)


def _read(state: LocalState, servers: str, table_of: Mapping[str, str],
          starts: Mapping[tuple[str, int], int], ends: Mapping[tuple[str, int], int]) -> int:
    consumer = Consumer({
        **client_config(),
        "bootstrap.servers": servers, "group.id": "course-processor-restore",
        "enable.auto.commit": False, "isolation.level": "read_committed",
        "enable.partition.eof": False, "fetch.max.bytes": 64 << 20,
        "max.partition.fetch.bytes": 16 << 20, "queued.max.messages.kbytes": 256 << 10,
    })
    assignment = [TopicPartition(topic, p, offset) for (topic, p), offset in starts.items()]
    consumer.assign(assignment)
    remaining = dict(starts)
    total = 0
    deadline = time.monotonic() + PENDING_TRANSACTIONS_TIMEOUT
    try:
        while remaining:
            batch: dict[tuple[str, int], dict[bytes, bytes | None]] = {}
            last: dict[tuple[str, int], int] = {}
            messages = consumer.consume(BATCH, 0.5)
            for msg in messages:
                if msg.error() is not None:
                    fail_stop(f"restore read failed: {msg.error()}")
                where = (msg.topic(), msg.partition())
                entries = batch.get(where)  # type: ignore[arg-type]
                if entries is None:
                    entries = batch[where] = {}  # type: ignore[index]
                entries[msg.key()] = msg.value()  # type: ignore[index]
                last[where] = msg.offset()  # type: ignore[index,assignment]
            total += len(messages)
            for (topic, partition), entries in batch.items():
                state.load(partition, table_of[topic], entries, last[(topic, partition)])
            if batch:
                deadline = time.monotonic() + PENDING_TRANSACTIONS_TIMEOUT
            # The position passes the commit markers a read_committed consumer never
            # returns, so it reaches the end even when the last offset is a marker.
            for position in consumer.position([TopicPartition(t, p) for t, p in remaining]):
                key = (position.topic, position.partition)
                if position.offset >= ends[key]:
                    del remaining[key]
            if time.monotonic() > deadline:
                fail_stop(f"restore made no progress on {sorted(remaining)}")
    finally:
        consumer.close()
    return total
