"""Rebuild every view from the first event: `python -m projections.replay` (`make replay`).

Settings: KAFKA_BOOTSTRAP_SERVERS and DATABASE_URL (see `projections/settings.py`);
`make replay` runs it as `python -m stack replay`, which sets them to the native stack's
addresses (KAFKA_PORT, PG_PORT as `make up` reads them) where they are not set.
`--workers N` (or REPLAY_WORKERS; default: the cores this process may run on) sets how
many processes share the partitions. `--restart` drops what an interrupted replay left
and starts from offset 0; without it, a replay continues from where the last one stood.
`--no-swap` builds the shadow copies and leaves them beside the views (for checks);
`--quiet` hides the progress bar. It works on a running stack: the query API and the
projector keep running throughout.

How it works:
1. Build. Under a session advisory lock (one replay at a time) it creates empty shadow
   copies of every view (`<view>_shadow`, `CREATE TABLE ... LIKE ... INCLUDING ALL`), or,
   when an interrupted replay left them, keeps them and their positions. N worker
   processes each own a share of the `course-events` partitions and read them,
   read_committed, from the shadow's positions up to the end offsets taken at the
   start. Each batch is one transaction holding its shadow writes and its partitions'
   next offsets (`store.apply_staged`), so a worker killed at any moment (kill -9 of
   the replay kills its workers too) leaves every partition at a committed batch, and
   the next replay goes on from there with the same result. A course lives in one
   partition (key = course id), so no two workers write the same row. A batch appends
   its accepted sign-ups' birth dates to an unindexed table; the per-course rows and
   birth-date counts are grouped from them once the workers are done
   (`store.merge_births`), and the global row and counts, which sum over every course,
   once before the swap.
   The progress bar counts the offsets in the shadow copies over all workers (events/s,
   ETA), and a row in `replay_runs` tells the projector's and the query API's /metrics
   that a replay runs.
2. Catch up. The live projector has moved on meanwhile: the replay (one process now)
   reads the live positions from `projection_offsets` and consumes up to them, a few
   rounds, without locking anything, until less than one batch is left.
3. Swap, in ONE transaction: bump the projection's row in `projection_generations`.
   Every live batch transaction locks that row first (FOR UPDATE), so the bump waits
   for the batch in flight and holds back the next one. With the live views now
   frozen, read their positions once more, apply the last few events to the shadow
   copies so that every partition stands at least where the live views stand, then
   sum the per-course rows into the global ones, rename each view to
   `<view>_retired`, each shadow copy to `<view>`, drop the retired ones, and store the
   shadow's positions as the live positions. Commit.
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
`projections.store.VIEWS` (and its writes to `store.apply` and `store.apply_staged`),
and a replay fills it.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import logging
import multiprocessing
import multiprocessing.connection
import os
import queue
import signal
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from multiprocessing.process import BaseProcess
from multiprocessing.synchronize import Event as EventType
from pathlib import Path

import psycopg
from confluent_kafka import Consumer, KafkaException, Message, TopicPartition
from psycopg import sql
from tqdm import tqdm

import migrations
from projections import cpugroup, deadletter, store
from projections.batch import UnreadableRecord
from projections.settings import ReplaySettings
from projections.staged import Staged, stage
from schemas import topics
from service_kit.deadletter import DeadLetterProducer
from service_kit.kafka_auth import client_config
from service_kit.logs import configure_logging
from service_kit.settings import load_settings
from service_kit.topic_ends import TopicReadError, read_to_end

log = logging.getLogger("projections.replay")

_STALL_SECONDS = 60.0  # no progress for this long: give up
_SWAP_CATCH_UP_SECONDS = 30.0  # the live projector is held back meanwhile
_SWAP_ATTEMPTS = 3
_MAINTENANCE_WAIT_SECONDS = 30.0  # a VACUUM of a view still running then is cancelled
_CATCH_UP_ROUNDS = 5
_INVALID_OFFSET = -1001  # librdkafka's "no offset yet"
_TICK_SECONDS = 0.5  # the progress bar and the replay_runs heartbeat
_LOCK_WAIT_SECONDS = 30.0  # a worker of a killed replay may take a moment to die
_SWITCH_INTERVAL_SECONDS = 0.0005  # a worker's GIL hand-over (Python's default: 5 ms)


class ReplayError(RuntimeError):
    pass


@dataclass(frozen=True)
class Result:
    events: int  # offsets read by this run (records and transaction markers)
    seconds: float
    swapped: bool
    generation: int | None
    resumed_from: int = 0  # offsets already in the shadow copies when it started
    workers: int = 1

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0


def default_workers() -> int:
    return len(os.sched_getaffinity(0))


def shares(partitions: Sequence[int], workers: int) -> list[list[int]]:
    """The partitions of each worker: round robin, no worker without one."""
    n = max(1, min(workers, len(partitions)))
    return [list(partitions[i::n]) for i in range(n)]


def consumer(settings: ReplaySettings) -> Consumer:
    return Consumer({
        **client_config(),
        "bootstrap.servers": settings.kafka_bootstrap_servers,
        "group.id": f"replay-{uuid.uuid4()}",  # assign() only: the group is never joined
        "isolation.level": "read_committed",
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "enable.partition.eof": False,
    }, logger=logging.getLogger("projections.replay.kafka"))


class Replay:
    """Reads partitions into the shadow copies: a worker's share, or all of them for the
    catch-up and the swap. `stored` is, per partition, the shadow's next offset."""

    def __init__(self, settings: ReplaySettings, conn: psycopg.Connection,
                 consumer: Consumer, partitions: Sequence[int], stored: Mapping[int, int],
                 bar: tqdm | None = None) -> None:
        self.settings = settings
        self.conn = conn
        self.consumer = consumer
        self.bar = bar
        self.target = store.shadow(settings.projection)
        self.partitions = sorted(partitions)
        self.stored = {p: stored[p] for p in self.partitions}
        self.read = 0
        store.prepare_staging(conn)

    # -------------------------------------------------------------- steps

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
            store.fill_globals(self.conn, self.target)

    def swap(self, producer: DeadLetterProducer | None) -> int:
        for attempt in range(1, _SWAP_ATTEMPTS + 1):
            self._wait_for_maintenance()
            before = (dict(self.stored), self.read)
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
                self.stored, self.read = dict(before[0]), before[1]
                if self.bar is not None:
                    self.bar.n = self.read
                log.warning("swap not possible now; retrying",
                            extra={"attempt": attempt, "error": str(exc).strip()})
                self.follow_live()
        raise ReplayError(f"could not swap in {_SWAP_ATTEMPTS} attempts")

    def _wait_for_maintenance(self) -> None:
        """Before the swap's locks, wait (up to _MAINTENANCE_WAIT_SECONDS) for a VACUUM
        or ANALYZE of a view, autovacuum's mostly: waiting here holds nobody back, while
        the swap's lock request would queue the query API's reads behind it until
        PostgreSQL cancels the autovacuum, one deadlock_timeout (1 s) later."""
        waited, free = store.wait_out_maintenance(self.conn, self.settings.projection,
                                                  _MAINTENANCE_WAIT_SECONDS)
        if not free:
            log.warning("swapping while a VACUUM or ANALYZE holds a view",
                        extra={"waited_seconds": _MAINTENANCE_WAIT_SECONDS})
        elif waited:
            log.info("waited for a VACUUM or ANALYZE of a view before the swap")

    def _unseen_failures(self, live: Mapping[int, int]) -> list[UnreadableRecord]:
        # Recorded by every batch, this process's and the workers', in replay_failures.
        return store.failures_since(self.conn, self.settings.projection, live)

    # -------------------------------------------------------------- consuming

    @property
    def _batch_size(self) -> int:
        return self.settings.replay_batch_size

    def _live_positions(self) -> dict[int, int]:
        return store.read_positions(self.conn, self.settings.projection, topics.EVENTS)

    def _targets(self, live: Mapping[int, int]) -> dict[int, int]:
        # Never behind the live views: an answer must not go backwards at the swap.
        targets = {p: max(self.stored[p], live.get(p, self.stored[p])) for p in self.partitions}
        if self.bar is not None:
            added = sum(targets[p] - self.stored[p] for p in self.partitions)
            self.bar.total = self.bar.n + added
            self.bar.refresh()
        return targets

    def catch_up(self, targets: Mapping[int, int], deadline: float | None) -> None:
        """Apply every record below `targets` to the shadow copies."""
        starts = {(topics.EVENTS, p): self.stored[p] for p in self.partitions}
        ends = {(topics.EVENTS, p): max(targets[p], self.stored[p]) for p in self.partitions}
        with _Writer(self.conn, self.target) as writer:
            for messages in read_to_end(self.consumer, starts, ends, batch=self._batch_size,
                                        idle_limit=_STALL_SECONDS):
                if deadline is not None and time.monotonic() > deadline:
                    raise TimeoutError("catching up under the swap lock took too long")
                self._put(writer, self._staged(messages, targets))
            # Every position has reached its target, also where the last offsets were
            # transaction markers, which no record stands for: the shadow is there too.
            rest = {p: targets[p] for p in self.partitions if self.stored[p] < targets[p]}
            if rest:
                self._put(writer, Staged(next_offsets=rest))

    def _put(self, writer: _Writer, staged: Staged) -> None:
        if not staged.next_offsets:
            return
        writer.put(staged)
        # `stored` runs ahead of the commits by at most two batches; leaving `catch_up`
        # waits for them, and a failed write fails the replay (or rolls the swap back).
        moved = sum(o - self.stored[p] for p, o in staged.next_offsets.items())
        self.stored.update(staged.next_offsets)
        self.read += moved
        if self.bar is not None:
            self.bar.update(moved)

    def _staged(self, messages: Sequence[Message], targets: Mapping[int, int]) -> Staged:
        """A batch's records below `targets` staged, with the positions it reaches."""
        records = []
        stored = self.stored
        for msg in messages:
            p, offset = msg.partition(), msg.offset()
            if p is None or offset is None or not stored[p] <= offset < targets[p]:
                continue
            records.append((p, offset, msg.key(), msg.value()))
        # The consumer's position steps over transaction markers, which carry no event;
        # capped at the target, it is what the shadow has read once this batch commits.
        advanced: dict[int, int] = {}
        for tp in self.consumer.position([TopicPartition(topics.EVENTS, p)
                                          for p in self.partitions]):
            p = tp.partition
            if tp.offset != _INVALID_OFFSET and stored[p] < targets[p]:
                reached = min(tp.offset, targets[p])
                if reached > stored[p]:
                    advanced[p] = reached
        return replace(stage(records), next_offsets=advanced)


