"""Rebuild every view from the first event: `python -m projections.replay` (`make replay`).

Settings: KAFKA_BOOTSTRAP_SERVERS and DATABASE_URL (see `projections/settings.py`);
`make replay` runs it as `python -m stack replay`, which sets them to the native stack's
addresses (KAFKA_PORT, PG_PORT as `make up` reads them) where they are not set.
`--no-swap` builds the shadow copies and leaves them beside the views (for checks);
`--quiet` hides the progress bar. It works on a running stack: the query API and the
projector keep running throughout.

How it works:
1. Build. Under a session advisory lock (one replay at a time) it creates empty shadow
   copies of every view (`<view>_shadow`, `CREATE TABLE ... LIKE ... INCLUDING ALL`)
   and reads `course-events` from offset 0 of every partition, read_committed, with the
   projector's own batch code (`projections.batch`, `projections.store.apply`) writing
   into the shadow copies, one transaction per batch, up to the end offsets taken at
   the start. The progress bar counts offsets against those end offsets (events/s, ETA).
2. Catch up. The live projector has moved on meanwhile: the replay reads the live
   positions from `projection_offsets` and consumes up to them, a few rounds, without
   locking anything, until less than one batch is left.
3. Swap, in ONE transaction: bump the projection's row in `projection_generations`.
   Every live batch transaction locks that row first (FOR UPDATE), so the bump waits
   for the batch in flight and holds back the next one. With the live views now
   frozen, read their positions once more, apply the last few events to the shadow
   copies so that every partition stands at least where the live views stand, then
   sum the per-course birth-date counts into the global ones (built once here rather
   than per batch), rename each view to `<view>_retired`, each shadow copy to `<view>`,
   drop the retired
   ones, and store the shadow's positions as the live positions. Commit.
   - The query API reads by table name in single-statement autocommit transactions. A
     read waits for the renames' ACCESS EXCLUSIVE locks (milliseconds), then PostgreSQL
     looks the name up again and it reads the new table: it answers from the old views
     until the commit and from the new ones after, never an error, never an empty view.
     The new views are never behind the old ones, so no answer goes backwards.
   - The projector's held-back batch then sees a newer generation, rolls back, and the
     projector seeks to the positions swapped in: it continues from the shadow's offsets.
   - Records the replay cannot decode are not dead-lettered again, except those past the
     live positions at the swap, which the live projector never saw.
   A lock that cannot be had within 5 s (a long query holding a view) rolls the swap
   back; it is retried from step 2.

The same mechanism builds a new projection from the whole history: add its table to
`projections.store.VIEWS` (and its writes to `store.apply`), and a replay fills it.
"""

from __future__ import annotations

import argparse
import logging
import queue
import sys
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, replace

import psycopg
from confluent_kafka import Consumer, KafkaException, TopicPartition
from psycopg import sql
from tqdm import tqdm

import migrations
from projections import deadletter, store
from projections.batch import Batch, EventRecord, UnreadableRecord, build
from projections.settings import ReplaySettings
from schemas import topics
from service_kit.deadletter import DeadLetterProducer
from service_kit.kafka_auth import client_config
from service_kit.logs import configure_logging
from service_kit.settings import load_settings

log = logging.getLogger("projections.replay")

_STALL_SECONDS = 60.0  # no progress for this long: give up
_SWAP_CATCH_UP_SECONDS = 30.0  # the live projector is held back meanwhile
_SWAP_ATTEMPTS = 3
_CATCH_UP_ROUNDS = 5
_INVALID_OFFSET = -1001  # librdkafka's "no offset yet"


class ReplayError(RuntimeError):
    pass


@dataclass(frozen=True)
class Result:
    events: int  # offsets read (records and transaction markers)
    seconds: float
    swapped: bool
    generation: int | None

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0


