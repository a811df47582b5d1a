"""The consumer loop: takes records of course-events, schedules retries, commits offsets.

Ordering and progress. Records are handled in log order. A decision whose e-mail
fails on its own (a 4xx or 5xx about that message) is parked with its own backoff and
the loop goes on with the next records, so one bad message never stops the others;
e-mails of different sign-ups do not depend on each other, and each sign-up has
exactly one decision. When the server itself is unreachable (or PostgreSQL, or the
broker for dead letters), every message would fail alike: the gate closes with a
growing backoff, the consumer pauses, and the first record to be retried when it
opens is the oldest one, so order holds across outages. CourseCreated precedes the
decisions of its course in the same partition (key = course id) and is never parked
behind them.

Offsets: per partition, only the oldest unfinished offset is committed, after the
sent-record of everything below it is in PostgreSQL. A crash re-reads from there;
the sent-record skips what already went out.

Parallel lanes (`lanes.py`, NOTIFIER_SMTP_CONNECTIONS > 1): each course (the record's
key) has at most one batch on a lane at a time and its later records wait, in log order,
in `waiting`; so within a course (each sign-up and its course's CourseCreated) everything
happens in the order of the single-connection loop, while courses, also those of one
partition, overlap their round trips. A batch is up to BATCH_MAX waiting records of one
or more courses, each course's in log order (`batch.py`). Every decision about a job's
outcome (park, retry, dead-letter, commit) is still taken on this thread.
"""

from __future__ import annotations

import contextlib
import logging
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import psycopg
from confluent_kafka import Consumer, KafkaException, TopicPartition
from confluent_kafka import Message as KafkaMessage

from notifier.batch import Result
from notifier.handler import Done, Failed, Handler, Job
from notifier.lanes import Lanes
from notifier.mailer import SendFailure
from notifier.observability import Metrics
from notifier.offsets import PartitionProgress
from notifier.retry import Gate, RetryQueue
from notifier.settings import Settings
from schemas import topics
from service_kit.backoff import Backoff
from service_kit.deadletter import DeadLetterError
from service_kit.kafka_auth import client_config
from service_kit.records import SourceRecord, header_pairs

log = logging.getLogger("notifier")

COMMIT_EVERY_SECONDS = 0.5
LAG_EVERY_SECONDS = 5.0
MAX_POLL_WAIT_SECONDS = 0.5
# With lanes: records taken per poll round at most, and how long to wait for a lane
# when nothing new came in.
TAKE_AT_ONCE = 500
LANE_WAIT_SECONDS = 0.01
# Records of a batch at most (the key locks of a batch are held until it ends), and
# batches handed to the lanes at once per lane: one running, one ready to start.
BATCH_MAX = 64
BATCHES_PER_LANE = 2

TopicKey = tuple[str, int]
# What is handled in log order: a course's records (key = course id) in its partition.
LaneKey = tuple[str, int, bytes | None]


def lane_key(job: Job) -> LaneKey:
    return (job.record.topic, job.record.partition, job.record.key)

# Parked with this due time, a job is the first one tried once the gate opens again.
FIRST_WHEN_OPEN = float("-inf")


@dataclass(frozen=True)
class Policy:
    backoff: Backoff
    permanent_attempts: int
    give_up_seconds: float  # 0: never
    max_parked: int

    @classmethod
    def of(cls, s: Settings) -> Policy:
        return cls(
            Backoff(s.notifier_retry_initial_seconds, s.notifier_retry_max_seconds,
                    s.notifier_retry_multiplier),
            s.notifier_permanent_attempts, s.notifier_transient_give_up_seconds,
            s.notifier_max_parked,
        )


def consumer_config(s: Settings) -> dict[str, object]:
    config: dict[str, object] = {
        **client_config(),
        "bootstrap.servers": s.kafka_bootstrap_servers,
        "group.id": s.notifier_group_id,
        # Only decisions of committed transactions: an aborted one never becomes an e-mail.
        "isolation.level": "read_committed",
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        # A new group starts at the beginning: every decision ever made gets its e-mail
        # (the sent-record skips those already sent), and every course is learned.
        "auto.offset.reset": "earliest",
        "session.timeout.ms": s.notifier_session_timeout_ms,
        "client.id": f"notifier-{s.notifier_group_id}",
    }
    if s.notifier_instance_id:
        config["group.instance.id"] = s.notifier_instance_id
    return config


