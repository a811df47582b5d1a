"""The course processor against a real broker: kill -9, two workers, SIGSTOP and the DLQ.

Each test runs `python -m course_processor` subprocesses in a consumer group of its
own (a fresh PROCESSOR_APP_ID whose offsets start at the present end of
course-commands), produces commands straight to Kafka with confluent-kafka, hurts
the workers, and then audits the whole course-events log read with
isolation.level=read_committed:

* every sign-up produced has a decision, and all records of one sign-up carry one
  decision (the same event_id, type, reason and seat number);
* per course, accepted <= capacity and accepted == min(capacity, distinct students);
* per course, decisions appear in the order of their commands, seats counting 1, 2, ...

The broker comes from KAFKA_BOOTSTRAP_SERVERS (set by tests/integration/conftest.py).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import (
    Consumer,
    IsolationLevel,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, NewTopic

from schemas import topics
from schemas.codec import decode, encode, schema_versions
from schemas.messages import (
    CourseCreated,
    CreateCourse,
    SignUp,
    SignUpRejected,
    StudentSignedUp,
    event_id_for,
)
from service_kit.kafka_auth import client_config
from stack.ports import free_port
from stack.probes import deciding, processor_health
from stack.procs import kill_now, terminate
from stack.waiting import wait_until
from tests.support import event_in, headers_of, kafka_servers, key_of, position_of, value_of

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

ROOT = Path(__file__).resolve().parents[2]
SESSION_TIMEOUT = 6.0  # the broker's minimum: a dead or paused worker loses its partitions fast


# ---------------------------------------------------------------- the broker


def ensure_topics(servers: str) -> int:
    """The project's topics exist (created as stack/kafka.py does); their partition count."""
    from stack.kafka import topic_configs

    admin = AdminClient({**client_config(), "bootstrap.servers": servers})
    existing = admin.list_topics(timeout=10).topics
    wanted = [NewTopic(name, int(os.environ.get("PARTITIONS") or 4), 1, config=cfg)
              for name, cfg in topic_configs().items() if name not in existing]
    for future in admin.create_topics(wanted).values() if wanted else ():
        try:
            future.result()
        except Exception as exc:
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise
    return len(admin.list_topics(topics.COMMANDS, timeout=10).topics[topics.COMMANDS].partitions)


def start_group_at_end(servers: str, group: str) -> None:
    """Commit the group's offsets at the present end, so it sees only this test's commands."""
    consumer = Consumer({**client_config(), "bootstrap.servers": servers, "group.id": group,
                         "enable.auto.commit": False})
    meta = consumer.list_topics(topics.COMMANDS, timeout=10).topics[topics.COMMANDS]
    partitions = meta.partitions
    ends = [TopicPartition(topics.COMMANDS, p,
                           consumer.get_watermark_offsets(TopicPartition(topics.COMMANDS, p),
                                                          timeout=10)[1])
            for p in partitions]
    def committed() -> bool:
        # A broker just started answers NOT_COORDINATOR or COORDINATOR_LOAD_IN_PROGRESS
        # while it loads __consumer_offsets: ask again.
        try:
            consumer.commit(offsets=ends, asynchronous=False)
        except KafkaException as exc:
            if exc.args[0].code() not in (KafkaError.NOT_COORDINATOR,
                                          KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
                                          KafkaError.COORDINATOR_NOT_AVAILABLE):
                raise
            return False
        return True

    try:
        wait_until(committed, 60, f"the offsets of group {group} to be committed")
    finally:
        consumer.close()


def wait_group_caught_up(servers: str, group: str, timeout: float = 60) -> None:
    """Until the group has committed offsets at the end of every command partition: each
    command read, decided and its offset committed, so the workers hold nothing."""
    consumer = Consumer({**client_config(), "bootstrap.servers": servers, "group.id": group,
                         "enable.auto.commit": False})
    try:
        partitions = [TopicPartition(topics.COMMANDS, p) for p in
                      consumer.list_topics(topics.COMMANDS, timeout=10)
                      .topics[topics.COMMANDS].partitions]
        ends = {tp.partition: consumer.get_watermark_offsets(tp, timeout=10)[1]
                for tp in partitions}

        def caught_up() -> bool:
            done = consumer.committed(partitions, timeout=10)
            return all(tp.offset >= ends[tp.partition] for tp in done)

        wait_until(caught_up, timeout, f"group {group} to commit every command's offset")
    finally:
        consumer.close()


def delete_topics_of(servers: str, app_id: str) -> None:
    admin = AdminClient({**client_config(), "bootstrap.servers": servers})
    mine = [t for t in admin.list_topics(timeout=10).topics if t.startswith(f"{app_id}-")]
    if mine:
        for future in admin.delete_topics(mine).values():
            future.exception()
    admin.delete_consumer_groups([app_id])


# ---------------------------------------------------------------- workers


