"""The processor's state at scale: restarts, restores and failover with large histories.

    KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:9092 .venv/bin/python -m proof.bench_state \
        [--sizes 100000,1000000] [--failover] [--out $RUN_DIR/bench/fig8_state.json]

On private topics of the broker (commands, events, a processor app id of its own):

1. History is written straight where the processor would write it: each sign-up decided
   ahead of time by the processor's own Decider, its event to the events topic and its
   table changes to the changelog topics, over courses of 5,000 seats (most sign-ups
   accepted, so the seat table really grows). Fast: no processor in the loop.
2. Full restore: a processor starts on an empty disk and restores the whole state;
   its records/s (from its own log line) next to a plain confluent-kafka read of the
   same changelog topics (consume(n), read_committed, no processing).
3. Restart: with a trickle of live sign-ups flowing, the processor is SIGKILLed and
   started again on the same disk; seconds from the kill to the first decision
   committed by the new process, and its resident memory (VmRSS, VmHWM) once it decides.
4. With --failover, at the largest size: two processors share the partitions, one is
   SIGKILLed, seconds until its partitions decide again; the survivor never held them,
   so it restores them whole (the worst case).

Goals: 1 M within 1.2x of 0.1 M for restart and memory; restart <= the
session timeout + 5 s; RSS <= 250 MB; full restore >= 0.5x the plain read. Not run by
the tests.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from course_processor.deciding.handler import Decider, place_key
from course_processor.deciding.values import BUILT_KEY, TABLES, memory_key, outcome_of
from course_processor.deciding.wire import event_headers
from course_processor.faust_eos.failstop import FAIL_STOP_EXIT_CODE as FAIL_STOP_EXIT
from course_processor.state.migrate import BUILT_VALUE, command_partition
from proof.bench_kafka import decide, produce
from proof.bench_stack import broker_from_env, memory, results_dir
from schemas.codec import decode, encode
from schemas.messages import CreateCourse, SignUp, StudentSignedUp
from schemas.pseudonyms import seat_key
from schemas.topics import dlq_of
from service_kit.kafka_auth import client_config
from stack.config import ROOT
from stack.ports import free_port
from stack.probes import deciding, processor_health
from stack.procs import kill_now, terminate
from stack.waiting import wait_until

SECRET = "bench-state-secret"
SESSION_TIMEOUT = 10.0  # the processor's default
CAPACITY = 5_000
SIGNUPS_PER_COURSE = 4_000


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


@dataclass
class Run:
    servers: str
    partitions: int
    work: Path
    id: str = field(default_factory=lambda: f"bench-state-{uuid.uuid4().hex[:8]}")
    courses: dict[str, dict[str, Any]] = field(default_factory=dict)  # the courses table
    signups: int = 0

    @property
    def commands(self) -> str:
        return f"{self.id}-commands"

    @property
    def events(self) -> str:
        return f"{self.id}-events"

    def changelog(self, table: str) -> str:
        return f"{self.id}-{table}-changelog"

    def create_topics(self) -> None:
        admin = AdminClient({**client_config(), "bootstrap.servers": self.servers})
        new = [NewTopic(t, self.partitions, 1) for t in
               (self.commands, self.events, dlq_of(self.commands))]
        new += [NewTopic(self.changelog(t), self.partitions, 1,
                         config={"cleanup.policy": "compact"}) for t in TABLES]
        for future in admin.create_topics(new).values():
            future.result(30)

    def delete_topics(self) -> None:
        admin = AdminClient({**client_config(), "bootstrap.servers": self.servers})
        mine = [t for t in admin.list_topics(timeout=10).topics if t.startswith(self.id)]
        for future in admin.delete_topics(mine).values():
            future.exception()
        admin.delete_consumer_groups([self.id])


# ------------------------------------------------------------------ history


def grow(run: Run, total: int) -> float:
    """Decide sign-ups ahead of time until `total` are in the history. Seconds."""
    started = time.monotonic()
    producer = Producer({**client_config(),
                         "bootstrap.servers": run.servers, "linger.ms": 50, "acks": "all",
                         "batch.size": 1_000_000, "partitioner": "murmur2_random",
                         "queue.buffering.max.messages": 1_000_000})

    def send(topic: str, key: bytes, value: bytes, **extra: Any) -> None:
        produce(producer, topic, key, value, **extra)

    seats: dict[str, Any] = {}
    decided: dict[str, Any] = {}
    places: dict[str, Any] = {}
    decider = Decider(run.courses, seats, decided, SECRET.encode(), oldest=lambda _: [],
                      places=places)
    now = datetime.now(UTC).replace(microsecond=0)
    needed = -(-total // SIGNUPS_PER_COURSE)
    course_ids = [f"h{i:05d}" for i in range(needed)]
    touched: set[str] = set()
    for course in course_ids[len(run.courses):]:
        event = decide(decider, CreateCourse(str(uuid.uuid4()), course, "History", "Dr. Disk",
                                            CAPACITY, now, "history"))
        assert event is not None
        send(run.events, course.encode(), encode(event))
        touched.add(course)
    for i in range(run.signups, total):
        course = course_ids[i // SIGNUPS_PER_COURSE]
        sid = str(uuid.uuid4())
        cmd = SignUp(sid, sid, course, f"h{i}@example.org", "History Student",
                     date(1990, 1, 1) + timedelta(days=i % 9000), now, sid)
        event = decide(decider, cmd)
        assert event is not None
        part = command_partition(course, run.partitions)
        send(run.events, course.encode(), encode(event),
             headers=event_headers(event, "bench-history", 0))
        outcome = outcome_of(event)
        assert outcome is not None
        send(run.changelog("decided_signups"),
             json.dumps(memory_key(now.date(), sid)).encode(),
             json.dumps(outcome.encode()).encode(), partition=part)
        if isinstance(event, StudentSignedUp):
            send(run.changelog("seat_holders"),
                 json.dumps(seat_key(SECRET.encode(), course, cmd.email)).encode(),
                 json.dumps(sid).encode(), partition=part)
            # Since the registration term, each seat is also a live place.
            place = place_key(course, sid)
            send(run.changelog("places"), json.dumps(place).encode(),
                 json.dumps(places[place]).encode(), partition=part)
        touched.add(course)
        if i % 50_000 == 49_999:
            seats.clear()
            decided.clear()
            places.clear()
            producer.poll(0)
    for course in touched:
        send(run.changelog("courses"), json.dumps(course).encode(),
             json.dumps(run.courses[course]).encode(),
             partition=command_partition(course, run.partitions))
    # The mark a processor of this version writes at its first start: without it, the
    # first start would take this state for one from before the term and rebuild it from
    # course-events (state/migrate.py), and figure 9 would time that rebuild too.
    for part in range(run.partitions):
        send(run.changelog("decided_signups"), json.dumps(BUILT_KEY).encode(),
             json.dumps(BUILT_VALUE).encode(), partition=part)
    if producer.flush(300) != 0:
        raise RuntimeError("history not acknowledged")
    run.signups = total
    return time.monotonic() - started


def plain_read(run: Run) -> dict[str, Any]:
    """Every record of the changelog topics, read as fast as confluent-kafka reads."""
    consumer = Consumer({**client_config(),
                         "bootstrap.servers": run.servers, "group.id": f"{run.id}-plain",
                         "enable.auto.commit": False, "isolation.level": "read_committed",
                         "fetch.max.bytes": 64 << 20, "max.partition.fetch.bytes": 16 << 20,
                         "queued.max.messages.kbytes": 256 << 10})
    ends = {}
    for t in TABLES:
        for p in range(run.partitions):
            high = consumer.get_watermark_offsets(TopicPartition(run.changelog(t), p), 10)[1]
            if high:
                ends[(run.changelog(t), p)] = high
    consumer.assign([TopicPartition(t, p, 0) for t, p in ends])
    started, records = time.monotonic(), 0
    remaining = set(ends)
    while remaining:
        batch = consumer.consume(10_000, 0.5)
        records += sum(1 for m in batch if m.error() is None)
        for pos in consumer.position([TopicPartition(t, p) for t, p in remaining]):
            if pos.offset >= ends[(pos.topic, pos.partition)]:
                remaining.discard((pos.topic, pos.partition))
    seconds = time.monotonic() - started
    consumer.close()
    return {"records": records, "seconds": round(seconds, 2),
            "records_per_s": round(records / seconds)}


# ------------------------------------------------------------------ processors


PORTS: dict[str, int] = {}  # one address per worker name: a restart is the same member


class Processor:
    def __init__(self, run: Run, name: str) -> None:
        self.run, self.name = run, name
        self.port = PORTS.setdefault(name, free_port())
        self.data_dir = run.work / name
        self.log_path = run.work / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.restarts = 0

    def start(self) -> None:
        env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": self.run.servers,
               "PSEUDONYM_SECRET": SECRET, "PROCESSOR_APP_ID": self.run.id,
               "PROCESSOR_COMMANDS_TOPIC": self.run.commands,
               "PROCESSOR_EVENTS_TOPIC": self.run.events, "PROCESSOR_PORT": str(self.port),
               "PARTITIONS": str(self.run.partitions), "PROCESSOR_DATA_DIR": str(self.data_dir),
               "PROCESSOR_BUILD_FROM_EVENTS": "false", "LOG_LEVEL": "INFO",
               "PROCESSOR_INSTANCE_ID": self.name}
        with self.log_path.open("ab") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "course_processor"], cwd=ROOT,
                                         env=env, stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True)

    def kill(self) -> None:
        kill_now(self.proc)

    def supervise(self) -> None:
        """Start the worker again if it fail-stopped (exit 70), as the compose file's
        `restart: unless-stopped` does: a commit fenced while the group rebalances ends
        the worker by design (README, *Exactly once*), and a restart redoes its work."""
        if self.proc is not None and self.proc.poll() == FAIL_STOP_EXIT:
            log(f"  {self.name} fail-stopped (exit {FAIL_STOP_EXIT}); restarting it")
            self.restarts += 1
            self.start()

    def stop(self) -> None:
        terminate(self.proc, 30)

    def health(self) -> dict[str, Any] | None:
        return processor_health(self.port)

    def deciding(self) -> list[int]:
        return deciding(self.health())

    def memory(self) -> dict[str, float]:
        assert self.proc is not None
        return memory(self.proc.pid)

    def restores(self) -> list[tuple[int, float]]:
        """(records, seconds) of each restore this worker logged."""
        found = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            m = re.search(r"local state restored: (\d+) changelog records in ([\d.]+)s", line)
            if m:
                found.append((int(m.group(1)), float(m.group(2))))
        return found


# ------------------------------------------------------------------ live traffic


class Trickle:
    """Live sign-ups every 20 ms over courses on every partition, and a read_committed
    watcher of their decisions: (monotonic time seen, processor_id, command partition)."""

    def __init__(self, run: Run) -> None:
        self.run = run
        self.courses = self._courses()
        self.seen: list[tuple[float, str, int]] = []
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def _courses(self) -> dict[str, int]:
        courses: dict[str, int] = {}
        i = 0
        while len(set(courses.values())) < self.run.partitions:
            course = f"live-{i}"
            courses[course] = command_partition(course, self.run.partitions)
            i += 1
        return courses

    def start(self) -> None:
        producer = Producer({**client_config(),
                             "bootstrap.servers": self.run.servers, "acks": "all",
                             "linger.ms": 5, "partitioner": "consistent_random"})
        now = datetime.now(UTC)
        for course in self.courses:
            producer.produce(self.run.commands, key=course.encode(), value=encode(
                CreateCourse(str(uuid.uuid4()), course, "Live", "Dr. Load", 10**6, now, "l")))
        producer.flush(30)
        self._threads = [threading.Thread(target=self._send, args=(producer,), daemon=True),
                         threading.Thread(target=self._watch, daemon=True)]
        for t in self._threads:
            t.start()

    def _send(self, producer: Producer) -> None:
        names = list(self.courses)
        i = 0
        while not self._stop.is_set():
            course = names[i % len(names)]
            sid = str(uuid.uuid4())
            producer.produce(self.run.commands, key=course.encode(), value=encode(SignUp(
                sid, sid, course, f"live{i}.{sid[:6]}@example.org", "Live", date(2000, 1, 1),
                datetime.now(UTC), sid)))
            producer.poll(0)
            i += 1
            time.sleep(0.02)
        producer.flush(10)

    def _watch(self) -> None:
        consumer = Consumer({**client_config(), "bootstrap.servers": self.run.servers,
                             "group.id": f"{self.run.id}-watch", "enable.auto.commit": False,
                             "isolation.level": "read_committed", "fetch.wait.max.ms": 10})
        consumer.assign([TopicPartition(self.run.events, p, 0)
                         for p in range(self.run.partitions)])
        while not self._stop.is_set():
            for msg in consumer.consume(500, 0.05):
                if msg.error() is not None or not (msg.key() or b"").startswith(b"live-"):
                    continue
                event = decode(msg.value() or b"")
                if getattr(event, "signup_id", None):
                    writer = dict(msg.headers() or []).get("processor_id") or b""
                    self.seen.append((time.monotonic(),
                                      writer.decode() if isinstance(writer, bytes) else writer,
                                      self.courses[event.course_id]))
        consumer.close()

    def first_after(self, t: float, writer: str | None = None,
                    partitions: set[int] | None = None) -> float | None:
        for seen, processor_id, partition in list(self.seen):
            if seen >= t and (writer is None or processor_id.endswith(f":{writer}")) and (
                    partitions is None or partition in partitions):
                return seen
        return None

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(10)


# ------------------------------------------------------------------ measurements


def measure_size(run: Run, size: int) -> dict[str, Any]:
    log(f"history: growing to {size:,} sign-ups")
    written = grow(run, size)
    log(f"  written in {written:.0f}s; plain read of the changelogs")
    plain = plain_read(run)
    log(f"  plain read: {plain['records_per_s']:,} records/s")
    fresh = Processor(run, f"p-{size}")  # an empty disk: the full restore
    began = time.monotonic()
    fresh.start()
    wait_until(lambda: len(fresh.deciding()) == run.partitions, 1800, "the full restore")
    restores = fresh.restores()
    records, seconds = max(restores) if restores else (0, 0.0)
    restore = {"records": records, "seconds": seconds,
               "records_per_s": round(records / seconds) if seconds else None,
               "start_to_deciding_s": round(time.monotonic() - began, 1)}
    log(f"  full restore: {restore}")
    trickle = Trickle(run)
    trickle.start()
    try:
        wait_until(lambda: trickle.first_after(time.monotonic() - 1) is not None, 60,
                   "live decisions")
        time.sleep(3)
        killed_at = time.monotonic()
        fresh.kill()
        again = Processor(run, f"p-{size}")  # the same disk
        again.start()
        assert again.proc is not None
        writer = str(again.proc.pid)
        wait_until(lambda: trickle.first_after(killed_at, writer=writer) is not None,
                   600, "the first decision after the restart")
        first = trickle.first_after(killed_at, writer=writer)
        assert first is not None
        time.sleep(5)
        memory = again.memory()
        tail = again.restores()
        again.stop()
    finally:
        trickle.stop()
    result = {"signups": size, "history_written_s": round(written, 1),
              "plain_read": plain, "full_restore": restore,
              "restart_kill_to_first_decision_s": round(first - killed_at, 2),
              "restart_restored_records": tail[-1][0] if tail else None,
              "memory_after_restart": memory,
              "disk_mb": round(sum(f.stat().st_size for f in fresh.data_dir.rglob("*")
                                   if f.is_file()) / 2**20, 1)}
    log(f"  restart: {result['restart_kill_to_first_decision_s']}s, memory {memory}")
    return result


def measure_failover(run: Run) -> dict[str, Any]:
    """The worst case: the survivor never held the partitions it takes over. The first
    worker restores every partition alone; the second joins on an empty disk and
    restores only its share; then the first is killed."""
    log(f"failover: two processors, {run.signups:,} sign-ups")
    first, second = Processor(run, "fail-first"), Processor(run, "fail-second")
    first.start()
    trickle = Trickle(run)
    try:
        wait_until(lambda: len(first.deciding()) == run.partitions, 1800, "the first processor")
        second.start()

        def shared() -> bool:
            first.supervise()
            second.supervise()
            a, b = first.deciding(), second.deciding()
            return bool(a) and bool(b) and sorted(a + b) == list(range(run.partitions))
        wait_until(shared, 600, "two processors sharing the partitions")
        trickle.start()
        time.sleep(5)
        lost = set(first.deciding())
        # The worst case: the survivor never held these partitions. It may have, for a
        # moment, while the two joined; its copies (closed, since it does not own
        # them) go, so it restores them whole.
        for partition in lost:
            shutil.rmtree(second.data_dir / f"partition-{partition}", ignore_errors=True)
        killed_at = time.monotonic()
        first.kill()

        def survivor() -> str:
            """The surviving worker's pid (a new one if it fail-stopped and restarted)."""
            second.supervise()
            assert second.proc is not None
            return str(second.proc.pid)
        wait_until(lambda: trickle.first_after(killed_at, survivor(), lost) is not None, 900,
                   "the killed worker's partitions to decide again")
        pid = survivor()
        took = trickle.first_after(killed_at, pid, lost)
        assert took is not None
        restored = second.restores()
        result = {"signups": run.signups, "partitions_moved": sorted(lost),
                  "kill_to_first_decision_s": round(took - killed_at, 2),
                  "survivor_restored_records": restored[-1][0] if restored else None,
                  "survivor_restore_s": restored[-1][1] if restored else None,
                  "fail_stop_restarts": first.restarts + second.restarts}
    finally:
        trickle.stop()
        first.stop()
        second.stop()
    log(f"  failover: {result}")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m proof.bench_state")
    parser.add_argument("--sizes", default="100000,1000000")
    parser.add_argument("--failover", action="store_true")
    parser.add_argument("--out", type=Path, default=results_dir() / "fig8_state.json")
    args = parser.parse_args()
    servers = broker_from_env()
    print(json.dumps(run_state_bench(servers, [int(s) for s in args.sizes.split(",")],
                                     args.failover, args.out), indent=2))


def run_state_bench(servers: str, sizes: list[int], failover: bool, out: Path,
                    partitions: int = 4) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="bench-state-"))
    run = Run(servers, partitions, work)
    run.create_topics()
    points: list[dict[str, Any]] = []
    report: dict[str, Any] = {"measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
                              "partitions": partitions, "capacity_per_course": CAPACITY,
                              "session_timeout_s": SESSION_TIMEOUT, "points": points}
    try:
        for size in sizes:
            points.append(measure_size(run, size))
        if failover:
            report["failover"] = measure_failover(run)
    finally:
        run.delete_topics()
        shutil.rmtree(work, ignore_errors=True)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()