class _Writer:
    """Writes shadow batches on a thread of its own, one transaction (or savepoint) each.

    PostgreSQL applies batch n while this thread reads and decodes batch n+1: two cores
    busy instead of one. The connection is used by the writer alone until `__exit__`,
    which waits for every batch handed over and re-raises a write's failure.
    """

    def __init__(self, conn: psycopg.Connection, target: store.Target) -> None:
        self.conn = conn
        self.target = target
        self.queue: queue.Queue[Staged | None] = queue.Queue(maxsize=2)
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

    def put(self, staged: Staged) -> None:
        if self.error is not None:
            raise self.error
        self.queue.put(staged)

    def _run(self) -> None:
        while (staged := self.queue.get()) is not None:
            if self.error is not None:
                continue  # drain, so that `put` never blocks on a dead writer
            try:
                with self.conn.transaction():
                    store.apply_staged(self.conn, self.target, staged, topic=topics.EVENTS)
            except BaseException as exc:  # handed to the reading thread
                self.error = exc


# ------------------------------------------------------------------ worker processes


def _die_with_parent(parent: int) -> None:
    """SIGKILL this process when the replay that started it dies (Linux), so a replay
    killed with kill -9 leaves no worker writing behind it."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # died before the line above
        os._exit(1)


def _in_an_autogroup(autogroup: Path) -> bool:
    """Whether this process is scheduled in an autogroup: the file exists and names one."""
    try:
        return autogroup.read_text().startswith("/autogroup-")
    except OSError:
        return False


def _own_autogroup(nice: int, autogroup: Path = Path("/proc/self/autogroup")) -> None:
    """Move this worker into a scheduling group of its own, at `nice`. Linux's autogroups
    (kernel.sched_autogroup_enabled, the default on desktop and many server kernels) share
    the CPU first between sessions, equally, and only then by niceness inside each: a
    worker at niceness 10 in the session of the query API (or of the shell and every
    service it started) takes as much CPU from it as one at 0. A session of its own with
    the autogroup at `nice` makes the niceness count against every other process. The
    replay process's death still kills it (`_die_with_parent`), and it ignores Ctrl-C.
    A process in a CPU cgroup of its own (a container, a systemd slice with CPUWeight)
    is in no autogroup: the file reads empty, niceness already counts, and the worker
    stays in its session."""
    if nice <= 0 or not _in_an_autogroup(autogroup):
        return
    with contextlib.suppress(OSError):
        os.setsid()
    for _ in range(20):  # without CAP_SYS_ADMIN, one autogroup change per 0.1 s machine-wide
        try:
            autogroup.write_text(f"{nice}\n")
            return
        except BlockingIOError:
            time.sleep(0.05)
        except OSError:
            return


def _lock_partitions(conn: psycopg.Connection, projection: str,
                     partitions: Sequence[int]) -> None:
    """One session lock per partition: a worker of a killed replay that is still
    exiting keeps its partitions until its connection is gone."""
    deadline = time.monotonic() + _LOCK_WAIT_SECONDS
    for p in partitions:
        while True:
            row = conn.execute("SELECT pg_try_advisory_lock(hashtext(%s), %s)",
                               (f"replay-partition:{projection}", p)).fetchone()
            if row is not None and row[0]:
                break
            if time.monotonic() > deadline:
                raise ReplayError(f"partition {p} is still held by another replay worker")
            time.sleep(0.2)


_said_not_reniced = False  # whether this process logged that a backend kept its priority


def _say_not_reniced(level: int, message: str, **extra: object) -> None:
    """One log line per process (a replay process and each of its workers), not one per
    connection."""
    global _said_not_reniced
    if not _said_not_reniced:
        log.log(level, message, extra=extra)
        _said_not_reniced = True


def _lower_backend_priority(conn: psycopg.Connection, nice: int,
                            cpu: cpugroup.IdleGroup | None = None) -> None:
    """Give this worker's PostgreSQL backend the worker's niceness, and put it in the
    replay's idle CPU group (`projections.cpugroup`) when there is one, when PostgreSQL
    runs on this machine as a user we may renice: the backend does most of a replay's
    work, and the query API's reads should go first. Anything else (another host, a
    container, another user) leaves it as it is, with one log line saying so."""
    if nice <= 0:
        return
    host = conn.info.host
    pid = conn.info.backend_pid
    if host not in ("127.0.0.1", "localhost", "::1") and not host.startswith("/"):
        _say_not_reniced(logging.INFO,
                         "replay backends not reniced: PostgreSQL runs on another host",
                         host=host)
    else:
        try:
            # The pid is a PostgreSQL backend of this machine, not a namesake elsewhere.
            if not Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"postgres"):
                raise ProcessLookupError(f"process {pid} is no PostgreSQL backend here")
            if os.getpriority(os.PRIO_PROCESS, pid) < nice:
                os.setpriority(os.PRIO_PROCESS, pid, nice)
            if cpu is not None:
                cpu.join(pid)
        except OSError as exc:
            _say_not_reniced(logging.WARNING,
                             "replay backend not reniced: it keeps its priority",
                             backend_pid=pid, error=repr(exc)[:200])
    # Parallel workers are started by the postmaster, at its niceness, not this
    # backend's: a niced replay's scans and sorts must not move to them (/proc
    # accounting of a niced two-worker replay: 0.16 s of them at niceness 0).
    conn.execute("SET max_parallel_workers_per_gather = 0")
    conn.execute("SET max_parallel_maintenance_workers = 0")


def work(settings: ReplaySettings, partitions: Sequence[int], ends: Mapping[int, int],
         parent: int, go: EventType, loaded: EventType | None = None,
         cpu: cpugroup.IdleGroup | None = None) -> None:
    """A worker process: its partitions from the shadow's positions up to `ends`, once
    the replay process has set `go` (the shadow copies are there); sets `loaded` once
    its last batch is in, before merging its birth dates. `cpu`: the replay's idle CPU
    group, which the replay process moved this worker to, for its backend too."""
    _die_with_parent(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the replay process handles Ctrl-C
    # The replay process reniced this one as soon as it started (`Workers`); this covers
    # a worker started otherwise. Threads started from here on inherit it.
    if os.getpriority(os.PRIO_PROCESS, 0) < settings.replay_nice:
        os.setpriority(os.PRIO_PROCESS, 0, settings.replay_nice)
    _own_autogroup(settings.replay_nice)
    # The writer thread makes about ten round trips to PostgreSQL per batch while the
    # reading thread decodes the next one; after each answer it waits for the GIL, by
    # default up to 5 ms (py-spy: 1.2 s of a 6.3 s replay of 300,000 events). Ask the
    # reading thread to hand it over sooner.
    sys.setswitchinterval(_SWITCH_INTERVAL_SECONDS)
    configure_logging(settings.log_level, "replay")
    kafka = consumer(settings)
    try:
        # Started while the replay process migrates and prepares the shadow copies: the
        # interpreter's start-up and imports (about a second) overlap with that.
        go.wait()
        with psycopg.connect(settings.database_url, autocommit=True) as conn:
            _lower_backend_priority(conn, settings.replay_nice, cpu)
            # A commit need not wait for the disk: a crash of PostgreSQL loses the last
            # batches and their positions together (and empties the unlogged copies,
            # which the next replay notices), never one without the other.
            conn.execute("SET synchronous_commit = off")
            _lock_partitions(conn, settings.projection, partitions)
            stored = store.read_positions(conn, store.shadow(settings.projection).projection,
                                          topics.EVENTS)
            replay = Replay(settings, conn, kafka, partitions,
                            {p: stored.get(p, 0) for p in partitions})
            replay.catch_up({p: ends[p] for p in partitions}, deadline=None)
            if loaded is not None:
                loaded.set()  # no more decisions from this worker
            # Its partitions' appended birth dates grouped here, by every worker at once,
            # instead of all of them by the replay process after the last worker.
            step = time.monotonic()
            with conn.transaction():
                store.merge_births(conn, replay.target, partitions)
            _log_step("worker's merge", step)
    finally:
        kafka.close()


class Workers:
    """The worker processes of one replay, started and watched by the replay process."""

    def __init__(self, settings: ReplaySettings, groups: list[list[int]],
                 ends: Mapping[int, int], cpu: cpugroup.IdleGroup | None = None) -> None:
        # spawn: a fresh interpreter per worker, with no copy of this process's Kafka
        # client threads or PostgreSQL connection.
        context = multiprocessing.get_context("spawn")
        self.nice = settings.replay_nice
        self.cpu = cpu
        self.go = context.Event()
        self.loaded = [context.Event() for _ in groups]
        self.processes: list[BaseProcess] = [
            context.Process(target=work,
                            args=(settings, group, dict(ends), os.getpid(), self.go,
                                  self.loaded[i], cpu),
                            name=f"replay-worker-{i}", daemon=True)
            for i, group in enumerate(groups)]

    def __enter__(self) -> Workers:
        for process in self.processes:
            process.start()
            # At once, not in `work`: a spawned worker's interpreter start-up and imports
            # (about a second of CPU each, all workers at once) would otherwise run at
            # niceness 0, beside the query API (the slowest requests of a replay came in
            # its first seconds). Its only thread now; later ones inherit the niceness.
            if process.pid is None:
                continue
            with contextlib.suppress(OSError):
                os.setpriority(os.PRIO_PROCESS, process.pid, self.nice)
            if self.cpu is not None:
                self.cpu.join(process.pid)
        return self

    def __exit__(self, *exc: object) -> None:
        for process in self.processes:
            if process.is_alive():
                process.kill()
            process.join(10)

    def start_reading(self) -> None:
        """The shadow copies and their positions are ready: the workers may begin."""
        self.go.set()

    def wait(self, timeout: float) -> None:
        """Until a worker exits, or `timeout` seconds."""
        multiprocessing.connection.wait([p.sentinel for p in self.processes], timeout)

    def loaded_all(self) -> bool:
        """Whether every worker has its last batch in (and merges, or has exited)."""
        return all(event.is_set() for event in self.loaded)

    def running(self) -> bool:
        """True while a worker runs; raises once one has failed."""
        for process in self.processes:
            if process.exitcode not in (None, 0):
                raise ReplayError(f"{process.name} exited with {process.exitcode}")
        return any(process.exitcode is None for process in self.processes)


# ------------------------------------------------------------------ the replay process


def rebuild(settings: ReplaySettings, swap: bool = True, progress: bool = True,
            workers: int | None = None, restart: bool = False) -> Result:
    """Rebuild the views into shadow copies and, with `swap`, put them in place."""
    started = time.monotonic()
    workers = workers or settings.replay_workers or default_workers()
    kafka = consumer(settings)
    producer: DeadLetterProducer | None = None
    bar: tqdm | None = None
    shadow_name = store.shadow(settings.projection).projection
    # At niceness 0 the replay is meant to run at full priority (a benchmark's baseline).
    cpu = cpugroup.prepare(settings.replay_cpu_cgroup) if settings.replay_nice > 0 else None
    try:
        partitions, lows, ends = _extent(kafka)
        groups = shares(partitions, workers)
        # The workers start now and wait for `start_reading`: their start-up overlaps
        # with the migrations and the shadow copies' preparation below.
        with Workers(settings, groups, ends, cpu) as running, \
                psycopg.connect(settings.database_url, autocommit=True) as conn:
            migrations.apply(settings.database_url)
            producer = deadletter.producer(settings.kafka_bootstrap_servers)
            lock = conn.execute("SELECT pg_try_advisory_lock(hashtext(%s))",
                                (f"replay:{settings.projection}",)).fetchone()
            if lock is None or not lock[0]:
                raise ReplayError("another replay of this projection is running")
            with conn.transaction():
                store.ensure_generation(conn, settings.projection)
                if restart or not store.shadow_exists(conn, settings.projection):
                    store.create_shadow(conn, settings.projection, partitions)
                    # Every partition has a position from the start, an empty one too, as
                    # the swap gives every partition one among the live positions.
                    store.store_positions(conn, shadow_name, topics.EVENTS, lows)
            stored = store.read_positions(conn, shadow_name, topics.EVENTS)
            stored = {p: max(stored.get(p, lows[p]), lows[p]) for p in partitions}
            resumed = sum(stored[p] - lows[p] for p in partitions)
            if resumed:
                log.info("resuming an interrupted replay", extra={"offsets_done": resumed})
            total = sum(ends[p] - lows[p] for p in partitions)
            # The rate and ETA count this run's work only: what was resumed is `initial`.
            bar = tqdm(total=total, initial=resumed, unit="ev", unit_scale=True,
                       desc=f"replay ({len(groups)} workers)", disable=not progress,
                       dynamic_ncols=True, smoothing=0.1)
            store.start_replay(conn, settings.projection, len(groups))
            try:
                done = resumed
                _log_step("prepare", started)
                running.start_reading()
                step = time.monotonic()
                with ThreadPoolExecutor(1) as early:
                    decisions_logged: Future[None] | None = None
                    for done in _progress(conn, shadow_name, lows, running):
                        bar.update(done - bar.n)
                        store.record_replay(conn, settings.projection, len(groups), done,
                                            total)
                        if swap and decisions_logged is None and running.loaded_all():
                            decisions_logged = early.submit(_set_decisions_logged, settings, cpu)
                    if decisions_logged is not None:
                        decisions_logged.result()
                _log_step("workers", step)
                read = done - resumed
                stored = store.read_positions(conn, shadow_name, topics.EVENTS)
                stored = {p: max(stored.get(p, lows[p]), lows[p]) for p in partitions}
                replay = Replay(settings, conn, kafka, partitions, stored, bar)
                with _bulk_connection(settings, cpu) as bulk:
                    # The workers' appended birth dates, grouped once, while the live
                    # views still answer and the live projector runs (the swap merges only
                    # what the catch-up adds).
                    step = time.monotonic()
                    with bulk.transaction():
                        store.merge_births(bulk, replay.target)
                    step = _log_step("merge", step)
                    # Fresh tables have no planner statistics; give them some before they
                    # go live. A tenth of the default sample is enough for the views' key
                    # probes and ranges (0.03 s instead of 0.2 s at 300,000 sign-ups,
                    # idle), and autovacuum analyzes them in full later.
                    with bulk.transaction():
                        bulk.execute("SET LOCAL default_statistics_target = 10")
                        bulk.execute(sql.SQL("ANALYZE {}").format(sql.SQL(", ").join(
                            replay.target.table(name) for name in store.VIEWS)))
                    step = _log_step("analyze", step)
                    replay.follow_live()
                    step = _log_step("follow live", step)
                    skipped = len(store.failures_since(conn, settings.projection, {}))
                    generation = None
                    if swap:
                        _set_logged(settings, bulk, cpu, decisions=decisions_logged is None)
                        step = _log_step("set logged", step)
                if swap:
                    generation = replay.swap(producer)
                    _log_step("swap", step)
                else:
                    replay.finish_without_swap()
            finally:
                store.end_replay(conn, settings.projection)
            if skipped:
                log.warning("undecodable records skipped", extra={"count": skipped})
            return Result(read + replay.read, time.monotonic() - started, swap, generation,
                          resumed, len(groups))
    finally:
        if bar is not None:
            bar.close()
        kafka.close()
        if producer is not None:
            producer.close()
        cpugroup.remove(cpu)


@contextlib.contextmanager
def _bulk_connection(settings: ReplaySettings,
                     cpu: cpugroup.IdleGroup | None) -> Iterator[psycopg.Connection]:
    """A connection for the replay process's bulk steps after the workers (the merge of
    the birth dates, ANALYZE, SET LOGGED), its backend at the workers' niceness: those
    steps run seconds at full speed, and the query API's reads should go first. The swap,
    whose locks the query API's reads wait for, stays on the replay's own connection,
    not niced: a niced backend holding them would make those reads wait for the CPU."""
    with psycopg.connect(settings.database_url, autocommit=True) as conn:
        _lower_backend_priority(conn, settings.replay_nice, cpu)
        yield conn


def _log_step(name: str, since: float) -> float:
    """Log how long a step of the replay process took (INFO); returns now."""
    now = time.monotonic()
    log.info("replay step done", extra={"step": name, "seconds": round(now - since, 3)})
    return now


def _set_decisions_logged(settings: ReplaySettings, cpu: cpugroup.IdleGroup | None) -> None:
    """SET LOGGED of the decisions' copy (the widest rows, about 60% of what SET LOGGED
    writes), on a connection of its own: started once every worker has its last batch in
    (no worker writes decisions any more), so that it runs beside the workers' merges of
    the birth dates instead of after them. The catch-up and the swap write to it logged."""
    step = time.monotonic()
    with _bulk_connection(settings, cpu) as own:
        store.set_logged(own, settings.projection, ["signup_decisions"])
    _log_step("set logged (decisions)", step)


def _set_logged(settings: ReplaySettings, conn: psycopg.Connection,
                cpu: cpugroup.IdleGroup | None, decisions: bool = True) -> None:
    """SET LOGGED rewrites each copy into the WAL, one core per table: the decisions, if
    not done already (`_set_decisions_logged`), on a connection of their own, the rest
    on `conn` meanwhile (0.94 s at 110,000 events on one connection, under py-spy)."""
    rest = [name for name in store.VIEWS if name != "signup_decisions"]
    if not decisions:
        store.set_logged(conn, settings.projection, rest)
        return
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(_set_decisions_logged, settings, cpu)
        store.set_logged(conn, settings.projection, rest)
        first.result()


def _extent(kafka: Consumer) -> tuple[list[int], dict[int, int], dict[int, int]]:
    """The event log's partitions, and the first and end offset of each."""
    metadata = kafka.list_topics(topics.EVENTS, timeout=10).topics[topics.EVENTS]
    if metadata.error is not None:
        raise ReplayError(f"{topics.EVENTS}: {metadata.error}")
    partitions = sorted(metadata.partitions)
    lows, ends = {}, {}
    for p in partitions:
        lows[p], ends[p] = kafka.get_watermark_offsets(TopicPartition(topics.EVENTS, p),
                                                       timeout=10)
    return partitions, lows, ends