class Worker:
    """One `python -m course_processor` process."""

    def __init__(self, app_id: str, name: str, log_dir: Path, store: str | None = None,
                 port: int | None = None) -> None:
        self.name = name
        # A restarted worker given the same store finds its local state on disk.
        self.data_dir = log_dir / (store or name)
        self.port = port or free_port()
        self.log_path = log_dir / f"{name}.log"
        env = {
            **os.environ,
            "KAFKA_BOOTSTRAP_SERVERS": kafka_servers(),
            "PROCESSOR_APP_ID": app_id,
            "PROCESSOR_PORT": str(self.port),
            "PROCESSOR_DATA_DIR": str(self.data_dir),
            # Static membership: a restart on the same store is the same member.
            "PROCESSOR_INSTANCE_ID": f"{app_id}-{store or name}",
            "PSEUDONYM_SECRET": "integration-test-secret",
            "PROCESSOR_SESSION_TIMEOUT": str(SESSION_TIMEOUT),
            "LOG_LEVEL": os.environ.get("TEST_PROCESSOR_LOG_LEVEL", "INFO"),
        }
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "course_processor"], cwd=ROOT, env=env,
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )

    def decided_since(self, since_ms: int, max_generation: int) -> int:
        """How many "decided" lines this worker logged at or after `since_ms` (epoch ms)
        in a consumer generation up to `max_generation`."""
        count = 0
        for line in self.log_path.read_text(errors="replace").splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if (isinstance(entry, dict) and entry.get("msg") == "decided"
                    and entry.get("generation", max_generation + 1) <= max_generation
                    and datetime.fromisoformat(entry["ts"]).timestamp() * 1000 >= since_ms):
                count += 1
        return count

    def ready(self) -> int:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/readyz", timeout=2) as r:
                return int(r.status)
        except urllib.error.HTTPError as err:
            return int(err.code)

    def health(self) -> dict[str, Any] | None:
        return processor_health(self.port)

    def status_of(self, path: str) -> int:
        """The HTTP status of a GET of `path` on the worker's web server."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=2) as r:
                return int(r.status)
        except urllib.error.HTTPError as err:
            return int(err.code)

    def deciding(self) -> list[int]:
        """The partitions this worker decides now (none while rebalancing or recovering)."""
        return deciding(self.health())

    def signal(self, sig: signal.Signals) -> None:
        self.proc.send_signal(sig)

    def kill(self) -> None:
        kill_now(self.proc)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            terminate(self.proc, 15)

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=2) as r:
            return r.read().decode()


@dataclass
class Cluster:
    servers: str
    partitions: int
    log_dir: Path
    app_id: str = field(default_factory=lambda: f"test-processor-{uuid.uuid4().hex[:10]}")
    workers: list[Worker] = field(default_factory=list)

    def start(self, name: str, store: str | None = None) -> Worker:
        # A restart on the same store is the same member of the group (static
        # membership), at the same address: faust's assignor checks the address.
        same = [w for w in self.workers if w.data_dir == self.log_dir / (store or name)]
        worker = Worker(self.app_id, name, self.log_dir, store,
                        port=same[-1].port if same else None)
        self.workers.append(worker)
        return worker

    def stop_all(self) -> None:
        for worker in self.workers:
            worker.stop()

    def wait_sharing(self, *workers: Worker, timeout: float = 60) -> None:
        """Wait until exactly these workers decide, together, every partition once."""
        def shared() -> bool:
            owned = [p for w in workers for p in w.deciding()]
            return sorted(owned) == list(range(self.partitions)) and all(
                w.deciding() for w in workers)
        wait_until(shared, timeout, f"{[w.name for w in workers]} to share the partitions")

    def logs(self) -> str:
        return "\n".join(f"--- {w.name}\n{w.log_path.read_text()[-4000:]}" for w in self.workers)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    servers = kafka_servers()
    c = Cluster(servers, ensure_topics(servers), tmp_path)
    start_group_at_end(servers, c.app_id)
    yield c
    for worker in c.workers:
        worker.stop()
    delete_topics_of(servers, c.app_id)


# ---------------------------------------------------------------- workload


@dataclass
class Workload:
    """Courses with small capacities and sign-ups: repeated students in other letter case,
    repeated sign-up ids (a retried request), some courses overfilled, one underfilled."""

    rng: random.Random
    capacity: dict[str, int] = field(default_factory=dict)
    students: dict[str, list[str]] = field(default_factory=dict)
    commands: list[tuple[str, bytes]] = field(default_factory=list)
    order: dict[str, int] = field(default_factory=dict)  # command_id -> position
    signups: dict[str, tuple[str, str]] = field(default_factory=dict)  # id -> (course, student)
    _sent: list[SignUp] = field(default_factory=list)

    def course(self, capacity: int, students: int) -> str:
        course_id = f"t-{uuid.uuid4().hex[:12]}"
        self.capacity[course_id] = capacity
        self.students[course_id] = [f"student{i}.{uuid.uuid4().hex[:6]}@example.org"
                                    for i in range(students)]
        self._add(course_id, CreateCourse(str(uuid.uuid4()), course_id, "Crash course",
                                          "Ada Lovelace", capacity, _now(), str(uuid.uuid4())))
        return course_id

    def signup(self, course_id: str) -> None:
        if self._sent and self.rng.random() < 0.1:
            again = self.rng.choice(self._sent)  # the same sign-up, retried: a new command
            if again.course_id == course_id:
                self._add(course_id, SignUp(str(uuid.uuid4()), again.signup_id, course_id,
                                            again.email, again.name, again.date_of_birth,
                                            _now(), str(uuid.uuid4())))
                return
        student = self.rng.choice(self.students[course_id])
        email = "".join(c.upper() if self.rng.random() < 0.3 else c for c in student)
        cmd = SignUp(str(uuid.uuid4()), str(uuid.uuid4()), course_id, email, "Student",
                     date(2000, 1, 1), _now(), str(uuid.uuid4()))
        self._sent.append(cmd)
        self.signups[cmd.signup_id] = (course_id, student)
        self._add(course_id, cmd)

    def _add(self, course_id: str, cmd: CreateCourse | SignUp) -> None:
        self.order[cmd.command_id] = len(self.order)
        self.commands.append((course_id, encode(cmd)))


def _now() -> datetime:
    return datetime.now(UTC)


def make_workload(courses: int, signups: int, seed: int) -> tuple[Workload, list[str]]:
    w = Workload(random.Random(seed))
    ids = [w.course(capacity=5 + 5 * (i % 3), students=12 + 8 * (i % 3)) for i in range(courses)]
    ids.append(w.course(capacity=30, students=10))  # more seats than students
    for _ in range(signups):
        w.signup(w.rng.choice(ids))
    return w, ids


class CommandProducer:
    def __init__(self, servers: str, partitioner: str = "murmur2_random") -> None:
        # murmur2: the same partition for a key as the Java client and faust would pick;
        # the command API's is consistent_random (CRC-32).
        self.producer = Producer({**client_config(), "bootstrap.servers": servers, "acks": "all",
                                  "enable.idempotence": True, "linger.ms": 5,
                                  "partitioner": partitioner})
        self.delivered: list[tuple[int, int]] = []

    def send(self, course_id: str, value: bytes) -> None:
        def on_delivery(err: KafkaError | None, msg: object) -> None:
            assert err is None, err
            self.delivered.append((msg.partition(), msg.offset()))  # type: ignore[attr-defined]

        self.producer.produce(topics.COMMANDS, key=course_id.encode(), value=value,
                              on_delivery=on_delivery)
        self.producer.poll(0)

    def send_all(self, commands: list[tuple[str, bytes]]) -> None:
        for course_id, value in commands:
            self.send(course_id, value)
        assert self.producer.flush(30) == 0


# ---------------------------------------------------------------- the event log


@dataclass
class Decided:
    offset: tuple[int, int]
    value: bytes
    headers: dict[str, bytes]
    timestamp_ms: int


class EventLog:
    """course-events as a read_committed reader sees it, from the first record on
    (or, with isolation="read_uncommitted", everything written, aborted or not)."""

    def __init__(self, servers: str, courses: list[str],
                 isolation: str = "read_committed") -> None:
        self.courses = {c.encode() for c in courses}
        self.consumer = Consumer({**client_config(),
                                  "bootstrap.servers": servers, "group.id": str(uuid.uuid4()),
                                  "isolation.level": isolation,
                                  "enable.auto.commit": False})
        meta = self.consumer.list_topics(topics.EVENTS, timeout=10).topics[topics.EVENTS]
        self.consumer.assign([TopicPartition(topics.EVENTS, p, 0) for p in meta.partitions])
        self.records: dict[bytes, list[Decided]] = defaultdict(list)  # course -> in log order
        self.decided: set[str] = set()

    def read(self, seconds: float = 0.5) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            for msg in self.consumer.consume(1000, timeout=0.1):
                if msg.error() is None and msg.key() in self.courses:
                    self.records[key_of(msg)].append(Decided(
                        position_of(msg), value_of(msg), headers_of(msg), msg.timestamp()[1]))
                    self.decided.add(getattr(decode(value_of(msg)), "signup_id", ""))

    def wait_partly_decided(self, wave: list[tuple[str, bytes]], fraction: float,
                            timeout: float) -> None:
        """Wait until `fraction` of the wave's sign-ups are decided, but not all of them."""
        ids = signups_in(wave)

        def enough() -> bool:
            self.read(0.05)
            return len(ids & self.decided) >= fraction * len(ids)
        wait_until(enough, timeout, f"{fraction:.0%} of a wave decided")

    def wait_all_decided(self, signups: set[str], timeout: float) -> None:
        def done() -> bool:
            self.read()
            return signups <= self.decided
        wait_until(done, timeout, f"decisions for {len(signups)} sign-ups")

    def close(self) -> None:
        self.consumer.close()


