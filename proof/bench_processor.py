"""Throughput of one processor worker next to plain confluent-kafka loops, on one broker.

    KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:9092 .venv/bin/python -m proof.bench_processor \
        [--signups 50000] [--courses 100] [--out $RUN_DIR/bench/processor.json]

Fills a private command topic once (CreateCourse for every course, then the
sign-ups), then drains that same input with, in turn:

* the processor (`python -m course_processor`, exactly_once);
* a plain consume-decide-produce loop with confluent-kafka, the same decider on
  dicts, offsets committed every 0.1 s (at-least-once, no state kept in Kafka);
* the same loop with Kafka transactions (the events and offsets committed together
  every 0.1 s; still no state kept in Kafka).

Throughput counts commands per second between the first and the last event record
(record timestamps), so start-up is left out; `wall_s` includes it. Decision latency
(command produced -> event visible to a read_committed reader) is measured for the
processor at a trickle of 100 commands/s. All topics are private to the run and
deleted at the end. Not run by the tests.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from course_processor.deciding.commands import Unprocessable, read_command
from course_processor.deciding.handler import Decider
from course_processor.deciding.wire import event_headers
from proof.bench_kafka import arrivals
from proof.bench_stack import broker_from_env, process_cpu, results_dir
from schemas.codec import encode
from schemas.messages import CreateCourse, SignUp
from schemas.topics import dlq_of
from service_kit.kafka_auth import client_config
from stack.config import ROOT
from stack.ports import free_port
from stack.probes import deciding, processor_health
from stack.procs import terminate
from stack.waiting import wait_until


class Run:
    def __init__(self, servers: str, partitions: int) -> None:
        self.servers = servers
        self.partitions = partitions
        self.id = f"bench-{uuid.uuid4().hex[:8]}"
        self.commands = f"{self.id}-commands"
        self.admin = AdminClient({**client_config(), "bootstrap.servers": servers})

    def topic(self, name: str, partitions: int | None = None) -> str:
        futures = self.admin.create_topics([NewTopic(name, partitions or self.partitions, 1)])
        futures[name].result()
        return name

    def cleanup(self) -> None:
        mine = [t for t in self.admin.list_topics(timeout=10).topics if t.startswith(self.id)]
        if mine:
            for future in self.admin.delete_topics(mine).values():
                future.exception()

    def producer(self, **extra: Any) -> Producer:
        return Producer({**client_config(),
                         "bootstrap.servers": self.servers, "partitioner": "murmur2_random",
                         "linger.ms": 5, "acks": "all", "enable.idempotence": True, **extra})


def fill(run: Run, courses: int, signups: int, seed: int = 7) -> int:
    """Produce the input once; the number of commands."""
    rng = random.Random(seed)
    now = datetime.now(UTC)
    ids = [f"course-{i:03d}" for i in range(courses)]
    producer = run.producer()
    for course_id in ids:
        cmd = CreateCourse(str(uuid.uuid4()), course_id, "Bench", "Ada", 300, now, "bench")
        producer.produce(run.commands, key=course_id.encode(), value=encode(cmd))
    for i in range(signups):
        course_id = rng.choice(ids)
        student = rng.randrange(signups // courses * 2)  # about half are repeats
        signup = SignUp(str(uuid.uuid4()), str(uuid.uuid4()), course_id,
                        f"student{student}@example.org", "Student", date(2000, 1, 1), now,
                        str(uuid.uuid4()))
        producer.produce(run.commands, key=course_id.encode(), value=encode(signup))
        if i % 1000 == 0:
            producer.poll(0)
    assert producer.flush(60) == 0
    return courses + signups


def count_events(servers: str, topic: str, expected: int, timeout: float,
                 alive: Callable[[], bool] = lambda: True) -> tuple[int, int, int]:
    """Wait until `expected` event records are committed; (count, first_ts_ms, last_ts_ms)."""
    consumer = Consumer({**client_config(),
                         "bootstrap.servers": servers, "group.id": str(uuid.uuid4()),
                         "isolation.level": "read_committed", "enable.auto.commit": False})
    meta = consumer.list_topics(topic, timeout=10).topics[topic]
    consumer.assign([TopicPartition(topic, p, 0) for p in meta.partitions])
    count, first, last = 0, sys.maxsize, 0
    deadline = time.monotonic() + timeout
    while count < expected and time.monotonic() < deadline and alive():
        for msg in consumer.consume(10_000, timeout=0.5):
            if msg.error() is None:
                count += 1
                ts = msg.timestamp()[1]
                first, last = min(first, ts), max(last, ts)
    consumer.close()
    if count < expected:
        raise RuntimeError(f"{topic}: {count} of {expected} events after {timeout:.0f}s")
    return count, first, last


def result(name: str, n: int, first_ms: int, last_ms: int, wall: float,
           cpu: float) -> dict[str, Any]:
    """`cpu`: the CPU seconds it took, which another process's load on a shared machine
    moves far less than the throughput (six drains of the same input at load average
    3-7: 626-1568 commands/s, 533-680 CPU ms per 1000 commands)."""
    span = max((last_ms - first_ms) / 1000, 1e-3)
    return {"name": name, "commands": n, "span_s": round(span, 2),
            "commands_per_s": round(n / span), "wall_s": round(wall, 1),
            "cpu_s": round(cpu, 2), "cpu_ms_per_1000_commands": round(cpu / n * 1e6)}


def processor_env(run: Run, app_id: str, events: str, guarantee: str,
                  **extra: str) -> dict[str, str]:
    return {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": run.servers,
            "PROCESSOR_APP_ID": app_id, "PROCESSOR_COMMANDS_TOPIC": run.commands,
            "PROCESSOR_EVENTS_TOPIC": events, "PSEUDONYM_SECRET": "bench-secret",
            "PROCESSOR_PORT": str(free_port()), "PARTITIONS": str(run.partitions),
            "PROCESSOR_DATA_DIR": f"/tmp/{app_id}", "LOG_LEVEL": "WARNING", **extra}


def start_processor(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen([sys.executable, "-m", "course_processor"], cwd=ROOT, env=env,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


class CpuTrace:
    """A process's CPU seconds, and its main thread's, sampled every `every` seconds in a
    thread of this process: what it used between two wall-clock moments (the first and
    the last event record), start-up left out."""

    def __init__(self, pid: int, every: float = 0.05) -> None:
        self.pid, self.every = pid, every
        self.samples: list[tuple[float, float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.samples.append((time.time(), process_cpu(self.pid),
                                     _thread_cpu(self.pid, self.pid)))
            except (OSError, IndexError, ValueError):
                return  # the process is gone
            self._stop.wait(self.every)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def between(self, start: float, end: float) -> tuple[float, float]:
        """(process, main thread) CPU seconds from the last sample at or before `start`
        to the first at or after `end`."""
        before = [s for s in self.samples if s[0] <= start] or self.samples[:1]
        after = [s for s in self.samples if s[0] >= end] or self.samples[-1:]
        if not before or not after:
            return 0.0, 0.0
        return after[0][1] - before[-1][1], after[0][2] - before[-1][2]


def _thread_cpu(pid: int, tid: int) -> float:
    with open(f"/proc/{pid}/task/{tid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def bench_processor(run: Run, n: int, guarantee: str, logs: Path,
                    commit_interval: float = 0.1, label: str = "") -> dict[str, Any]:
    app_id = f"{run.id}-{guarantee}-{int(commit_interval * 1000)}ms{label}"
    events = run.topic(f"{app_id}-events")
    started = time.monotonic()
    env = processor_env(run, app_id, events, guarantee,
                        PROCESSOR_COMMIT_INTERVAL=str(commit_interval))
    proc = start_processor(env, logs / f"{app_id}.log")
    trace = CpuTrace(proc.pid)
    try:
        count, first, last = count_events(run.servers, events, n, timeout=600,
                                          alive=lambda: proc.poll() is None)
        cpu = process_cpu(proc.pid)  # start-up and recovery included
    finally:
        terminate(proc, 30)
        trace.stop()
    out = result(f"processor {guarantee} commit_interval={commit_interval}s", count, first,
                 last, time.monotonic() - started, cpu)
    # While it drained (first to last event record): CPU per command without the
    # start-up, and how busy the worker's main thread (the agent, faust, the producers)
    # was: near 1.0 the drain is bound by one core's CPU, below it the worker waits (for
    # the broker, or for a core the machine's other load holds).
    drain_cpu, main_cpu = trace.between(first / 1000, last / 1000)
    span = max((last - first) / 1000, 1e-3)
    out["drain_cpu_ms_per_1000_commands"] = round(drain_cpu / count * 1e6)
    out["main_thread_busy"] = round(main_cpu / span, 2)
    return out


def bench_loop(run: Run, n: int, transactional: bool) -> dict[str, Any]:
    """The baseline: consume, decide on dicts, produce; commit every 0.1 s."""
    name = "transactional" if transactional else "plain"
    events = run.topic(f"{run.id}-events-loop-{name}")
    group = f"{run.id}-loop-{name}"
    consumer = Consumer({**client_config(), "bootstrap.servers": run.servers, "group.id": group,
                         "auto.offset.reset": "earliest", "enable.auto.commit": False,
                         "isolation.level": "read_committed"})
    extra = {"transactional.id": group} if transactional else {}
    producer = run.producer(**extra)
    if transactional:
        producer.init_transactions()
        producer.begin_transaction()
    # Nothing it decides is old enough to be forgotten, and the processor learns that
    # from the first key of an ordered table; a dict has no order to ask cheaply.
    decider = Decider({}, {}, {}, secret=b"bench-secret", oldest=lambda _: [])
    consumer.subscribe([run.commands])
    started, cpu_before = time.monotonic(), process_cpu(os.getpid())
    consumed, last_commit = 0, time.monotonic()

    def commit() -> None:
        if transactional:
            producer.send_offsets_to_transaction(consumer.position(consumer.assignment()),
                                                 consumer.consumer_group_metadata())
            producer.commit_transaction()
            producer.begin_transaction()
        else:
            producer.flush()
            with contextlib.suppress(KafkaException):  # nothing consumed since the last one
                consumer.commit(asynchronous=False)

    while consumed < n:
        for msg in consumer.consume(500, timeout=0.5):
            if msg.error() is not None:
                continue
            consumed += 1
            try:
                cmd = read_command(msg.key(), msg.value())
            except Unprocessable:
                continue
            plan = decider.plan(cmd)
            event = plan.event
            if event is None:
                continue  # a repeated request: nothing written, as in the processor
            value = encode(event)
            headers: list[tuple[str, str | bytes | None]] = [
                *event_headers(event, "baseline", 0)]
            # The processor's order: the event first, then the table changes.
            producer.produce(events, key=msg.key(), value=value, headers=headers)
            decider.apply(plan)
        producer.poll(0)
        if time.monotonic() - last_commit >= 0.1:
            commit()
            last_commit = time.monotonic()
    commit()
    consumer.close()
    cpu = process_cpu(os.getpid()) - cpu_before
    count, first, last = count_events(run.servers, events, n, timeout=120)
    return result(f"confluent-kafka loop {name}", count, first, last,
                  time.monotonic() - started, cpu)


def bench_latency(run: Run, logs: Path, commit_interval: float,
                  rate: float = 100, seconds: float = 5, courses: int = 1) -> dict[str, Any]:
    """Produce to visible (read_committed) time of a decision, open loop at `rate`
    commands/s over `courses` courses (spread over the partitions by their ids), measured
    from each command's scheduled send time; a reader thread receives the events."""
    commands = f"{run.id}-latency-{commit_interval}"
    run.topic(commands)
    events = run.topic(f"{commands}-events")
    run.topic(dlq_of(commands))
    app_id = f"{commands.replace('.', '_')}-app"
    env = processor_env(run, app_id, events, "exactly_once",
                        PROCESSOR_COMMANDS_TOPIC=commands,
                        PROCESSOR_COMMIT_INTERVAL=str(commit_interval))
    proc = start_processor(env, logs / f"{app_id}.log")
    try:
        wait_until(lambda: len(deciding(processor_health(int(env["PROCESSOR_PORT"]))))
                   == run.partitions, 90, "the processor to decide every partition")
        producer = run.producer()
        consumer = Consumer({**client_config(),
                             "bootstrap.servers": run.servers, "group.id": str(uuid.uuid4()),
                             "isolation.level": "read_committed", "auto.offset.reset": "latest",
                             "enable.auto.commit": False, "fetch.wait.max.ms": 10})
        consumer.assign([TopicPartition(events, p, 0) for p in range(run.partitions)])
        now = datetime.now(UTC)
        ids = ["latency"] if courses == 1 else [f"latency-{i:03d}" for i in range(courses)]
        for course_id in ids:
            course = CreateCourse(str(uuid.uuid4()), course_id, "L", "Ada", 10**6, now, "x")
            producer.produce(commands, key=course_id.encode(), value=encode(course))
        producer.flush(10)
        sent: dict[str, float] = {}
        # (produced -> visible, produced -> decided) of each decision seen.
        latencies: list[tuple[float, float]] = []
        total = int(rate * seconds)
        stop = threading.Event()

        def read() -> None:
            while not stop.is_set() and (len(latencies) < total):
                latencies.extend(_seen(consumer, sent))

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        began = time.monotonic()
        for i in range(total):
            due = began + i / rate
            time.sleep(max(0.0, due - time.monotonic()))
            course_id = ids[i % len(ids)]
            signup = SignUp(str(uuid.uuid4()), str(uuid.uuid4()), course_id,
                            f"s{i}@example.org", "S", date(2000, 1, 1), now, str(i))
            sent[signup.correlation_id] = due
            producer.produce(commands, key=course_id.encode(), value=encode(signup))
            producer.poll(0)
        producer.flush(10)
        reader.join(30)
        stop.set()
        reader.join(5)
        consumer.close()
    finally:
        terminate(proc, 30)
    visible = sorted(v for v, _ in latencies)
    decided = sorted(d for _, d in latencies)
    to_visible = sorted(v - d for v, d in latencies)
    return {"name": f"latency exactly_once commit_interval={commit_interval}s",
            "rate_per_s": rate, "courses": courses,
            "decisions": len(latencies), "unseen": total - len(latencies),
            "p50_ms": _ms(visible, 0.5), "p99_ms": _ms(visible, 0.99),
            "p99_9_ms": _ms(visible, 0.999),
            # The record timestamp of the event (when the processor decided it) splits it:
            # produced -> decided (fetch and decide), decided -> visible (the commit).
            "produced_to_decided_p50_p99_ms": [_ms(decided, 0.5), _ms(decided, 0.99)],
            "decided_to_visible_p50_p99_ms": [_ms(to_visible, 0.5), _ms(to_visible, 0.99)]}