def _progress(conn: psycopg.Connection, shadow_name: str, lows: Mapping[int, int],
              workers: Workers) -> Iterator[int]:
    """Offsets in the shadow copies, every tick while the workers run: what they have
    committed, so the bar never counts a batch that a kill would lose."""
    while True:
        alive = workers.running()
        stored = store.read_positions(conn, shadow_name, topics.EVENTS)
        yield sum(max(0, stored.get(p, low) - low) for p, low in lows.items())
        if not alive:
            return
        workers.wait(_TICK_SECONDS)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m projections.replay", description=(
        "Rebuild every view from the first event of course-events and swap it in."))
    parser.add_argument("--workers", type=int, default=None, metavar="N",
                        help="processes sharing the partitions (default: REPLAY_WORKERS, "
                             "else the cores available)")
    parser.add_argument("--restart", action="store_true",
                        help="start from offset 0 even if an interrupted replay left its work")
    parser.add_argument("--no-swap", action="store_true",
                        help="build the shadow copies (<view>_shadow) and leave them there")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args()
    if args.workers is not None and args.workers < 1:
        parser.error("--workers must be at least 1")
    settings = load_settings(ReplaySettings, "replay")
    configure_logging(settings.log_level, "replay")
    try:
        result = rebuild(settings, swap=not args.no_swap, progress=not args.quiet,
                         workers=args.workers, restart=args.restart)
    except (ReplayError, TopicReadError, psycopg.Error, KafkaException) as exc:
        # Nothing live was touched: a failed replay leaves only shadow copies, with their
        # positions, from which the next replay goes on (--restart drops them).
        sys.exit(f"replay failed, the live views are unchanged: {exc}")
    where = (f"swapped in as generation {result.generation}" if result.swapped
             else "left in the *_shadow tables")
    resumed = f", continuing from {result.resumed_from} offsets" if result.resumed_from else ""
    print(f"replayed {result.events} offsets in {result.seconds:.1f}s "
          f"({result.rate:,.0f} events/s, {result.workers} workers{resumed}); {where}",
          flush=True)


if __name__ == "__main__":
    main()