def audit(log: EventLog, w: Workload) -> dict[str, int]:
    log.read(1.0)
    decisions: dict[str, set[tuple]] = defaultdict(set)
    totals = {"records": 0, "repeats": 0}
    for course_id, records in ((c.decode(), rs) for c, rs in log.records.items()):
        seen: set[str] = set()
        accepted: list[int] = []
        last_position = -1
        for record in records:
            event = event_in(record.value)
            totals["records"] += 1
            assert record.headers["event_id"].decode() == event.event_id
            assert record.headers["event_type"].decode() == event.event_type
            if isinstance(event, StudentSignedUp | SignUpRejected):
                decisions[event.signup_id].add((
                    event.event_id, event.event_type, getattr(event, "reason", None),
                    getattr(event, "seats_taken", None)))
            if event.event_id in seen:
                totals["repeats"] += 1
                continue
            seen.add(event.event_id)
            # Per course, first records come in the order their commands were produced.
            position = w.order[event.causation_id]
            assert position > last_position, f"{course_id}: decisions out of command order"
            last_position = position
            if isinstance(event, StudentSignedUp):
                accepted.append(event.seats_taken)
        capacity = w.capacity[course_id]
        students = {s for c, s in w.signups.values() if c == course_id}
        assert accepted == list(range(1, len(accepted) + 1)), f"{course_id}: seats {accepted}"
        assert len(accepted) <= capacity
        assert len(accepted) == min(capacity, len(students)), (course_id, capacity, len(students))
    assert set(w.signups) <= set(decisions), "some sign-ups have no decision"
    conflicting = {s: d for s, d in decisions.items() if len(d) != 1}
    assert not conflicting, f"sign-ups with more than one decision: {conflicting}"
    return {**totals, "signups": len(w.signups), "courses": len(log.records)}


def audit_after_all(cluster: Cluster, log: EventLog, w: Workload) -> dict[str, int]:
    """Every sign-up decided, the log audited, then every worker stopped and its disk
    compared with the committed changelog."""
    log.wait_all_decided(set(w.signups), timeout=90)
    report = audit(log, w)
    cluster.stop_all()
    report.update(assert_disk_is_committed_changelog(cluster))
    return report


@contextmanager
def showing_logs(cluster: Cluster, log: EventLog) -> Iterator[None]:
    """The workers' logs printed when an assertion fails; the log reader closed always."""
    try:
        yield
    except AssertionError:
        print(cluster.logs())
        raise
    finally:
        log.close()


# ---------------------------------------------------------------- tests


def test_kill_9_three_times_during_a_burst(cluster: Cluster) -> None:
    w, courses = make_workload(courses=5, signups=2000, seed=1)
    producer, log = CommandProducer(cluster.servers), EventLog(cluster.servers, courses)
    worker = cluster.start("solo-1")
    with showing_logs(cluster, log):
        for i, wave in enumerate(_waves(w.commands, 4)):
            cluster.wait_sharing(worker, timeout=SESSION_TIMEOUT * 6)
            producer.send_all(wave)
            if i < 3:
                log.wait_partly_decided(wave, random.uniform(0.1, 0.6), timeout=60)
                worker.kill()  # in the middle of the wave
                worker = cluster.start(f"solo-{i + 2}", store="solo")
        report = audit_after_all(cluster, log, w)
    print("audit", report)


def test_two_workers_one_killed(cluster: Cluster) -> None:
    w, courses = make_workload(courses=6, signups=1500, seed=2)
    producer, log = CommandProducer(cluster.servers), EventLog(cluster.servers, courses)
    a, b = cluster.start("a"), cluster.start("b")
    waves = _waves(w.commands, 3)
    with showing_logs(cluster, log):
        cluster.wait_sharing(a, b)
        producer.send_all(waves[0])
        log.wait_partly_decided(waves[0], random.uniform(0.1, 0.6), timeout=60)
        a.kill()
        producer.send_all(waves[1])
        cluster.wait_sharing(b, timeout=SESSION_TIMEOUT * 6)
        # Partitions move back while b is deciding; a's disk is behind for some of them.
        a2 = cluster.start("a-restarted", store="a")
        producer.send_all(waves[2])
        cluster.wait_sharing(a2, b)
        report = audit_after_all(cluster, log, w)
    print("audit", report)


