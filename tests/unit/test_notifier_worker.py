"""The consumer loop's policy, with a fake consumer, a fake clock and a scripted handler.

A message failing on its own is parked and the others go on; a server outage closes the
gate and pauses consumption; offsets are committed only below the oldest unfinished one.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime

from confluent_kafka import TopicPartition

from notifier.batch import Result, advance_each
from notifier.handler import Done, Failed, Job, Outcome
from notifier.lanes import Lanes
from notifier.mailer import SendFailure
from notifier.observability import Metrics
from notifier.worker import Policy, Worker
from schemas import codec
from schemas.messages import StudentSignedUp
from service_kit.backoff import Backoff

TOPIC = "course-events"
DOWN = SendFailure("transient", "connection_failed", None, server_wide=True)
GREYLISTED = SendFailure("transient", "recipient_refused", 450)
REFUSED = SendFailure("permanent", "recipient_refused", 550)


def decision(event_id: str) -> bytes:
    return codec.encode(StudentSignedUp(
        event_id=event_id, event_type="StudentSignedUp",
        occurred_at=datetime(2025, 1, 1, tzinfo=UTC), course_id="c", causation_id="cmd",
        correlation_id="corr", signup_id=f"s-{event_id}",
        email="x@example.org", name="X", date_of_birth=date(2000, 1, 1), seats_taken=1))


@dataclass
class FakeMessage:
    offset_: int
    value_: bytes
    partition_: int = 0
    key_: bytes = b"c"  # the course id

    def error(self) -> None:
        return None

    def topic(self) -> str:
        return TOPIC

    def partition(self) -> int:
        return self.partition_

    def offset(self) -> int:
        return self.offset_

    def key(self) -> bytes:
        return self.key_

    def value(self) -> bytes:
        return self.value_

    def headers(self) -> None:
        return None


@dataclass
class Clock:
    now: float = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class FakeConsumer:
    clock: Clock
    queue: list[FakeMessage] = field(default_factory=list)
    paused: bool = False
    leaks: int = 0  # messages still delivered after pause(), as a prefetch may do
    commits: list[dict[int, int]] = field(default_factory=list)

    def poll(self, timeout: float) -> FakeMessage | None:
        if self.queue and (not self.paused or self.leaks > 0):
            if self.paused:
                self.leaks -= 1
            return self.queue.pop(0)
        self.clock.now += timeout  # nothing to read: time passes
        return None

    def assignment(self) -> list[TopicPartition]:
        return [TopicPartition(TOPIC, 0)]

    def pause(self, partitions: list[TopicPartition]) -> None:
        self.paused = True

    def resume(self, partitions: list[TopicPartition]) -> None:
        self.paused = False

    def commit(self, offsets: list[TopicPartition], asynchronous: bool) -> None:
        self.commits.append({tp.partition: tp.offset for tp in offsets})

    def position(self, partitions: list[TopicPartition]) -> list[TopicPartition]:
        return partitions

    def get_watermark_offsets(self, tp: TopicPartition, cached: bool) -> tuple[int, int]:
        return (-1001, -1001)


@dataclass
class ScriptedHandler:
    """Answers each event id with the next outcome of its script; Done("sent") when out."""

    scripts: dict[str, list[SendFailure]]
    attempts: list[str] = field(default_factory=list)
    dead: list[tuple[str, str]] = field(default_factory=list)

    def advance(self, job: Job) -> Outcome:
        if job.give_up is not None:  # as Handler.advance: the worker gave up on it
            return self.dead_letter(job, *job.give_up)
        event_id = str(job.event_id)
        self.attempts.append(event_id)
        script = self.scripts.get(event_id, [])
        return Failed(script.pop(0)) if script else Done("sent")

    def dead_letter(self, job: Job, reason: str, detail: str = "") -> Done:
        self.dead.append((str(job.event_id), reason))
        return Done("dead_lettered")


def make_worker(scripts: dict[str, list[SendFailure]], ids: list[str],
                rand: Callable[[], float] = lambda: 1.0) -> tuple[Worker, FakeConsumer,
                                                                   ScriptedHandler, Clock]:
    clock = Clock()
    consumer = FakeConsumer(clock, [FakeMessage(i, decision(e)) for i, e in enumerate(ids)])
    handler = ScriptedHandler(scripts)
    policy = Policy(Backoff(initial=1.0, cap=8.0), permanent_attempts=3, give_up_seconds=0,
                    max_parked=100)
    worker = Worker(consumer, handler, Metrics(), policy, clock=clock, rand=rand)  # type: ignore[arg-type]
    return worker, consumer, handler, clock


def run_for(worker: Worker, clock: Clock, seconds: float) -> None:
    end = clock.now + seconds
    while clock.now < end:
        worker.step()
        clock.now += 0.001


def committed(consumer: FakeConsumer) -> int | None:
    return consumer.commits[-1][0] if consumer.commits else None


def test_a_message_failing_on_its_own_does_not_hold_up_the_others() -> None:
    worker, consumer, handler, clock = make_worker({"b": [GREYLISTED, GREYLISTED]},
                                                   ["a", "b", "c", "d"])
    run_for(worker, clock, 0.1)
    assert handler.attempts == ["a", "b", "c", "d"]
    worker.commit(asynchronous=True)
    assert committed(consumer) == 1  # b is unfinished: nothing from it on is committed
    run_for(worker, clock, 4.0)  # b is retried after 1 s and 2 s
    assert handler.attempts == ["a", "b", "c", "d", "b", "b"]
    worker.commit(asynchronous=True)
    assert committed(consumer) == 4


def test_a_server_outage_pauses_everything_and_resumes_with_the_oldest() -> None:
    worker, consumer, handler, clock = make_worker({"a": [DOWN, DOWN, DOWN]}, ["a", "b", "c"])
    run_for(worker, clock, 0.1)
    assert handler.attempts == ["a"] and consumer.paused
    ready, why = worker.metrics.readiness()
    assert not ready and why.startswith("dependency unavailable")
    run_for(worker, clock, 1.0 + 2.0 + 4.0 + 0.5)
    assert handler.attempts == ["a", "a", "a", "a", "b", "c"]
    assert not consumer.paused and worker.gate.failures == 0
    assert worker.metrics.readiness() == (True, "")
    worker.commit(asynchronous=True)
    assert committed(consumer) == 3


def test_an_outage_never_lets_a_later_record_overtake_the_one_that_met_it() -> None:
    worker, consumer, handler, clock = make_worker({"a": [DOWN, DOWN]}, ["a", "b", "c"])
    consumer.leaks = 1  # b arrives although the consumer is paused
    run_for(worker, clock, 0.6)
    assert handler.attempts == ["a"]
    run_for(worker, clock, 10.0)
    assert handler.attempts == ["a", "a", "a", "b", "c"]


def test_a_permanent_failure_is_dead_lettered_after_the_set_attempts() -> None:
    worker, consumer, handler, clock = make_worker({"a": [REFUSED] * 5}, ["a", "b"])
    run_for(worker, clock, 10.0)
    assert handler.attempts.count("a") == 3 and "b" in handler.attempts
    assert handler.dead == [("a", "recipient_refused")]
    worker.commit(asynchronous=True)
    assert committed(consumer) == 2


def test_a_repeat_of_a_parked_decision_is_not_sent_twice() -> None:
    worker, consumer, handler, clock = make_worker({"a": [GREYLISTED]}, ["a", "a", "b"])
    run_for(worker, clock, 3.0)
    assert handler.attempts == ["a", "b", "a"]
    worker.commit(asynchronous=True)
    assert committed(consumer) == 3


def test_a_transient_failure_is_given_up_only_when_configured() -> None:
    worker, consumer, handler, clock = make_worker({"a": [GREYLISTED] * 100}, ["a"])
    run_for(worker, clock, 60.0)
    assert handler.dead == []
    worker.policy = Policy(Backoff(initial=1.0, cap=8.0), 3, give_up_seconds=30.0, max_parked=100)
    run_for(worker, clock, 10.0)
    assert handler.dead == [("a", "retries_exhausted")]


def test_too_many_parked_messages_pause_the_consumer() -> None:
    ids = [f"m{i}" for i in range(5)]
    worker, consumer, handler, clock = make_worker({i: [GREYLISTED] for i in ids}, ids)
    worker.policy = Policy(Backoff(initial=5.0, cap=8.0), 3, 0, max_parked=2)
    run_for(worker, clock, 0.1)
    assert handler.attempts == ["m0", "m1"] and consumer.paused
    run_for(worker, clock, 10.0)
    assert sorted(set(handler.attempts)) == ids


# ---------------------------------------------------------------- lanes (several connections)


@dataclass
class BlockingHandler(ScriptedHandler):
    """A scripted handler whose first jobs meet at a barrier: they finish only if they run
    at the same time."""

    barrier: threading.Barrier | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)
    barrier_offsets: set[int] = field(default_factory=lambda: {0})

    def advance(self, job: Job) -> Outcome:
        if self.barrier is not None and job.record.offset in self.barrier_offsets:
            self.barrier.wait(5)
        with self.lock:
            return super().advance(job)


def lane_worker(scripts: dict[str, list[SendFailure]], messages: list[FakeMessage],
                lanes: int) -> tuple[Worker, FakeConsumer, BlockingHandler, Clock, Lanes]:
    clock = Clock()
    consumer = FakeConsumer(clock, messages)
    handler = BlockingHandler(scripts, barrier=threading.Barrier(lanes))
    pool = Lanes([handler] * lanes, advance_each)  # type: ignore[list-item]
    policy = Policy(Backoff(initial=1.0, cap=8.0), permanent_attempts=3, give_up_seconds=0,
                    max_parked=100)
    worker = Worker(consumer, handler, Metrics(), policy, clock=clock,  # type: ignore[arg-type]
                    rand=lambda: 1.0, lanes=pool)
    return worker, consumer, handler, clock, pool


def test_lanes_send_partitions_in_parallel_and_each_partition_in_log_order() -> None:
    ids = {0: ["a0", "a1", "a2"], 1: ["b0", "b1", "b2"]}
    messages = [FakeMessage(i, decision(e), p) for i in range(3) for p, e in
                ((p, ids[p][i]) for p in (0, 1))]
    worker, consumer, handler, clock, pool = lane_worker({"a1": [GREYLISTED]}, messages, 2)
    try:
        # Both first jobs must be on a lane at once to pass the barrier.
        run_for(worker, clock, 0.05)
        while worker.busy:
            worker.step()
        assert [e for e in handler.attempts if e.startswith("a")] == ["a0", "a1", "a2"]
        assert [e for e in handler.attempts if e.startswith("b")] == ["b0", "b1", "b2"]
        worker.commit(asynchronous=True)
        assert consumer.commits[-1] == {0: 1, 1: 3}  # a1 is parked: partition 0 waits at it
        run_for(worker, clock, 1.5)  # a1 is retried after 1 s
        while worker.busy:
            worker.step()
        assert handler.attempts.count("a1") == 2
        worker.commit(asynchronous=True)
        assert consumer.commits[-1] == {0: 3}
    finally:
        pool.close()


def test_a_revoked_partition_waits_for_its_job_on_a_lane_before_committing() -> None:
    messages = [FakeMessage(0, decision("a0"), 0), FakeMessage(0, decision("b0"), 1)]
    worker, consumer, handler, clock, pool = lane_worker({}, messages, 2)
    try:
        worker.step()
        worker.step()  # both on lanes, meeting at the barrier
        worker._on_revoke(consumer, [TopicPartition(TOPIC, 0), TopicPartition(TOPIC, 1)])  # type: ignore[arg-type]
        assert not worker.busy and sorted(handler.attempts) == ["a0", "b0"]
        assert consumer.commits[-1] == {0: 1, 1: 1}
    finally:
        pool.close()


def test_courses_of_one_partition_go_out_in_parallel_each_in_log_order() -> None:
    # Two courses sharing partition 0: their first records must be on lanes at once to
    # pass the barrier (one job per partition at a time would never get there).
    messages = [FakeMessage(0, decision("a0"), 0, b"course-a"),
                FakeMessage(1, decision("b0"), 0, b"course-b"),
                FakeMessage(2, decision("a1"), 0, b"course-a"),
                FakeMessage(3, decision("b1"), 0, b"course-b")]
    worker, consumer, handler, clock, pool = lane_worker({}, messages, 2)
    handler.barrier_offsets = {0, 1}
    try:
        run_for(worker, clock, 0.05)
        while worker.busy:
            worker.step()
        assert [e for e in handler.attempts if e.startswith("a")] == ["a0", "a1"]
        assert [e for e in handler.attempts if e.startswith("b")] == ["b0", "b1"]
        worker.commit(asynchronous=True)
        assert consumer.commits[-1] == {0: 4}
    finally:
        pool.close()


def test_an_outage_in_a_batch_sends_the_rest_of_it_in_order_once_the_server_is_back() -> None:
    messages = [FakeMessage(i, decision(e)) for i, e in enumerate(["a0", "a1", "a2", "a3"])]
    worker, consumer, handler, clock, pool = lane_worker({"a1": [DOWN]}, messages, 1)
    handler.barrier = None
    try:
        # a0 starts alone on the idle lane; a1-a3 wait and go as the next batch, in which
        # a1 meets the outage and a2 and a3 are not started; once the gate opens, a1 goes
        # first, then a2 and a3.
        run_for(worker, clock, 0.05)
        while worker.busy:
            worker.step()
        assert handler.attempts == ["a0", "a1"] and not worker.gate.is_open(clock.now)
        run_for(worker, clock, 1.5)
        while worker.busy or worker.waiting:
            worker.step()
        assert handler.attempts == ["a0", "a1", "a1", "a2", "a3"]
        worker.commit(asynchronous=True)
        assert consumer.commits[-1] == {0: 4}
    finally:
        pool.close()


@dataclass
class GatedHandler(ScriptedHandler):
    """Holds each job whose offset has an event until that event is set."""

    gates: dict[int, threading.Event] = field(default_factory=dict)
    entered: dict[int, threading.Event] = field(default_factory=dict)

    def advance(self, job: Job) -> Outcome:
        gate = self.gates.get(job.record.offset)
        if gate is not None:
            self.entered.setdefault(job.record.offset, threading.Event()).set()
            assert gate.wait(5)
        return super().advance(job)


def test_a_revoke_waits_for_the_e_mail_being_sent_not_for_the_rest_of_its_batch() -> None:
    clock = Clock()
    ids = [f"a{i}" for i in range(6)]
    consumer = FakeConsumer(clock, [FakeMessage(i, decision(e)) for i, e in enumerate(ids)])
    handler = GatedHandler({}, gates={0: threading.Event()})
    pool = Lanes([handler], advance_each)  # type: ignore[list-item]
    policy = Policy(Backoff(initial=1.0, cap=8.0), 3, 0, max_parked=100)
    worker = Worker(consumer, handler, Metrics(), policy, clock=clock,  # type: ignore[arg-type]
                    rand=lambda: 1.0, lanes=pool)
    try:
        worker.step()  # a0-a5, read in one poll round, go as one batch, held at a0
        assert not worker.waiting and worker.batches == 1
        while 0 not in handler.entered:
            worker.step()
        threading.Timer(0.2, handler.gates[0].set).start()
        worker._on_revoke(consumer, [TopicPartition(TOPIC, 0)])  # type: ignore[arg-type]
        assert handler.attempts == ["a0"] and not worker.busy and not worker.waiting
        assert worker.batches == 0
        assert consumer.commits[-1] == {0: 1}  # a1-a5 are read again by the next owner
    finally:
        pool.close()


# ---------------------------------------------------------------- batches of several courses


@dataclass
class BatchLog:
    """A lane action that notes each batch's event ids, then runs it as `advance_each`."""

    batches: list[list[str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, handler: ScriptedHandler, jobs: list[Job],
                 stop: Callable[[Job], bool]) -> list[Result]:
        with self.lock:
            self.batches.append([str(job.event_id) for job in jobs])
        return advance_each(handler, jobs, stop)  # type: ignore[arg-type]


def batched_worker(messages: list[FakeMessage], lanes: int,
                   scripts: dict[str, list[SendFailure]] | None = None
                   ) -> tuple[Worker, FakeConsumer, ScriptedHandler, Clock, Lanes, BatchLog]:
    clock = Clock()
    consumer = FakeConsumer(clock, messages)
    handler = BlockingHandler(scripts or {})
    log = BatchLog()
    pool = Lanes([handler] * lanes, log)  # type: ignore[list-item,arg-type]
    policy = Policy(Backoff(initial=1.0, cap=8.0), permanent_attempts=3, give_up_seconds=0,
                    max_parked=100)
    worker = Worker(consumer, handler, Metrics(), policy, clock=clock,  # type: ignore[arg-type]
                    rand=lambda: 1.0, lanes=pool)
    return worker, consumer, handler, clock, pool, log


def drain(worker: Worker, clock: Clock) -> None:
    run_for(worker, clock, 0.05)
    while worker.busy or worker.waiting:
        worker.step()


def test_records_of_several_courses_read_together_share_batches_spread_over_the_lanes() -> None:
    # Six courses on two partitions, one or two records each, as one commit of the
    # processor brings them: two lanes, so two batches of three, never one per course.
    keys = [b"c1", b"c2", b"c3", b"c4", b"c5", b"c1", b"c6"]
    partition = {b"c1": 0, b"c2": 1, b"c3": 0, b"c4": 1, b"c5": 0, b"c6": 1}
    messages = [FakeMessage(i, decision(f"e{i}"), partition[key], key)
                for i, key in enumerate(keys)]
    worker, consumer, handler, clock, pool, log = batched_worker(messages, 2)
    try:
        drain(worker, clock)
        assert sorted(len(batch) for batch in log.batches) == [3, 4]
        # c1's two records (e0, e5) in one batch, in log order.
        (with_c1,) = [batch for batch in log.batches if "e0" in batch]
        assert with_c1.index("e0") < with_c1.index("e5")
        assert sorted(handler.attempts) == sorted(f"e{i}" for i in range(7))
        assert worker.batches == 0 and not worker.busy
        worker.commit(asynchronous=True)
        assert consumer.commits[-1] == {0: 6, 1: 7}
    finally:
        pool.close()


def test_a_course_has_one_batch_at_a_time_and_its_later_records_wait_for_it() -> None:
    # c1's record e2 comes after its first batch started: it waits for that batch, then
    # goes in a later one, and e0, e1, e2 go out in log order.
    clock = Clock()
    consumer = FakeConsumer(clock, [FakeMessage(0, decision("e0"), 0, b"c1"),
                                    FakeMessage(1, decision("e1"), 0, b"c1")])
    handler = GatedHandler({}, gates={0: threading.Event()})
    log = BatchLog()
    pool = Lanes([handler, handler], log)  # type: ignore[list-item,arg-type]
    policy = Policy(Backoff(initial=1.0, cap=8.0), 3, 0, max_parked=100)
    worker = Worker(consumer, handler, Metrics(), policy, clock=clock,  # type: ignore[arg-type]
                    rand=lambda: 1.0, lanes=pool)
    try:
        worker.step()
        while 0 not in handler.entered:
            worker.step()
        consumer.queue.append(FakeMessage(2, decision("e2"), 0, b"c1"))
        worker.step()
        assert log.batches == [["e0", "e1"]]  # the idle second lane did not take e2
        assert [job.event_id for job in worker.waiting[(TOPIC, 0, b"c1")]] == ["e2"]
        handler.gates[0].set()
        drain(worker, clock)
        assert log.batches == [["e0", "e1"], ["e2"]]
        assert handler.attempts == ["e0", "e1", "e2"]
    finally:
        pool.close()


def test_an_outage_in_a_batch_of_several_courses_puts_each_courses_rest_back_in_order() -> None:
    # One lane, one batch: c1's e0, c2's e1 and e3, c3's e2. e1 meets the outage: e2 and
    # e3 are not started, and go back to the front of their courses' queues; when the
    # gate opens, e1 goes first and every course keeps its order.
    keys = [b"c1", b"c2", b"c3", b"c2"]
    messages = [FakeMessage(i, decision(f"e{i}"), 0, key) for i, key in enumerate(keys)]
    worker, consumer, handler, clock, pool, log = batched_worker(messages, 1, {"e1": [DOWN]})
    try:
        run_for(worker, clock, 0.05)
        while worker.busy:
            worker.step()
        assert log.batches == [["e0", "e1", "e3", "e2"]]
        assert handler.attempts == ["e0", "e1"] and not worker.gate.is_open(clock.now)
        run_for(worker, clock, 1.5)
        while worker.busy or worker.waiting:
            worker.step()
        assert handler.attempts[:3] == ["e0", "e1", "e1"]
        assert handler.attempts.index("e1", 2) < handler.attempts.index("e3")
        assert sorted(handler.attempts[3:]) == ["e2", "e3"]
        worker.commit(asynchronous=True)
        assert consumer.commits[-1] == {0: 4}
    finally:
        pool.close()