class Replay:
    def __init__(self, settings: ReplaySettings, conn: psycopg.Connection,
                 consumer: Consumer, bar: tqdm) -> None:
        self.settings = settings
        self.conn = conn
        self.consumer = consumer
        self.bar = bar
        self.target = store.shadow(settings.projection)
        self.partitions: list[int] = []
        self.stored: dict[int, int] = {}  # per partition, the shadow's next offset
        self.failures: list[UnreadableRecord] = []
        self.read = 0

    # -------------------------------------------------------------- steps

    def start(self) -> None:
        with self.conn.transaction():
            store.ensure_generation(self.conn, self.settings.projection)
            store.create_shadow(self.conn, self.settings.projection)
        metadata = self.consumer.list_topics(topics.EVENTS, timeout=10).topics[topics.EVENTS]
        if metadata.error is not None:
            raise ReplayError(f"{topics.EVENTS}: {metadata.error}")
        self.partitions = sorted(metadata.partitions)
        ends: dict[int, int] = {}
        for p in self.partitions:
            low, high = self.consumer.get_watermark_offsets(
                TopicPartition(topics.EVENTS, p), timeout=10)
            self.stored[p], ends[p] = low, high
        self.consumer.assign([TopicPartition(topics.EVENTS, p, self.stored[p])
                              for p in self.partitions])
        self.bar.reset(total=sum(ends[p] - self.stored[p] for p in self.partitions))
        self.catch_up(ends, deadline=None)
        # Fresh tables have no planner statistics; give them some before they go live.
        self.conn.execute(sql.SQL("ANALYZE {}").format(sql.SQL(", ").join(
            self.target.table(name) for name in store.VIEWS)))

    def follow_live(self) -> None:
        """Close in on the live positions without holding anything back."""
        for _ in range(_CATCH_UP_ROUNDS):
            targets = self._targets(self._live_positions())
            if sum(targets[p] - self.stored[p] for p in self.partitions) <= self._batch_size:
                return
            self.catch_up(targets, deadline=None)

    def finish_without_swap(self) -> None:
        self.catch_up(self._targets(self._live_positions()), deadline=None)
        with self.conn.transaction():
            store.fill_global_birth_dates(self.conn, self.target)

    def swap(self, producer: DeadLetterProducer | None) -> int:
        for attempt in range(1, _SWAP_ATTEMPTS + 1):
            before = (dict(self.stored), len(self.failures), self.read)
            try:
                with self.conn.transaction():
                    self.conn.execute("SET LOCAL lock_timeout = '30s'")
                    generation = store.bump_generation(self.conn, self.settings.projection)
                    live = self._live_positions()  # frozen until this transaction ends
                    self.catch_up(self._targets(live),
                                  deadline=time.monotonic() + _SWAP_CATCH_UP_SECONDS)
                    if producer is not None:
                        deadletter.publish(producer, self._unseen_failures(live))
                    store.swap(self.conn, self.settings.projection, topics.EVENTS,
                               self.stored)
                return generation
            except (psycopg.errors.LockNotAvailable, TimeoutError) as exc:
                # Rolled back, shadow batches of this attempt included: start from before.
                self.stored, failures, self.read = dict(before[0]), before[1], before[2]
                del self.failures[failures:]
                self.bar.n = self.read
                log.warning("swap not possible now; retrying",
                            extra={"attempt": attempt, "error": str(exc).strip()})
                self.follow_live()
        raise ReplayError(f"could not swap in {_SWAP_ATTEMPTS} attempts")

    def _unseen_failures(self, live: Mapping[int, int]) -> list[UnreadableRecord]:
        return [f for f in self.failures if f.record.offset >= live.get(f.record.partition, 0)]

    # -------------------------------------------------------------- consuming

    @property
    def _batch_size(self) -> int:
        return self.settings.replay_batch_size

    def _live_positions(self) -> dict[int, int]:
        return store.read_positions(self.conn, self.settings.projection, topics.EVENTS)

    def _targets(self, live: Mapping[int, int]) -> dict[int, int]:
        # Never behind the live views: an answer must not go backwards at the swap.
        targets = {p: max(self.stored[p], live.get(p, self.stored[p])) for p in self.partitions}
        added = sum(targets[p] - self.stored[p] for p in self.partitions)
        self.bar.total = self.bar.n + added
        self.bar.refresh()
        return targets

    def catch_up(self, targets: Mapping[int, int], deadline: float | None) -> None:
        """Apply every record below `targets` to the shadow copies."""
        self._place(targets)
        last_progress = time.monotonic()
        with _Writer(self.conn, self.target) as writer:
            while any(self.stored[p] < targets[p] for p in self.partitions):
                now = time.monotonic()
                if deadline is not None and now > deadline:
                    raise TimeoutError("catching up under the swap lock took too long")
                if now - last_progress > _STALL_SECONDS:
                    raise ReplayError(f"no progress for {_STALL_SECONDS:.0f}s at {self.stored}")
                if self._step(targets, writer):
                    last_progress = now

    def _place(self, targets: Mapping[int, int]) -> None:
        # Each round may have read past its targets: go back to what the shadow holds, and
        # read nothing from partitions that are done.
        done = [TopicPartition(topics.EVENTS, p) for p in self.partitions
                if self.stored[p] >= targets[p]]
        todo = [TopicPartition(topics.EVENTS, p, self.stored[p]) for p in self.partitions
                if self.stored[p] < targets[p]]
        if done:
            self.consumer.pause(done)
        for tp in todo:
            self.consumer.seek(tp)
        if todo:
            self.consumer.resume(todo)

    def _step(self, targets: Mapping[int, int], writer: _Writer) -> bool:
        messages = self.consumer.consume(self._batch_size, 1.0)
        records = []
        for msg in messages:
            err = msg.error()
            if err is not None:
                log.warning("consumer error", extra={"error": str(err)})
                continue
            p, offset = msg.partition(), msg.offset()
            if p is None or offset is None or not self.stored[p] <= offset < targets[p]:
                continue
            records.append(EventRecord(p, offset, msg.key(), msg.value()))
        # The consumer's position steps over transaction markers, which carry no event;
        # capped at the target, it is what the shadow has read once this batch commits.
        advanced: dict[int, int] = {}
        for tp in self.consumer.position([TopicPartition(topics.EVENTS, p)
                                          for p in self.partitions]):
            p = tp.partition
            if tp.offset != _INVALID_OFFSET and self.stored[p] < targets[p]:
                reached = min(tp.offset, targets[p])
                if reached > self.stored[p]:
                    advanced[p] = reached
        if not advanced:
            return False
        batch = replace(build(records), next_offsets=advanced)
        self.failures.extend(batch.failures)
        writer.put(batch)
        # `stored` runs ahead of the commits by at most two batches; leaving `catch_up`
        # waits for them, and a failed write fails the replay (or rolls the swap back).
        moved = sum(advanced[p] - self.stored[p] for p in advanced)
        self.stored.update(advanced)
        self.read += moved
        self.bar.update(moved)
        return True