def assert_fenced(log: EventLog, worker_id: str, paused_generation: int,
                  resumed_at_ms: int) -> None:
    """Nothing the paused worker decided in its old generation after resuming is
    committed, and along each partition the committed generations never go back (the
    owner of an older generation cannot commit once a newer owner has fenced it)."""
    late = [r for rs in log.records.values() for r in rs
            if r.headers.get("processor_id") == worker_id.encode()
            and int(r.headers["generation"]) <= paused_generation
            and r.timestamp_ms >= resumed_at_ms]
    assert not late, f"the paused worker got {len(late)} old-generation records committed"
    by_partition: dict[int, list[Decided]] = defaultdict(list)
    for rs in log.records.values():
        for r in rs:
            by_partition[r.offset[0]].append(r)
    for partition, rs in by_partition.items():
        generations = [int(r.headers["generation"]) for r in sorted(rs, key=lambda r: r.offset)]
        assert generations == sorted(generations), f"partition {partition}: {generations}"


def test_paused_worker_is_fenced(cluster: Cluster) -> None:
    w, courses = make_workload(courses=6, signups=1500, seed=3)
    producer, log = CommandProducer(cluster.servers), EventLog(cluster.servers, courses)
    a, b = cluster.start("a"), cluster.start("b")
    cluster.wait_sharing(a, b)

    sent = threading.Event()
    commands = list(w.commands)
    producer.send_all(commands[: len(courses)])

    def trickle() -> None:  # a steady stream of sign-ups through the pause and after
        for course_id, value in commands[len(courses):]:
            producer.send(course_id, value)
            time.sleep(0.01)
        producer.producer.flush(30)
        sent.set()

    feeder = threading.Thread(target=trickle, daemon=True)
    feeder.start()
    time.sleep(1.0)
    health = a.health()
    a_id, paused_generation = health["processor_id"], health["generation"]  # type: ignore[index]
    a.signal(signal.SIGSTOP)
    with showing_logs(cluster, log):
        # b takes a's partitions once a misses its session timeout, and goes on deciding.
        cluster.wait_sharing(b, timeout=SESSION_TIMEOUT * 6)
        log.read(0.1)
        before = len(log.decided)

        def b_decides() -> bool:
            log.read(0.1)
            return len(log.decided) >= before + 100
        wait_until(b_decides, 30, "the remaining worker to go on deciding")
        resumed_at_ms = int(time.time() * 1000)
        # On SIGCONT a goes on with the commands it had fetched, in its old generation,
        # until it learns of the rebalance; it may then rejoin and own partitions
        # again, legitimately, in a newer generation.
        a.signal(signal.SIGCONT)
        wait_until(sent.is_set, 60, "the sign-ups to be produced")
        log.wait_all_decided(set(w.signups), timeout=90)
        report = audit(log, w)
        assert_fenced(log, a_id, paused_generation, resumed_at_ms)
        # The fenced worker's aborted transactions left nothing on its disk.
        cluster.stop_all()
        report.update(assert_disk_is_committed_changelog(cluster))
    # Fenced writes never reach the log (the broker refuses them), so the attempts are
    # counted from the paused worker's own log: how much the fencing had to stop.
    attempts = a.decided_since(resumed_at_ms, max_generation=paused_generation)
    print("audit", report, "decisions the paused worker attempted in its old generation:",
          attempts, "fenced:", "ProducerFenced" in a.log_path.read_text(errors="replace"),
          "exit code:", a.proc.poll())


def test_paused_idle_worker_rejoins_in_a_new_generation(cluster: Cluster) -> None:
    """The other way back from a pause: with nothing in flight, the resumed worker hears
    of the rebalance before it writes, rejoins, and decides again, from the committed
    state only."""
    w, courses = make_workload(courses=8, signups=600, seed=5)
    producer, log = CommandProducer(cluster.servers), EventLog(cluster.servers, courses)
    a, b = cluster.start("a"), cluster.start("b")
    cluster.wait_sharing(a, b)
    first, rest = _waves(w.commands, 2)
    with showing_logs(cluster, log):
        producer.send_all(first)
        log.wait_all_decided(signups_in(first), timeout=60)
        # Idle means the offsets are committed too: a decision's events commit with its
        # state, and its offset can follow in the next transaction. Paused before that
        # one, the worker would resume straight into a fenced commit and stop for good,
        # which is the busy-worker case above, not this one.
        wait_group_caught_up(cluster.servers, cluster.app_id)
        health = a.health()
        a_id, paused_generation = health["processor_id"], health["generation"]  # type: ignore[index]
        a.signal(signal.SIGSTOP)
        cluster.wait_sharing(b, timeout=SESSION_TIMEOUT * 6)
        resumed_at_ms = int(time.time() * 1000)
        a.signal(signal.SIGCONT)
        cluster.wait_sharing(a, b, timeout=60)
        assert a.health()["generation"] > paused_generation  # type: ignore[index]
        assert (a.ready(), b.ready()) == (200, 200)
        producer.send_all(rest)
        log.wait_all_decided(set(w.signups), timeout=60)
        report = audit(log, w)
        assert_fenced(log, a_id, paused_generation, resumed_at_ms)
        assert a.proc.poll() is None, "the resumed worker ended"
        cluster.stop_all()
        report.update(assert_disk_is_committed_changelog(cluster))
    print("audit", report)