class Worker:
    def __init__(self, consumer: Consumer, handler: Handler, metrics: Metrics, policy: Policy,
                 clock: Callable[[], float] = time.monotonic,
                 rand: Callable[[], float] = random.random,
                 closers: Sequence[Callable[[], None]] = (), lanes: Lanes | None = None
                 ) -> None:
        self.consumer = consumer
        self.lanes = lanes  # None: every step runs here, on `handler`
        self.closers = closers  # of the adapters the worker owns, called once it stopped
        self.handler = handler
        self.metrics = metrics
        self.policy = policy
        self.clock = clock
        self.rand = rand
        self.gate = Gate(policy.backoff, rand)
        self.parked: RetryQueue[Job] = RetryQueue()
        self.progress: dict[TopicKey, PartitionProgress] = {}
        self.committed: dict[TopicKey, int] = {}
        self.in_flight: dict[str, Job] = {}  # parked decisions by event id
        # With lanes: the courses with a batch on a lane (and the gate's epoch when it
        # left), and the records of each course waiting for it, in log order.
        self.busy: dict[LaneKey, int] = {}
        self.batches = 0  # batches on the lanes (each of one or more courses)
        self.waiting: dict[LaneKey, deque[Job]] = {}
        self.settling: set[TopicKey] = set()  # partitions whose waiting records stay
        if lanes is not None:
            # Read by the lanes' threads between two jobs: a revoke or a stop waits for
            # at most the e-mail each lane is sending, not for whole batches.
            lanes.stop = lambda job: (job.record.topic, job.record.partition) in self.settling
        self.buffered = 0
        self._epoch = 0  # outages so far: a success from before the last one opens nothing
        self.paused = False
        self._outage = "a dependency is unavailable"
        self._last_commit = 0.0
        self._last_lag = 0.0

    # ------------------------------------------------------------------ loop

    def run(self, stop: threading.Event) -> None:
        self.consumer.subscribe([topics.EVENTS], on_assign=self._on_assign,
                                on_revoke=self._on_revoke, on_lost=self._on_lost)
        try:
            while not stop.is_set():
                self.step()
        finally:
            try:
                self._settle_lanes({key[:2] for key in self.busy})
                self.commit(asynchronous=False)
            finally:
                for close in self.closers:
                    close()

    def step(self) -> None:
        self.metrics.beat()
        now = self.clock()
        can_send = self.gate.is_open(now)
        self.metrics.unready = None if can_send else self._outage
        if self.lanes is not None:
            self._step_lanes(self.lanes, now, can_send)
        else:
            job = self.parked.pop_due(now) if can_send else None
            if job is not None:
                self.attempt(job)
            else:
                self._flow_control(now)
                msg = self.consumer.poll(self._wait(now))
                if msg is not None:
                    self._take(msg)
        now = self.clock()
        if now - self._last_commit >= COMMIT_EVERY_SECONDS:
            self.commit(asynchronous=True)
        if now - self._last_lag >= LAG_EVERY_SECONDS:
            self._update_lag()

    def _step_lanes(self, lanes: Lanes, now: float, can_send: bool) -> None:
        self._settle(lanes.finished())
        if can_send:
            # Due retries go first in their courses; an outage's job is the oldest.
            due: list[Job] = []
            while (job := self.parked.pop_due(now)) is not None:
                due.append(job)
            for job in reversed(due):
                self._queue(job, first=True)
            self._next_any()
        self._flow_control(now)
        took = 0
        msg = self.consumer.poll(0.0 if self.busy else self._wait(now))
        while msg is not None:
            self._take(msg)
            took += 1
            msg = self.consumer.poll(0.0) if took < TAKE_AT_ONCE else None
        if took:
            self._next_any()
        if self.busy and not took:
            self._settle(lanes.finished(LANE_WAIT_SECONDS))

    def _wait(self, now: float) -> float:
        """How long poll() may block: until the next parked job can run, at most a moment."""
        wake = now + MAX_POLL_WAIT_SECONDS
        due = self.parked.next_due()
        if due is not None:
            wake = min(wake, max(due, self.gate.open_at))
        return max(0.0, wake - now)

    def _flow_control(self, now: float) -> None:
        # While nothing can be sent, or too much waits already, leave the records in
        # Kafka rather than in memory. poll() still runs, so the group keeps us.
        hold = (not self.gate.is_open(now) or len(self.parked) >= self.policy.max_parked
                or self.buffered >= self.policy.max_parked)
        if hold == self.paused:
            return
        assignment = self.consumer.assignment()
        if hold:
            self.consumer.pause(assignment)
        else:
            self.consumer.resume(assignment)
        self.paused = hold

    def _take(self, msg: KafkaMessage) -> None:
        if msg.error() is not None:
            log.warning("consumer error", extra={"error": str(msg.error())})
            return
        record = SourceRecord(
            topic=msg.topic() or topics.EVENTS, partition=msg.partition() or 0,
            offset=msg.offset() or 0, key=msg.key(), value=msg.value() or b"",
            headers=header_pairs(msg.headers()),
        )
        self.progress.setdefault((record.topic, record.partition),
                                 PartitionProgress()).take(record.offset)
        job = Job.of(record)
        event_id = job.event_id
        if event_id is not None and event_id in self.in_flight:
            # The log repeats a decision that is still parked: that copy will send it,
            # and it holds the commit below this one.
            self.metrics.skipped.inc()
            self._finish(job)
            return
        now = self.clock()
        if self.lanes is not None:
            # In log order behind its course's earlier records, whatever the gate; started
            # with the rest of this poll round's records (`_step_lanes`).
            self._queue(job)
        elif self.gate.is_open(now):
            self.attempt(job)
        else:
            # Fetched before the pause took hold: behind the job that closed the gate.
            self._park(job, now)

    # ------------------------------------------------------------------ one job

    def attempt(self, job: Job) -> None:
        """Run `job` here, on the worker's own handler (no lanes)."""
        self.busy[lane_key(job)] = self._epoch
        try:
            outcome: Result = (job, self.handler.advance(job))
        except (psycopg.Error, DeadLetterError) as exc:
            outcome = (job, exc)
        self._settle([[outcome]])

    def _settle(self, batches: list[list[Result]]) -> None:
        """Act on each job's outcome, in log order; jobs a batch did not start, and those
        to be dead-lettered now, go back to the front of their course's queue."""
        for results in batches:
            # A batch holds one or more courses' records, each course's in log order.
            epochs: dict[LaneKey, int | None] = {}
            again: dict[LaneKey, list[Job]] = {}
            for job, outcome in results:
                key = lane_key(job)
                if key not in epochs:
                    epochs[key] = self.busy.pop(key, None)
                    again[key] = []
                if outcome is None:
                    again[key].append(job)
                elif isinstance(outcome, psycopg.Error | DeadLetterError):
                    self._infra_down(job, type(outcome).__name__)
                elif isinstance(outcome, BaseException):
                    raise outcome
                elif isinstance(outcome, Done):
                    if epochs[key] == self._epoch:  # not a send begun before the latest outage
                        self.gate.succeed()
                    self._finish(job)
                elif self._failed(job, outcome):
                    again[key].append(job)
            if self.lanes is None:
                for jobs in again.values():
                    for job in jobs:  # to be dead-lettered
                        self.attempt(job)
                continue
            self.batches -= 1
            for jobs in again.values():
                for job in reversed(jobs):
                    self._queue(job, first=True)
            self._next_any()

    def _queue(self, job: Job, first: bool = False) -> None:
        waiting = self.waiting.setdefault(lane_key(job), deque())
        if first:
            waiting.appendleft(job)
        else:
            waiting.append(job)
        self.buffered += 1

    def _next_any(self) -> None:
        """Start batches of waiting records while the lanes have room and the gate is open.

        Courses with no batch on a lane go, oldest queue first, each with its records in
        log order; a course's records beyond what its batch takes wait for that batch to
        end. A batch takes several courses' records: its reads and key locks are a few
        round trips for all of them (`batch.py`), where a batch per course paid them per
        e-mail whenever records came a few per course (the processor's commits bring
        each a handful of courses' decisions at once). Each batch takes about as many as
        spreads the startable records over the lanes not yet busy, so that idle lanes
        still send in parallel, and at most BATCH_MAX."""
        lanes = self.lanes
        if lanes is None or not self.gate.is_open(self.clock()):
            return
        room = lanes.size * BATCHES_PER_LANE - self.batches
        if room <= 0:
            return
        ready = [key for key in self.waiting if key not in self.busy
                 and key[:2] not in self.settling]
        startable = sum(min(len(self.waiting[key]), BATCH_MAX) for key in ready)
        taken = 0  # courses of `ready` in a batch now
        while room > 0 and taken < len(ready):
            # Spread over the idle lanes, but never over more batches than courses left.
            spread = min(lanes.size - self.batches, len(ready) - taken)
            size = min(BATCH_MAX, -(-startable // max(1, spread)))
            jobs: list[Job] = []
            while taken < len(ready) and len(jobs) < size:
                key = ready[taken]
                taken += 1
                waiting = self.waiting[key]  # never empty: emptied queues are deleted
                startable -= min(len(waiting), BATCH_MAX)
                jobs.extend(waiting.popleft() for _ in range(min(len(waiting), size - len(jobs))))
                if not waiting:
                    del self.waiting[key]
                self.busy[key] = self._epoch
            self.buffered -= len(jobs)
            self.batches += 1
            room -= 1
            lanes.submit(jobs)

    def _settle_lanes(self, partitions: set[TopicKey]) -> None:
        """Wait for the batches of `partitions` still on a lane, with nothing started after
        them; their waiting records are dropped (read again from the committed offset)."""
        self.settling |= partitions
        try:
            while self.lanes is not None and any(k[:2] in partitions for k in self.busy):
                self._settle(self.lanes.finished(MAX_POLL_WAIT_SECONDS))
                self.metrics.beat()
        finally:
            self.settling -= partitions
            for key in [k for k in self.waiting if k[:2] in partitions]:
                self.buffered -= len(self.waiting.pop(key))

    def _failed(self, job: Job, failed: Failed) -> bool:
        """Park the job for a retry, or mark it to be dead-lettered next (True)."""
        failure, now = failed.failure, self.clock()
        if failure.server_wide:
            self._infra_down(job, failure.reason, failure.code)
            return False
        # The server answered, so it is up; only this message has a problem.
        self.gate.succeed()
        job.attempts += 1
        job.first_failure = job.first_failure if job.first_failure is not None else now
        if self._give_up(job, failure, now):
            self._dead_letter(job, failure)
            return True
        due = now + self.policy.backoff.delay(job.attempts, self.rand)
        self.metrics.retried.inc()
        log.warning("send failed, will retry", extra={
            **job.context(), "reason": failure.reason, "smtp_code": failure.code,
            "smtp_status": failure.enhanced, "attempt": job.attempts,
            "retry_in": round(due - now, 3)})
        self._park(job, due)
        return False

    def _give_up(self, job: Job, failure: SendFailure, now: float) -> bool:
        if failure.kind == "permanent":
            return job.attempts >= self.policy.permanent_attempts
        limit = self.policy.give_up_seconds
        return bool(limit) and now - (job.first_failure or now) >= limit

    def _dead_letter(self, job: Job, failure: SendFailure) -> None:
        reason = failure.reason if failure.kind == "permanent" else "retries_exhausted"
        # Codes only (`recipient_refused: 550 5.1.1`): the server's text may quote the address.
        detail = f"{failure.reason}: {failure.status}".strip(" :")
        job.give_up = (reason, detail)  # its next attempt is the dead letter

    def _infra_down(self, job: Job, reason: str, code: int | None = None) -> None:
        self._epoch += 1
        open_at = self.gate.fail(self.clock())
        self._outage = self.metrics.unready = f"dependency unavailable: {reason}"
        self.metrics.retried.inc()
        log.warning("dependency unavailable, pausing", extra={
            **job.context(), "reason": reason, "smtp_code": code,
            "failures_in_row": self.gate.failures,
            "retry_in": round(open_at - self.clock(), 3)})
        # Whatever else became due meanwhile, this (older) job goes first, so an outage
        # never reorders the log: a CourseCreated stays ahead of its decisions.
        self._park(job, FIRST_WHEN_OPEN)

    def _park(self, job: Job, due: float) -> None:
        self.parked.push(due, job)
        if job.event_id is not None:
            self.in_flight[job.event_id] = job
        self.metrics.parked.set(len(self.parked))

    def _finish(self, job: Job) -> None:
        record = job.record
        progress = self.progress.get((record.topic, record.partition))
        if progress is not None:
            progress.finish(record.offset)
        if job.event_id is not None and self.in_flight.get(job.event_id) is job:
            del self.in_flight[job.event_id]
        self.metrics.parked.set(len(self.parked))

    # ------------------------------------------------------------------ offsets

    def commit(self, asynchronous: bool, only: set[TopicKey] | None = None) -> None:
        self._last_commit = self.clock()
        offsets = []
        for key, progress in self.progress.items():
            offset = progress.committable()
            if (only is None or key in only) and offset is not None \
                    and offset > self.committed.get(key, -1):
                offsets.append(TopicPartition(key[0], key[1], offset))
        if not offsets:
            return
        try:
            if asynchronous:
                self.consumer.commit(offsets=offsets, asynchronous=True)
            else:
                self.consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:
            # Not fatal: the next commit carries a later offset, and a re-read is skipped.
            log.warning("offset commit failed", extra={"error": str(exc)})
            return
        for tp in offsets:
            self.committed[(tp.topic, tp.partition)] = tp.offset

    def _update_lag(self) -> None:
        self._last_lag = self.clock()
        try:
            positions = self.consumer.position(self.consumer.assignment())
        except KafkaException:
            return
        for tp in positions:
            low, high = self.consumer.get_watermark_offsets(tp, cached=True)
            done = self._done_offset(tp, low)
            if high >= 0 and done is not None and done >= 0:
                self.metrics.lag.labels(str(tp.partition)).set(max(0, high - done))

    def _done_offset(self, tp: TopicPartition, low: int) -> int | None:
        """The offset below which everything is handled, as far as this worker knows."""
        progress = self.progress.get((tp.topic, tp.partition))
        if progress is not None and progress.unfinished:
            return min(progress.unfinished)
        if tp.offset >= 0:
            # The consumer's position steps over transaction markers, which never
            # reach the loop, so it is the better mark once all is finished.
            return int(tp.offset)
        # Nothing read yet from this partition: it starts at the group's committed offset.
        key = (tp.topic, tp.partition)
        if key not in self.committed:
            try:
                committed = self.consumer.committed([tp], timeout=2)[0].offset
            except KafkaException:
                return None
            start = committed if committed >= 0 else low
            if start < 0:
                return None
            self.committed[key] = start
        return self.committed[key]

    # ------------------------------------------------------------------ rebalances

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.paused = False
        log.info("partitions assigned", extra={"partitions": [p.partition for p in partitions]})

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        keys = {(p.topic, p.partition) for p in partitions}
        self._settle_lanes(keys)
        self.commit(asynchronous=False, only=keys)
        self._drop(keys)
        log.info("partitions revoked", extra={"partitions": sorted(k[1] for k in keys)})

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Another member may own them already: committing now could skip its work.
        self._settle_lanes({(p.topic, p.partition) for p in partitions})
        self._drop({(p.topic, p.partition) for p in partitions})

    def _drop(self, keys: set[TopicKey]) -> None:
        # Parked work of a partition leaves with it; the new owner reads it again from
        # the committed offset, which is below every parked record.
        dropped = self.parked.remove_if(
            lambda job: (job.record.topic, job.record.partition) in keys)
        for job in dropped:
            if job.event_id is not None:
                self.in_flight.pop(job.event_id, None)
        for key in keys:
            self.progress.pop(key, None)
            self.committed.pop(key, None)
            with contextlib.suppress(KeyError):
                self.metrics.lag.remove(str(key[1]))
        self.metrics.parked.set(len(self.parked))