def _ms(ordered: list[float], q: float) -> int:
    return round(1000 * ordered[int(q * (len(ordered) - 1))]) if ordered else -1


def _seen(consumer: Consumer, sent: dict[str, float]) -> list[tuple[float, float]]:
    out = []
    for msg in arrivals(consumer):
        now = time.monotonic()
        shift = time.time() - now  # the record timestamps' clock onto time.monotonic()'s
        if msg.error() is None:
            correlation = dict(msg.headers() or []).get("correlation_id")
            if isinstance(correlation, bytes) and correlation.decode() in sent:
                began = sent.pop(correlation.decode())
                out.append((now - began, msg.timestamp()[1] / 1000 - shift - began))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--signups", type=int, default=50_000)
    parser.add_argument("--courses", type=int, default=100)
    parser.add_argument("--out", type=Path, default=results_dir() / "processor.json")
    parser.add_argument("--latency", action="store_true",
                        help="only the decision latency, open loop at --rate over "
                             "--courses courses for --seconds (PROCESSOR_* from the env)")
    parser.add_argument("--rate", type=float, default=200)
    parser.add_argument("--seconds", type=float, default=10)
    args = parser.parse_args()
    servers = broker_from_env()
    run = Run(servers, int(os.environ.get("PARTITIONS") or 4))
    logs = args.out.parent
    logs.mkdir(parents=True, exist_ok=True)
    results: list[dict[str, Any]] = []
    try:
        if args.latency:
            interval = float(os.environ.get("PROCESSOR_COMMIT_INTERVAL") or 0.1)
            results.append(bench_latency(run, logs, interval, args.rate, args.seconds,
                                         args.courses))
            print(json.dumps(results[-1]), flush=True)
            return
        run.topic(run.commands)
        run.topic(dlq_of(run.commands))
        n = fill(run, args.courses, args.signups)
        print(f"filled {run.commands} with {n} commands", flush=True)
        for step in (lambda: bench_processor(run, n, "exactly_once", logs),
                     lambda: bench_loop(run, n, transactional=False),
                     lambda: bench_loop(run, n, transactional=True),
                     lambda: bench_latency(run, logs, 0.1),
                     lambda: bench_latency(run, logs, 2.8)):
            results.append(step())
            print(json.dumps(results[-1]), flush=True)
    finally:
        run.cleanup()
    report = {"at": datetime.now(UTC).isoformat(), "broker": servers,
              "partitions": run.partitions, "cpus": os.cpu_count(), "results": results}
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