def test_undecodable_and_invalid_commands_go_to_the_dlq(cluster: Cluster) -> None:
    w, courses = make_workload(courses=1, signups=20, seed=4)
    course = courses[0]
    producer, log = CommandProducer(cluster.servers), EventLog(cluster.servers, courses)
    dlq = Consumer({**client_config(),
                    "bootstrap.servers": cluster.servers, "group.id": str(uuid.uuid4()),
                    "isolation.level": "read_committed", "enable.auto.commit": False})
    ends = {p: dlq.get_watermark_offsets(TopicPartition(topics.COMMANDS_DLQ, p), timeout=10)[1]
            for p in dlq.list_topics(topics.COMMANDS_DLQ, timeout=10)
            .topics[topics.COMMANDS_DLQ].partitions}
    dlq.assign([TopicPartition(topics.COMMANDS_DLQ, p, o) for p, o in ends.items()])
    worker = cluster.start("solo")
    garbage = b"\x00not avro at all " + uuid.uuid4().bytes
    empty_name = SignUp(str(uuid.uuid4()), str(uuid.uuid4()), course, "x@example.org", " ",
                        date(2000, 1, 1), _now(), str(uuid.uuid4()))
    producer.send_all([(course, garbage), (course, encode(empty_name))])
    bad = list(producer.delivered)
    producer.send_all(w.commands)

    dead: list = []

    def dead_lettered() -> bool:
        dead.extend(m for m in dlq.consume(100, timeout=0.2)
                    if m.error() is None and m.key() == course.encode())
        return len(dead) >= 2

    try:
        with showing_logs(cluster, log):
            wait_until(dead_lettered, 60, "two dead letters")
            log.wait_all_decided(set(w.signups), timeout=60)
            audit(log, w)
    finally:
        dlq.close()
    assert [m.value() for m in dead] == [garbage, encode(empty_name)]
    for msg, (partition, offset) in zip(dead, bad, strict=True):
        headers = {k: v.decode() for k, v in msg.headers()}
        assert headers["dlq.source.topic"] == topics.COMMANDS
        assert (int(headers["dlq.source.partition"]), int(headers["dlq.source.offset"])) == (
            partition, offset)
        utc_offset = datetime.fromisoformat(headers["dlq.failed_at"]).utcoffset()
        assert utc_offset is not None and utc_offset.total_seconds() == 0
    reasons = [dict(m.headers())["dlq.reason"].decode() for m in dead]
    assert reasons[0].startswith("undecodable") and reasons[1].startswith("invalid: name")
    metrics = worker.metrics()
    assert 'processor_dlq_total{reason="undecodable"} 1.0' in metrics
    assert 'processor_dlq_total{reason="invalid"} 1.0' in metrics


def assert_disk_is_committed_changelog(cluster: Cluster) -> dict[str, int]:
    """Every stopped worker's local state equals, key by key, its committed changelog up
    to the offsets stored with it: nothing aborted, nothing uncommitted reached a disk."""
    from course_processor.deciding.values import TABLES
    from course_processor.state.local import LocalState

    tables = TABLES  # a term's places and waiting lists too
    compared = keys = 0
    for data_dir in {w.data_dir for w in cluster.workers}:
        if not data_dir.exists():
            continue
        for part_dir in sorted(data_dir.glob("partition-*")):
            partition = int(part_dir.name.removeprefix("partition-"))
            state = LocalState(data_dir, tables)
            try:
                for table in tables:
                    upto = state.persisted_offset(table, partition)
                    disk = dict(state.items(partition, table))
                    topic = f"{cluster.app_id}-{table}-changelog"
                    log = ({} if upto is None else
                           committed_changelog(cluster.servers, topic, partition, upto))
                    assert disk == log, f"{data_dir.name} partition {partition} {table}"
                    compared += 1
                    keys += len(disk)
            finally:
                state.close()
    assert compared, "no local state to compare"
    return {"tables_compared": compared, "keys_compared": keys}


def changelog_records(cluster: Cluster, table: str, key: str) -> int:
    """How many committed records of a table's changelog carry `key`."""
    topic = f"{cluster.app_id}-{table}-changelog"
    consumer = Consumer({**client_config(), "bootstrap.servers": cluster.servers,
                         "group.id": str(uuid.uuid4()), "isolation.level": "read_committed",
                         "enable.auto.commit": False})
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
                for p in partitions}
        consumer.assign([TopicPartition(topic, p, 0) for p, end in ends.items() if end])
        wanted, count = json.dumps(key).encode(), 0
        deadline = time.monotonic() + 30
        while any(pos.offset < ends[pos.partition] for pos in consumer.position(
                [TopicPartition(topic, p) for p, end in ends.items() if end])):
            assert time.monotonic() < deadline, f"{topic} unread to its end"
            count += sum(1 for m in consumer.consume(1000, 0.2)
                         if m.error() is None and m.key() == wanted)
        return count
    finally:
        consumer.close()


def committed_changelog(servers: str, topic: str, partition: int, upto: int
                        ) -> dict[bytes, bytes]:
    """A changelog partition folded to key -> last value, committed records up to `upto`."""
    consumer = Consumer({**client_config(),
                         "bootstrap.servers": servers, "group.id": str(uuid.uuid4()),
                         "isolation.level": "read_committed", "enable.auto.commit": False})
    consumer.assign([TopicPartition(topic, partition, 0)])
    table: dict[bytes, bytes] = {}
    deadline = time.monotonic() + 30
    try:
        while consumer.position([TopicPartition(topic, partition)])[0].offset <= upto:
            assert time.monotonic() < deadline, f"{topic}[{partition}] unread up to {upto}"
            for msg in consumer.consume(1000, 0.2):
                if msg.error() is None and position_of(msg)[1] <= upto:
                    value = msg.value()
                    if value is None:
                        table.pop(key_of(msg), None)
                    else:
                        table[key_of(msg)] = value
    finally:
        consumer.close()
    return table


def signups_in(commands: list[tuple[str, bytes]]) -> set[str]:
    return {getattr(decode(v), "signup_id", "") for _, v in commands} - {""}