class _Writer:
    """Writes shadow batches on a thread of its own, one transaction (or savepoint) each.

    PostgreSQL applies batch n while this thread reads and decodes batch n+1: two cores
    busy instead of one. The connection is used by the writer alone until `__exit__`,
    which waits for every batch handed over and re-raises a write's failure.
    """

    def __init__(self, conn: psycopg.Connection, target: store.Target) -> None:
        self.conn = conn
        self.target = target
        self.queue: queue.Queue[Batch | None] = queue.Queue(maxsize=2)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="shadow-writer", daemon=True)

    def __enter__(self) -> _Writer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.queue.put(None)
        self.thread.join()
        if self.error is not None and exc[0] is None:
            raise self.error

    def put(self, batch: Batch) -> None:
        if self.error is not None:
            raise self.error
        self.queue.put(batch)

    def _run(self) -> None:
        while (batch := self.queue.get()) is not None:
            if self.error is not None:
                continue  # drain, so that `put` never blocks on a dead writer
            try:
                with self.conn.transaction():
                    store.apply(self.conn, self.target, batch, topic=topics.EVENTS,
                                expected=None, generation=None)
            except BaseException as exc:  # handed to the reading thread
                self.error = exc


def rebuild(settings: ReplaySettings, swap: bool = True, progress: bool = True) -> Result:
    """Rebuild the views into shadow copies and, with `swap`, put them in place."""
    started = time.monotonic()
    migrations.apply(settings.database_url)
    consumer = Consumer({
        **client_config(),
        "bootstrap.servers": settings.kafka_bootstrap_servers,
        "group.id": f"replay-{uuid.uuid4()}",  # assign() only: the group is never joined
        "isolation.level": "read_committed",
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "enable.partition.eof": False,
    }, logger=logging.getLogger("projections.replay.kafka"))
    producer = deadletter.producer(settings.kafka_bootstrap_servers)
    bar = tqdm(unit="ev", unit_scale=True, desc="replay", disable=not progress,
               dynamic_ncols=True, smoothing=0.05)
    try:
        with psycopg.connect(settings.database_url, autocommit=True) as conn:
            lock = conn.execute("SELECT pg_try_advisory_lock(hashtext(%s))",
                                (f"replay:{settings.projection}",)).fetchone()
            if lock is None or not lock[0]:
                raise ReplayError("another replay of this projection is running")
            replay = Replay(settings, conn, consumer, bar)
            replay.start()
            replay.follow_live()
            generation = None
            if swap:
                generation = replay.swap(producer)
            else:
                replay.finish_without_swap()
            skipped = len(replay.failures)
            if skipped:
                log.warning("undecodable records skipped", extra={"count": skipped})
            return Result(replay.read, time.monotonic() - started, swap, generation)
    finally:
        bar.close()
        consumer.close()
        producer.close()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m projections.replay", description=(
        "Rebuild every view from the first event of course-events and swap it in."))
    parser.add_argument("--no-swap", action="store_true",
                        help="build the shadow copies (<view>_shadow) and leave them there")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args()
    settings = load_settings(ReplaySettings, "replay")
    configure_logging(settings.log_level, "replay")
    try:
        result = rebuild(settings, swap=not args.no_swap, progress=not args.quiet)
    except (ReplayError, psycopg.Error, KafkaException) as exc:
        # Nothing live was touched: a failed replay leaves only shadow copies, which the
        # next replay drops.
        sys.exit(f"replay failed, the live views are unchanged: {exc}")
    where = (f"swapped in as generation {result.generation}" if result.swapped
             else "left in the *_shadow tables")
    print(f"replayed {result.events} offsets in {result.seconds:.1f}s "
          f"({result.rate:,.0f} events/s); {where}", flush=True)


if __name__ == "__main__":
    main()
