"""Reading topic partitions up to their end offsets, with confluent-kafka.

Used wherever a service copies or folds a topic once, to where it ends now: the
processor's restore and rebuild, and the command API's reseal. The end is an offset
fixed before reading (the high watermark, or the last stable offset once no
transaction is pending); the read is over when the consumer's *position* reaches it,
not when a record at `end - 1` arrives: a read_committed consumer never returns the
commit and abort markers, and the last offset of a transactional partition is usually
one, while its position steps over them.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence

from confluent_kafka import Consumer, IsolationLevel, KafkaException, Message, TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec

# (topic, partition)
Where = tuple[str, int]


class TopicReadError(RuntimeError):
    """A read to the end could not finish: a broker error, or no progress for too long."""


def end_offsets(admin: AdminClient, tps: Sequence[TopicPartition],
                isolation: IsolationLevel = IsolationLevel.READ_UNCOMMITTED,
                timeout: float = 30.0) -> dict[Where, int]:
    """(topic, partition) -> its end offset, as a reader of `isolation` sees it."""
    futures = admin.list_offsets({tp: OffsetSpec.latest() for tp in tps},
                                 isolation_level=isolation, request_timeout=timeout)
    return {(tp.topic, tp.partition): future.result().offset for tp, future in futures.items()}


def settled_end_offsets(admin: AdminClient, tps: Sequence[TopicPartition],
                        timeout: float = 60.0) -> dict[Where, int]:
    """Per partition, the end offset once no transaction is pending on it.

    The last stable offset stops short of a transaction whose commit markers are still
    being written (EndTxn returns before the markers land), so a read cut there could
    hold part of a transaction's records and miss the rest. Waits until the last stable
    offset equals the high watermark; the caller makes sure no writer keeps a
    transaction open (fenced, or stopped). TopicReadError after `timeout`.
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
                raise TopicReadError(f"could not read the end offsets: {exc}") from exc
            time.sleep(0.2)
            continue
        pending = sorted(key for key in high if stable[key] < high[key])
        if not pending:
            return high
        if time.monotonic() > deadline:
            raise TopicReadError(f"transactions still pending on {pending} after {timeout:.0f}s")
        time.sleep(0.05)


def read_to_end(consumer: Consumer, starts: Mapping[Where, int], ends: Mapping[Where, int],
                batch: int = 10_000, poll: float = 0.5,
                idle_limit: float = 60.0) -> Iterator[list[Message]]:
    """Batches of the records from each `starts` offset up to its `ends` offset.

    Assigns `consumer` (the caller configures it, read_committed or not, and closes it)
    to the partitions with something to read. Ends once every position has reached its
    end; TopicReadError on a record carrying an error, or when no record came for
    `idle_limit` seconds while some partition still lacks its end.
    """
    remaining = {where: start for where, start in starts.items() if start < ends[where]}
    if not remaining:
        return
    consumer.assign([TopicPartition(t, p, offset) for (t, p), offset in remaining.items()])
    last_record = time.monotonic()
    while remaining:
        messages = consumer.consume(batch, poll)
        for msg in messages:
            if msg.error() is not None:
                raise TopicReadError(f"reading {msg.topic()}[{msg.partition()}]: {msg.error()}")
        if messages:
            last_record = time.monotonic()
            yield messages
        for position in consumer.position([TopicPartition(t, p) for t, p in remaining]):
            where = (position.topic, position.partition)
            if position.offset >= ends[where]:
                del remaining[where]
        if remaining and time.monotonic() - last_record > idle_limit:
            raise TopicReadError(f"{sorted(remaining)} never reached their end offsets")
