"""Kafka-side pieces of `make bench`: synthetic commands, history written ahead of time,
offsets and lag, a read_committed watcher of decisions, and the plain confluent-kafka
produce-to-consume round trip that the decision latency is compared with.
"""

from __future__ import annotations

import json
import random
import statistics
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from confluent_kafka import (
    OFFSET_END,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, NewTopic

from course_processor.deciding.handler import Decider, place_key
from course_processor.deciding.values import memory_key, outcome_of
from course_processor.deciding.wire import event_headers
from schemas import codec, topics
from schemas.messages import Command, CreateCourse, Event, SignUp, StudentSignedUp
from schemas.pseudonyms import seat_key
from service_kit.kafka_auth import client_config

CLOCK = time.CLOCK_MONOTONIC  # one clock for every process on this machine


def now() -> float:
    return time.clock_gettime(CLOCK)


# ------------------------------------------------------------------ synthetic commands


def course_ids(count: int) -> list[str]:
    return [f"bench-{i:05d}" for i in range(count)]


def create_commands(courses: list[str], capacity: int) -> Iterator[Command]:
    issued = _issued_at()
    for course in courses:
        yield CreateCourse(str(uuid.uuid4()), course, f"Bench course {course}",
                           "Dr. Bench", capacity, issued, str(uuid.uuid4()))


def signup_commands(courses: list[str], count: int, rng: random.Random,
                    tag: str) -> Iterator[Command]:
    """`count` sign-ups spread uniformly over `courses`, every student distinct."""
    issued = _issued_at()
    born = date(1960, 1, 1)
    for i in range(count):
        signup = str(uuid.uuid4())
        yield SignUp(signup, signup, rng.choice(courses), f"s{i}.{tag}@example.org",
                     "Bench Student", born + timedelta(days=rng.randint(0, 16_000)), issued,
                     signup)


def _issued_at() -> datetime:
    stamp = datetime.now(UTC)
    return stamp.replace(microsecond=stamp.microsecond // 1000 * 1000)  # timestamp-millis


def bulk_producer(bootstrap: str) -> Producer:
    return Producer({**client_config(),
                     "bootstrap.servers": bootstrap, "linger.ms": 20, "acks": "all",
                     "batch.size": 1_000_000,
                     "queue.buffering.max.messages": 500_000})


def ensure_topic(bootstrap: str, name: str, partitions: int) -> None:
    admin = AdminClient({**client_config(), "bootstrap.servers": bootstrap})
    if name in admin.list_topics(timeout=10).topics:
        return
    for future in admin.create_topics([NewTopic(name, partitions, 1)]).values():
        future.result(30)
    # Created is not yet usable: wait until every partition has a leader in the metadata.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        topic = admin.list_topics(name, timeout=10).topics.get(name)
        if topic and len(topic.partitions) == partitions and all(
                p.leader >= 0 for p in topic.partitions.values()):
            return
        time.sleep(0.2)


# ------------------------------------------------------------------ offsets and lag


def end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    """High watermarks (for a transactional topic: one past the last commit marker)."""
    consumer = Consumer({**client_config(),
                         "bootstrap.servers": bootstrap, "group.id": "bench-probe"})
    try:
        parts = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        return {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
                for p in parts}
    finally:
        consumer.close()


def consume_and_decode(bootstrap: str) -> dict[str, float]:
    """What reading and decoding the event log alone costs: consume(n), codec.decode,
    nothing else. It ends on the consumer's position: the event log is transactional,
    and a partition that ends with a commit marker has no record at its last offset to see."""
    ends = end_offsets(bootstrap, topics.EVENTS)
    consumer = Consumer({**client_config(),
                         "bootstrap.servers": bootstrap, "group.id": f"bench-{uuid.uuid4()}",
                         "enable.auto.commit": False, "isolation.level": "read_committed"})
    tps = [TopicPartition(topics.EVENTS, p, 0) for p in ends]
    consumer.assign(tps)
    started, n = time.perf_counter(), 0
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline:
        for msg in consumer.consume(10_000, 1.0):
            if msg.error() is None:
                codec.decode(msg.value())  # type: ignore[arg-type]
                n += 1
        if all(tp.offset >= ends[tp.partition] for tp in consumer.position(tps)):
            break
    seconds = time.perf_counter() - started
    consumer.close()
    return {"events": n, "seconds": round(seconds, 2), "events_per_s": round(n / seconds)}


def skip_group_to_end(bootstrap: str, topic: str, group: str) -> None:
    """Commit `group`'s offsets of `topic` at its end offsets, so that a consumer of that
    group started now reads only what comes next (the notifier of the bench must not mail
    the seeded history)."""
    ends = end_offsets(bootstrap, topic)
    consumer = Consumer({**client_config(), "bootstrap.servers": bootstrap, "group.id": group,
                         "enable.auto.commit": False})
    try:
        commit_retrying(consumer, [TopicPartition(topic, p, end) for p, end in ends.items()])
    finally:
        consumer.close()


# What a commit may answer while the group coordinator is still being found or moves
# (a fresh consumer's first commit, a broker busy with the bench's load): worth waiting.
COORDINATOR_PENDING = frozenset({
    KafkaError._WAIT_COORD, KafkaError.COORDINATOR_NOT_AVAILABLE, KafkaError.NOT_COORDINATOR,
    KafkaError.COORDINATOR_LOAD_IN_PROGRESS, KafkaError.REBALANCE_IN_PROGRESS,
    KafkaError._TIMED_OUT, KafkaError.REQUEST_TIMED_OUT,
})


def commit_retrying(consumer: Any, offsets: list[TopicPartition], timeout: float = 60.0,
                    sleep: Callable[[float], None] = time.sleep) -> None:
    """A synchronous commit of `offsets`, tried again while the coordinator is not there
    yet (`_WAIT_COORD`, ...) or any retriable error, up to `timeout` seconds; any other
    error, or the last one, is raised."""
    deadline, wait = time.monotonic() + timeout, 0.1
    while True:
        try:
            consumer.commit(offsets=offsets, asynchronous=False)
            return
        except KafkaException as exc:
            error = exc.args[0] if exc.args else None
            retriable = isinstance(error, KafkaError) and (
                error.code() in COORDINATOR_PENDING or error.retriable())
            if not retriable or time.monotonic() + wait > deadline:
                raise
        sleep(wait)
        wait = min(2 * wait, 2.0)


class OffsetProbe:
    """End offsets of a topic and a consumer group's committed offsets, on one consumer."""

    def __init__(self, bootstrap: str, topic: str, group: str) -> None:
        self.topic = topic
        self.consumer = Consumer({**client_config(),
                                  "bootstrap.servers": bootstrap, "group.id": group,
                                  "enable.auto.commit": False})
        meta = self.consumer.list_topics(topic, timeout=10).topics[topic]
        self.partitions = sorted(meta.partitions)

    def ends(self) -> dict[int, int]:
        return {p: self.consumer.get_watermark_offsets(TopicPartition(self.topic, p),
                                                       timeout=10)[1]
                for p in self.partitions}

    def committed(self) -> dict[int, int]:
        tps = self.consumer.committed([TopicPartition(self.topic, p) for p in self.partitions],
                                      timeout=10)
        return {tp.partition: max(tp.offset, 0) for tp in tps}

    def lag(self) -> int:
        ends, done = self.ends(), self.committed()
        return sum(max(0, ends[p] - done.get(p, 0)) for p in ends)

    def close(self) -> None:
        self.consumer.close()


# ------------------------------------------------------------------ processor state


def decide(decider: Decider, cmd: Command) -> Event | None:
    """A decision of seeded history, its changes applied at once (the benches write the
    event and the changelog records themselves, in one go)."""
    plan = decider.plan(cmd)
    decider.apply(plan)
    return plan.event


def seed_tables(courses: list[str], capacity: int) -> tuple[dict, dict, dict]:
    """The processor's tables right after it decided the CreateCourse commands."""
    course_table: dict = {}
    decider = Decider(course_table, {}, {}, b"unused: no sign-ups")
    for cmd in create_commands(courses, capacity):
        decide(decider, cmd)
    return course_table, {}, {}


# ------------------------------------------------------------------ latency baseline


def arrivals(consumer: Consumer, timeout: float = 0.1) -> list[Message]:
    """The next message as soon as it is there, with whatever else is already fetched.
    (consume(n, timeout) alone waits for n messages or the timeout, which would add up to
    the timeout to every latency measured.)"""
    first = consumer.poll(timeout)
    return [] if first is None else [first, *consumer.consume(1000, 0)]


def percentiles(samples_ms: list[float]) -> dict[str, float | int]:
    if len(samples_ms) < 2:
        return {"samples": len(samples_ms)}
    q = statistics.quantiles(samples_ms, n=1000, method="inclusive")
    return {"samples": len(samples_ms), "p50_ms": round(q[499], 2), "p99_ms": round(q[989], 2),
            "p99_9_ms": round(q[998], 2), "max_ms": round(max(samples_ms), 2)}


def round_trip(bootstrap: str, topic: str, rate: float, seconds: float) -> dict[str, object]:
    """Open-loop produce (acks=all, as the command API does) at `rate` messages/s and a
    read_committed consumer on another thread: the produce-to-consume latency of Kafka
    alone, measured from each message's scheduled send time."""
    import threading

    sent_at: dict[bytes, float] = {}
    latencies: list[float] = []
    total = int(rate * seconds)
    stop = threading.Event()
    consumer = Consumer({**client_config(),
                         "bootstrap.servers": bootstrap, "group.id": f"bench-{uuid.uuid4()}",
                         "enable.auto.commit": False, "isolation.level": "read_committed",
                         "fetch.wait.max.ms": 10, "auto.offset.reset": "latest"})
    parts = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    consumer.assign([TopicPartition(topic, p, OFFSET_END) for p in parts])

    def consume() -> None:
        while not stop.is_set() and len(latencies) < total:
            for msg in arrivals(consumer):
                if msg.error() is None:
                    began = sent_at.get(msg.value() or b"")
                    if began is not None:
                        latencies.append((now() - began) * 1000)

    producer = Producer({**client_config(),
                         "bootstrap.servers": bootstrap, "linger.ms": 5, "acks": "all",
                         "enable.idempotence": True})
    # Warm up until a message makes the round trip: metadata, leaders, producer id and
    # the consumer's position are all settled before the clock starts.
    deadline = time.monotonic() + 30
    warm = False
    while not warm and time.monotonic() < deadline:
        producer.produce(topic, key=b"warm-up", value=b"warm-up")
        producer.flush(10)
        warm = any(m.error() is None for m in consumer.consume(100, 0.5))
    reader = threading.Thread(target=consume, daemon=True)
    reader.start()
    body = b"x" * 200  # about the size of an encoded SignUp
    t0 = now()
    for i in range(total):
        due = t0 + i / rate
        delay = due - now()
        if delay > 0:
            time.sleep(delay)
        key = f"k{i}".encode()
        value = key + b"|" + body
        sent_at[value] = due
        producer.produce(topic, key=key, value=value)
        producer.poll(0)
    producer.flush(30)
    deadline = time.monotonic() + 30
    while len(latencies) < total and time.monotonic() < deadline:
        time.sleep(0.1)
    stop.set()
    reader.join(5)
    consumer.close()
    return {"rate_per_s": rate, "seconds": seconds, "sent": total, **percentiles(latencies)}


# ------------------------------------------------------------------ decisions on course-events


class DecisionWatch:
    """A read_committed consumer of course-events from its current end: calls on_decision
    (signup_id, monotonic receive time) for each decision it sees."""

    def __init__(self, bootstrap: str) -> None:
        self.consumer = Consumer({**client_config(), "bootstrap.servers": bootstrap,
                                  "group.id": f"bench-{uuid.uuid4()}",
                                  "enable.auto.commit": False,
                                  "isolation.level": "read_committed",
                                  "fetch.wait.max.ms": 10})
        ends = end_offsets(bootstrap, topics.EVENTS)
        self.consumer.assign([TopicPartition(topics.EVENTS, p, o) for p, o in ends.items()])

    def poll(self, on_decision: Callable[[str, float], None]) -> int:
        n = 0
        for msg in arrivals(self.consumer):
            err = msg.error()
            if err is not None:
                if err.code() != KafkaError._PARTITION_EOF:
                    raise RuntimeError(str(err))
                continue
            seen = now()
            event = codec.decode(msg.value())  # type: ignore[arg-type]
            signup_id = getattr(event, "signup_id", None)
            if signup_id is not None:
                on_decision(signup_id, seen)
                n += 1
        return n

    def close(self) -> None:
        self.consumer.close()


def record_times(bootstrap: str, topic: str, start: dict[int, int]) -> dict[str, float]:
    """signup_id -> the record timestamp (on `now()`'s clock) of each record of `topic`
    from the offsets `start` to the current end, read_committed. A command's timestamp is
    when the command API produced it, an event's when the processor decided it (both
    CreateTime, whole milliseconds)."""
    shift = time.time() - now()  # the record clock (epoch) onto now()'s
    ends = end_offsets(bootstrap, topic)
    consumer = Consumer({**client_config(), "bootstrap.servers": bootstrap,
                         "group.id": f"bench-{uuid.uuid4()}", "enable.auto.commit": False,
                         "isolation.level": "read_committed", "enable.partition.eof": True})
    consumer.assign([TopicPartition(topic, p, start.get(p, 0)) for p in ends])
    times: dict[str, float] = {}
    open_partitions = {p for p, end in ends.items() if end > start.get(p, 0)}
    deadline = time.monotonic() + 120
    try:
        while open_partitions and time.monotonic() < deadline:
            for msg in consumer.consume(10_000, 0.5):
                err = msg.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        open_partitions.discard(msg.partition())
                    continue
                record = codec.decode(msg.value())  # type: ignore[arg-type]
                signup_id = getattr(record, "signup_id", None)
                if signup_id is not None:
                    times.setdefault(signup_id, msg.timestamp()[1] / 1000 - shift)
    finally:
        consumer.close()
    return times


# ------------------------------------------------------------------ history, fast-forwarded


PROCESSOR_APP_ID = "course-processor"  # course_processor.settings.Settings.app_id


def changelog(table: str) -> str:
    """The changelog topic faust keeps for one of the processor's tables."""
    return f"{PROCESSOR_APP_ID}-{table}-changelog"


@dataclass
class History:
    """Courses whose sign-ups the bench decides ahead of time, to put history in the log.

    Only the bench writes to these courses, so it knows their state exactly: the
    processor's courses table as a dict, and each course's partition of course-commands
    (its changelog partition, since the tables are co-partitioned with that topic)."""

    courses: list[str]
    capacity: int
    partition_of: dict[str, int]
    table: dict[str, Any]
    signups: int = 0


def create_history(bootstrap: str, courses: list[str], capacity: int) -> History:
    """Send the CreateCourse commands through the real path (the processor decides them)
    and note the partition each course landed on."""
    partition_of: dict[str, int] = {}

    def delivered(err: object, msg: Any) -> None:
        if err is None:
            partition_of[msg.key().decode()] = msg.partition()

    producer = bulk_producer(bootstrap)
    for cmd in create_commands(courses, capacity):
        producer.produce(topics.COMMANDS, key=cmd.course_id.encode(), value=codec.encode(cmd),
                         on_delivery=delivered)
        producer.poll(0)
    if producer.flush(60) != 0 or len(partition_of) != len(courses):
        raise RuntimeError("course commands not acknowledged")
    return History(courses, capacity, partition_of, seed_tables(courses, capacity)[0])


def produce(producer: Producer, topic: str, key: bytes, value: bytes, **extra: Any) -> None:
    """Produce, waiting for room in the producer's queue when it is full."""
    while True:
        try:
            producer.produce(topic, key=key, value=value, **extra)
            return
        except BufferError:
            producer.poll(0.05)


def grow_history(bootstrap: str, history: History, count: int, rng: random.Random,
                 tag: str, secret: bytes) -> float:
    """Decide `count` more sign-ups for the history courses with the processor's Decider
    and write what the processor itself would write: each decision to course-events,
    each to the decided_signups changelog, each seat to the seat_holders changelog and
    its live place to the places changelog, each course's last state to the courses
    changelog. Run it while the processor is
    stopped: the next processor restores these tables at start, as after any restart
    (a tail restore after the offsets on its disk). `secret` is the stack's
    PSEUDONYM_SECRET, so the seat keys are the processor's own. Seconds."""
    started = time.perf_counter()
    # murmur2: the partitioner of the processor's own (aiokafka) producer, so a course's
    # seeded decisions share a partition of course-events with its CourseCreated.
    producer = Producer({**client_config(),
                         "bootstrap.servers": bootstrap, "linger.ms": 50, "acks": "all",
                         "batch.size": 1_000_000, "partitioner": "murmur2_random",
                         "queue.buffering.max.messages": 1_000_000})
    seats: dict[str, Any] = {}
    decided: dict[str, Any] = {}
    places: dict[str, Any] = {}
    # Nothing the bench decides expires within the run: no expiry scan per decision.
    decider = Decider(history.table, seats, decided, secret, oldest=lambda _: [],
                      places=places)
    touched: set[str] = set()

    def send(topic: str, key: bytes, value: bytes, **extra: Any) -> None:
        produce(producer, topic, key, value, **extra)

    for i, cmd in enumerate(signup_commands(history.courses, count, rng, tag)):
        event = decide(decider, cmd)
        assert isinstance(cmd, SignUp) and event is not None
        part = history.partition_of[cmd.course_id]
        send(topics.EVENTS, cmd.course_id.encode(), codec.encode(event),
             headers=event_headers(event, "bench-history", 0))
        outcome = outcome_of(event)
        assert outcome is not None
        day = event.occurred_at.date()
        send(changelog("decided_signups"), json.dumps(memory_key(day, cmd.signup_id)).encode(),
             json.dumps(outcome.encode()).encode(), partition=part)
        if isinstance(event, StudentSignedUp):
            key = seat_key(secret, cmd.course_id, cmd.email)
            send(changelog("seat_holders"), json.dumps(key).encode(),
                 json.dumps(cmd.signup_id).encode(), partition=part)
            # Since the registration term, each seat is also a live place.
            place = place_key(cmd.course_id, cmd.signup_id)
            send(changelog("places"), json.dumps(place).encode(),
                 json.dumps(places[place]).encode(), partition=part)
            touched.add(cmd.course_id)
        if i % 50_000 == 49_999:
            seats.clear()  # every student is new: nothing to look up again
            decided.clear()
            places.clear()
    for course in touched:
        send(changelog("courses"), json.dumps(course).encode(),
             json.dumps(history.table[course], separators=(",", ":")).encode(),
             partition=history.partition_of[course])
    if producer.flush(120) != 0:
        raise RuntimeError("history not acknowledged by the broker")
    history.signups += count
    return time.perf_counter() - started