def _waves(commands: list, n: int) -> list[list]:
    size = -(-len(commands) // n)
    return [commands[i * size:(i + 1) * size] for i in range(n)]


def test_kill_9_at_random_moments_of_a_steady_stream(cluster: Cluster) -> None:
    """Commits run every 0.1 s, so kills at random moments land before, inside and after
    them; the store survives on disk from one worker to the next."""
    w, courses = make_workload(courses=5, signups=2500, seed=6)
    producer, log = CommandProducer(cluster.servers), EventLog(cluster.servers, courses)
    commands = list(w.commands)
    producer.send_all(commands[: len(courses)])
    sent = threading.Event()

    def stream() -> None:
        for course_id, value in commands[len(courses):]:
            producer.send(course_id, value)
            time.sleep(0.004)
        producer.producer.flush(30)
        sent.set()

    rng = random.Random(6)
    worker = cluster.start("r-1", store="r")
    threading.Thread(target=stream, daemon=True).start()
    with showing_logs(cluster, log):
        for i in range(5):
            cluster.wait_sharing(worker, timeout=SESSION_TIMEOUT * 6)
            time.sleep(rng.uniform(0.1, 1.5))
            worker.kill()
            worker = cluster.start(f"r-{i + 2}", store="r")
        wait_until(sent.is_set, 90, "the sign-ups to be produced")
        report = audit_after_all(cluster, log, w)
    print("audit", report)


def test_repeated_commands_write_nothing(cluster: Cluster) -> None:
    """A retried request (the same sign-up id in a new command) is acknowledged and adds
    no record to course-events: without a crash, the log holds each decision once."""
    w = Workload(random.Random(7))
    course = w.course(capacity=10, students=30)
    for _ in range(30):
        w.signup(course)
    originals = [decode(v) for _, v in w.commands[1:]]
    repeats = [(course, encode(SignUp(str(uuid.uuid4()), cmd.signup_id, course, cmd.email.upper(),
                                      cmd.name, cmd.date_of_birth, _now(), str(uuid.uuid4()))))
               for cmd in originals for _ in range(2) if isinstance(cmd, SignUp)]
    producer, log = CommandProducer(cluster.servers), EventLog(cluster.servers, [course])
    worker = cluster.start("solo")
    with showing_logs(cluster, log):
        cluster.wait_sharing(worker)
        producer.send_all(w.commands)
        log.wait_all_decided(set(w.signups), timeout=60)
        producer.send_all(repeats)

        def all_repeats_seen() -> bool:
            return sum(_counter(worker.metrics(), "processor_repeats_total").values()) >= \
                len(repeats) + len(originals) - len(w.signups)
        wait_until(all_repeats_seen, 60, "the repeated commands to be processed")
        log.read(1.0)
        records = log.records[course.encode()]
        event_ids = [event_in(r.value).event_id for r in records]
        assert len(event_ids) == len(set(event_ids)) == 1 + len(w.signups)
        audit(log, w)
        # A course's seat counter goes to its changelog once per commit, not once per
        # sign-up: the burst of sign-ups took fewer commits than it took seats.
        accepted = sum(1 for r in records
                       if isinstance(event_in(r.value), StudentSignedUp))
        assert 0 < changelog_records(cluster, "courses", course) < 1 + accepted
        # The tables hold seat keys and decisions now: faust's own pages, which would
        # list them, are not served; only the processor's three are.
        faust_pages = ["/", "/table/", "/table/seat_holders/", f"/table/courses/{course}/",
                       "/router/", f"/router/seat_holders/{course}/", "/stats/", "/graph/"]
        assert {path: worker.status_of(path) for path in faust_pages} == dict.fromkeys(
            faust_pages, 404)
        assert [worker.status_of(p) for p in ("/healthz", "/metrics")] == [200, 200]
        assert worker.status_of("/readyz") in (200, 503)  # 503 while rebalancing


def _counter(metrics: str, name: str) -> dict[str, float]:
    return {line.split(" ")[0]: float(line.split(" ")[1]) for line in metrics.splitlines()
            if line.startswith(name)}


def test_an_upgraded_processor_builds_its_state_from_the_event_log(cluster: Cluster) -> None:
    """What a processor of the in-memory version left: decisions on course-events and its
    committed offsets, but none of the new tables. The new one builds them from the log
    before deciding: seats stay taken, students stay enrolled, a repeat stays answered."""
    full, open_course, later = (f"u-{uuid.uuid4().hex[:10]}" for _ in range(3))
    old_students = {full: [f"f{i}.{uuid.uuid4().hex[:6]}@example.org" for i in range(5)],
                    open_course: [f"o{i}.{uuid.uuid4().hex[:6]}@example.org" for i in range(3)]}
    history: list[tuple[str, object]] = []
    for course, capacity in ((full, 5), (open_course, 10)):
        history.append((course, _created(course, capacity)))
        for seat, email in enumerate(old_students[course], start=1):
            history.append((course, _signed_up(course, email, seat, capacity)))
    lost = SignUp(str(uuid.uuid4()), str(uuid.uuid4()), later, "early@example.org", "Early",
                  date(2001, 2, 3), _now(), str(uuid.uuid4()))
    history.append((later, _rejected(lost, "course_not_found")))
    old_processor = Producer({**client_config(),
                              "bootstrap.servers": cluster.servers, "acks": "all",
                              "partitioner": "murmur2_random"})
    for course, event in history:
        old_processor.produce(topics.EVENTS, key=course.encode(), value=encode(event))  # type: ignore[arg-type]
    assert old_processor.flush(30) == 0

    w = Workload(random.Random(8))
    w.capacity.update({full: 5, open_course: 10, later: 3})
    commands: list[tuple[str, SignUp | CreateCourse]] = [
        (later, CreateCourse(str(uuid.uuid4()), later, "Later", "Ada", 3, _now(), "c")),
        (later, replace_command(lost)),  # asked again: it was rejected, and stays so
        (full, _signup(full, "new.student@example.org")),
        (full, _signup(full, old_students[full][0].upper())),
        (open_course, _signup(open_course, old_students[open_course][1])),
        *((open_course, _signup(open_course, f"n{i}@example.org")) for i in range(10)),
    ]
    producer = CommandProducer(cluster.servers, partitioner="consistent_random")
    log = EventLog(cluster.servers, [full, open_course, later])
    worker = cluster.start("upgraded")
    with showing_logs(cluster, log):
        cluster.wait_sharing(worker, timeout=90)
        producer.send_all([(c, encode(cmd)) for c, cmd in commands])
        fresh = {cmd.signup_id for _, cmd in commands
                 if isinstance(cmd, SignUp) and cmd.signup_id != lost.signup_id}
        log.wait_all_decided(fresh, timeout=60)
        log.read(1.0)
        decided = {e.signup_id: e for e in (decode(r.value) for rs in log.records.values()
                                             for r in rs)
                   if isinstance(e, StudentSignedUp | SignUpRejected)}
        outcome = {sid: getattr(e, "reason", None) or e.seats_taken  # type: ignore[union-attr]
                   for sid, e in decided.items() if sid in fresh}
        by_email = {cmd.email: outcome[cmd.signup_id] for _, cmd in commands
                    if isinstance(cmd, SignUp) and cmd.signup_id in outcome}
        assert by_email["new.student@example.org"] == "course_full"
        assert by_email[old_students[full][0].upper()] == "already_enrolled"
        assert by_email[old_students[open_course][1]] == "already_enrolled"
        newcomers = [v for k, v in by_email.items() if k.startswith("n") and k[1].isdigit()]
        assert sorted(v for v in newcomers if isinstance(v, int)) == [4, 5, 6, 7, 8, 9, 10]
        assert [v for v in newcomers if not isinstance(v, int)] == ["course_full"] * 3
        lost_records = [e for e in decided.values() if e.signup_id == lost.signup_id]
        assert [getattr(e, "reason", None) for e in lost_records] == ["course_not_found"]
        assert "tables built from course-events" in worker.log_path.read_text()


# A rebuild by this version that dies inside its transaction, every record sent (run in
# a process of its own, which kills itself as a kill -9 would).
CUT_SHORT_REBUILD = """
import json, os, signal, sys
from datetime import date
from confluent_kafka import Producer
from course_processor.state import migrate
from course_processor.state.runtime import changelog_topic
from course_processor.deciding.values import TABLES
from service_kit.kafka_auth import client_config

class DiesBeforeCommitting(Producer):
    def commit_transaction(self, *args):
        assert self.flush(30) == 0
        os.kill(os.getpid(), signal.SIGKILL)

migrate.Producer = DiesBeforeCommitting
servers, app_id, partitions, partition = sys.argv[1:]
migrate.build({**client_config(), "bootstrap.servers": servers}, app_id, "course-events",
              {int(partition)}, int(partitions),
              {t: changelog_topic(app_id, t) for t in TABLES},
              lambda table, key, value: (json.dumps(key).encode(), b'"cut short"'),
              b"integration-test-secret", date.today())
"""


def test_a_processor_from_before_the_term_builds_places_and_redoes_a_cut_short_rebuild(
        cluster: Cluster) -> None:
    """What the processor before the registration term left: its changelogs (courses,
    seat holders and decisions; no places, no waiting lists), with an expired decision it
    had not forgotten yet and the mark of its own rebuild, and the events it wrote. Then
    a rebuild by this version dies inside its transaction. The new processor aborts that
    transaction, builds the partition again, replacing the old state whole, and a student
    enrolled before the upgrade can withdraw: the head of the waiting list takes the seat."""
    from course_processor.deciding.values import BUILT_KEY, DECIDED, MIGRATED_KEY, TABLES
    from course_processor.state.local import LocalState
    from course_processor.state.migrate import command_partition
    from schemas.messages import (
        ChangeCourse,
        StudentPromoted,
        StudentWithdrew,
        Withdraw,
        withdrawal_id_for,
    )
    from service_kit.topic_ends import end_offsets

    course = f"p-{uuid.uuid4().hex[:10]}"
    partition = command_partition(course, cluster.partitions)
    old = [_signed_up_v3(course, n, seat=n, capacity=2) for n in (1, 2)]
    events = [encode_as(_created(course, 2), version=1), *(encode(e) for e in old)]
    # murmur2, as the processor's own (aiokafka) producer partitions course-events: its
    # later events of the course must follow these in the same partition. With
    # librdkafka's default (CRC-32) they landed in another one, and a parallel replay in
    # a later test could fold the withdrawal before the sign-up it withdraws.
    old_processor = Producer({**client_config(), "bootstrap.servers": cluster.servers,
                              "acks": "all", "partitioner": "murmur2_random"})
    for value in events:
        old_processor.produce(topics.EVENTS, key=course.encode(), value=value)
    today = _now().date().isoformat()
    old_state: dict[str, dict[str, Any]] = {
        "courses": {course: {"course_id": course, "title": "Old course", "lecturer": "Ada",
                             "capacity": 2, "seats_taken": 2}},
        "seat_holders": {str(e.seat_key): e.signup_id for e in old},
        DECIDED: {**{f"{today}/{e.signup_id}": f"accepted {e.seats_taken}" for e in old},
                  "2020-01-01/forgotten-later": "accepted 1",
                  MIGRATED_KEY: "built from course-events"},
    }
    changelog = {t: f"{cluster.app_id}-{t}-changelog" for t in TABLES}
    admin = AdminClient({**client_config(), "bootstrap.servers": cluster.servers})
    for future in admin.create_topics([
            NewTopic(topic, cluster.partitions, 1, config={"cleanup.policy": "compact"})
            for topic in changelog.values()]).values():
        future.result()
    for table, entries in old_state.items():
        for key, value in entries.items():
            old_processor.produce(changelog[table], key=json.dumps(key).encode(),
                                  value=json.dumps(value).encode(), partition=partition)
    assert old_processor.flush(30) == 0

    cut_short = subprocess.run(
        [sys.executable, "-c", CUT_SHORT_REBUILD, cluster.servers, cluster.app_id,
         str(cluster.partitions), str(partition)], cwd=ROOT, capture_output=True, timeout=120)
    assert cut_short.returncode == -signal.SIGKILL, cut_short.stderr.decode()[-2000:]
    tps = [TopicPartition(changelog[DECIDED], partition)]
    stable, high = (end_offsets(admin, tps, isolation)[(changelog[DECIDED], partition)]
                    for isolation in (IsolationLevel.READ_COMMITTED,
                                      IsolationLevel.READ_UNCOMMITTED))
    assert stable < high, "the rebuild cut short left no transaction open"

    waiting = [_signup_sealed(course, f"seat-new-{n}") for n in (1, 2)]
    again = _signup_sealed(course, old[1].seat_key or "")
    withdrawal = Withdraw(withdrawal_id_for(course, old[0].signup_id), old[0].signup_id,
                          course, _now(), str(uuid.uuid4()))
    change = ChangeCourse(str(uuid.uuid4()), course, _now(), "c", waitlist_capacity=2)
    commands: list[ChangeCourse | SignUp | Withdraw] = [change, *waiting, again, withdrawal]
    producer = CommandProducer(cluster.servers, partitioner="consistent_random")
    log = EventLog(cluster.servers, [course])
    worker = cluster.start("upgraded")
    with showing_logs(cluster, log):
        cluster.wait_sharing(worker, timeout=90)
        producer.send_all([(course, encode(cmd)) for cmd in commands])

        def promoted() -> bool:
            log.read(0.2)
            return any(isinstance(event_in(r.value), StudentPromoted)
                       for r in log.records[course.encode()])
        wait_until(promoted, 60, "the promotion into the seat the old student freed")
        decided = [event_in(r.value) for r in log.records[course.encode()]][len(events):]
        assert [(type(e).__name__, getattr(e, "signup_id", None)) for e in decided] == [
            ("CourseChanged", None),
            ("StudentWaitlisted", waiting[0].signup_id),
            ("StudentWaitlisted", waiting[1].signup_id),
            ("SignUpRejected", again.signup_id),
            ("StudentWithdrew", old[0].signup_id),
            ("StudentPromoted", waiting[0].signup_id),
        ]
        withdrew, promotion = decided[-2:]
        assert isinstance(withdrew, StudentWithdrew) and withdrew.seats_taken == 1
        assert isinstance(promotion, StudentPromoted) and promotion.seats_taken == 2
        assert getattr(decided[3], "reason", None) == "already_enrolled"
        worker_log = worker.log_path.read_text()
        assert "a rebuild from course-events may have been cut short" in worker_log
        assert "tables built from course-events" in worker_log
        cluster.stop_all()
        assert_disk_is_committed_changelog(cluster)
        state = LocalState(worker.data_dir, TABLES)
        try:
            disk = {t: {json.loads(k): json.loads(v) for k, v in state.items(partition, t)}
                    for t in TABLES}
        finally:
            state.close()
        assert "cut short" not in json.dumps(disk)
        # (The partition holds other tests' courses too, rebuilt from the same log.)
        assert {*old_state[DECIDED], BUILT_KEY, *(f"{today}/{c.signup_id}" for c in waiting),
                f"{today}/{again.signup_id}", f"{today}/{change.command_id}",
                f"{today}/{withdrawal.command_id}"} - {"2020-01-01/forgotten-later",
                                                       MIGRATED_KEY} <= set(disk[DECIDED])
        assert not {"2020-01-01/forgotten-later", MIGRATED_KEY} & set(disk[DECIDED])
        assert disk["courses"][course] == {
            "course_id": course, "title": "Old course", "lecturer": "Ada", "capacity": 2,
            "seats_taken": 2, "waitlist_capacity": 2, "waiting": 1, "tickets": 2}
        assert sorted(k for k in disk["places"] if k.startswith(f"{course}/")) == sorted(
            f"{course}/{s}" for s in (old[1].signup_id, *(c.signup_id for c in waiting)))
        assert [v for k, v in disk["waiting"].items() if k.startswith(f"{course}/")] == [
            waiting[1].signup_id]
        assert disk["seat_holders"][old[0].seat_key] == "~" + old[0].signup_id


def replace_command(cmd: SignUp) -> SignUp:
    """The same sign-up asked again: a new command with the same sign-up id."""
    return SignUp(str(uuid.uuid4()), cmd.signup_id, cmd.course_id, cmd.email, cmd.name,
                  cmd.date_of_birth, _now(), str(uuid.uuid4()))


def _signup(course: str, email: str) -> SignUp:
    return SignUp(str(uuid.uuid4()), str(uuid.uuid4()), course, email, "Student",
                  date(2000, 1, 1), _now(), str(uuid.uuid4()))


def _meta(course: str, event_type: str) -> dict[str, object]:
    command_id = str(uuid.uuid4())
    return {"event_id": event_id_for(command_id), "event_type": event_type,
            "occurred_at": _now(), "course_id": course, "causation_id": command_id,
            "correlation_id": str(uuid.uuid4())}


def _created(course: str, capacity: int) -> CourseCreated:
    return CourseCreated(**_meta(course, "CourseCreated"), title="Old course",  # type: ignore[arg-type]
                         lecturer="Ada", capacity=capacity)


def _signed_up(course: str, email: str, seat: int, capacity: int) -> StudentSignedUp:
    return StudentSignedUp(**_meta(course, "StudentSignedUp"), signup_id=str(uuid.uuid4()),  # type: ignore[arg-type]
                           email=email, name="Old", date_of_birth=date(1999, 1, 1),
                           seats_taken=seat, capacity=capacity)


def _signed_up_v3(course: str, n: int, seat: int, capacity: int) -> StudentSignedUp:
    """A sealed acceptance, as the processor before the term wrote it (v3, a seat key)."""
    return StudentSignedUp(**_meta(course, "StudentSignedUp"), signup_id=str(uuid.uuid4()),  # type: ignore[arg-type]
                           email="", name="", date_of_birth=date(1999, 1, n),
                           seats_taken=seat, capacity=capacity, key_id="k",
                           email_sealed=b"e", name_sealed=b"n", seat_key=f"seat-old-{n}")


def _signup_sealed(course: str, seat_key: str) -> SignUp:
    return SignUp(str(uuid.uuid4()), str(uuid.uuid4()), course, "", "", date(2000, 1, 1),
                  _now(), str(uuid.uuid4()), key_id="k", email_sealed=b"e",
                  name_sealed=b"n", seat_key=seat_key)


def encode_as(message: CourseCreated, version: int) -> bytes:
    """`message` in single-object encoding with an older version of its schema, as a
    processor of that time wrote it."""
    from io import BytesIO

    from fastavro import parse_schema, schemaless_writer

    from schemas.codec import MARKER, schema_fingerprint

    name = type(message).__name__
    schema = next(s for n, v, s in schema_versions() if (n, v) == (name, version))
    out = BytesIO()
    out.write(MARKER + schema_fingerprint(schema))
    schemaless_writer(out, parse_schema(schema),
                      {f["name"]: getattr(message, f["name"]) for f in schema["fields"]})
    return out.getvalue()


def _rejected(cmd: SignUp, reason: str) -> SignUpRejected:
    return SignUpRejected(**{**_meta(cmd.course_id, "SignUpRejected"),  # type: ignore[arg-type]
                             "causation_id": cmd.command_id,
                             "event_id": event_id_for(cmd.command_id)},
                          signup_id=cmd.signup_id, email=cmd.email, name=cmd.name,
                          reason=reason)
