"""Run the projector: `python -m projections.projector` (`make up` starts it this way).

Reads `course-events` (read_committed, no Kafka offset commits) and keeps the views of
`projections.store` in PostgreSQL. Settings (see `projections/settings.py`):
KAFKA_BOOTSTRAP_SERVERS and DATABASE_URL are required; GET /healthz, /readyz and /metrics are
served on HOST:PROJECTOR_PORT (default 127.0.0.1:6067). Logs go to stderr as JSON lines.

How it stays exact:
- Positions live in PostgreSQL only. Every batch (`consume(n)`) is one transaction
  holding the view changes and the next offset per partition; on every partition
  assignment the consumer is placed at the stored offsets. A crash before the commit
  leaves nothing, a crash after it leaves both, so no event counts twice or never.
- A decision read twice (a redelivery, or a decision the processor repeated in the log
  after a crash, same event_id) is kept out by the primary key on signup_id, and only
  new decisions add to the aggregates; a course counts once, when its row gets a title.
  So applying an event twice changes nothing: the stored positions are what guarantees
  that none is skipped.
- Each batch transaction first locks this projection's generation row and checks the
  stored positions it was read from. A replay that swapped tables in bumps the
  generation (and may move positions), so the batch rolls back and the consumer seeks
  to the positions swapped in (see `projections.replay`).
- A record that cannot be decoded goes to `course-events.dlq` (acknowledged by Kafka
  before the batch commits) and its offset advances with the batch.
- When PostgreSQL goes away, the batch is dropped, the projector retries with backoff
  until the database answers, then seeks to the stored positions: nothing is lost,
  because only committed positions are ever used.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from types import FrameType

import psycopg
from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaException,
    Message,
    TopicPartition,
)

from projections import deadletter, store
from projections.batch import EventRecord, build
from projections.observability import ProjectorMetrics
from projections.settings import ProjectorSettings
from schemas import topics
from service_kit.deadletter import DeadLetterError, DeadLetterProducer
from service_kit.health import serve_health
from service_kit.kafka_auth import client_config
from service_kit.logs import configure_logging
from service_kit.postgres import migrate_when_up
from service_kit.settings import load_settings

log = logging.getLogger("projections.projector")

# /healthz fails when the loop has not come round for this long (a hung process).
_STALL_SECONDS = 120.0


def consumer_config(settings: ProjectorSettings) -> dict[str, object]:
    static = ({"group.instance.id": settings.projector_instance_id}
              if settings.projector_instance_id else {})
    return {
        **static,
        **client_config(),
        "bootstrap.servers": settings.kafka_bootstrap_servers,
        "group.id": settings.projector_group_id,
        "isolation.level": "read_committed",  # never project an aborted transaction
        "enable.auto.commit": False,  # positions are in PostgreSQL, beside the views
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        "enable.partition.eof": False,
        # Bound the prefetch: while PostgreSQL is away nothing is drained.
        "queued.max.messages.kbytes": 16384,
    }


class Projector:
    def __init__(
        self,
        settings: ProjectorSettings,
        metrics: ProjectorMetrics,
        consumer: Consumer,
        dead_letters: DeadLetterProducer,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.consumer = consumer
        self.dead_letters = dead_letters
        self.target = store.live(settings.projection)
        self.conn: psycopg.Connection | None = None
        # Per assigned partition, the position stored in PostgreSQL (None: none yet).
        self.positions: dict[int, int | None] = {}
        self.generation: int | None = None
        self.resync_needed = False
        self.failures = 0  # batches failed in a row on PostgreSQL
        self.heartbeat = time.monotonic()
        self.newest_event_at: datetime | None = None
        self.joined = False  # given partitions (or none) by the group at least once
        self.database_down = False
        self.halt = threading.Event()

    # -------------------------------------------------------------- lifecycle

    def stop(self) -> None:
        self.halt.set()

    def healthy(self) -> bool:
        return time.monotonic() - self.heartbeat < _STALL_SECONDS

    def readiness(self) -> tuple[bool, str]:
        """(ready, why not): projecting, or able to as soon as events come."""
        if not self.healthy():
            return False, "stalled"
        if self.database_down:
            return False, "PostgreSQL unavailable"
        if not self.joined:
            return False, "not in the consumer group yet"
        return True, ""

    def run(self) -> None:
        self.consumer.subscribe([topics.EVENTS], on_assign=self._on_assign,
                                on_revoke=self._on_revoke, on_lost=self._on_revoke)
        try:
            while not self.halt.is_set():
                self.heartbeat = time.monotonic()
                if self.resync_needed:
                    self._resync()
                    continue
                messages = self.consumer.consume(
                    self.settings.projector_batch_size,
                    self.settings.projector_batch_timeout_seconds,
                )
                records = self._records(messages)
                if records:
                    self._project(records)
                self._update_lag()
        finally:
            # A static member does not leave the group on close: a restart within the
            # session timeout gets the same partitions back without a rebalance.
            self.consumer.close()
            self.dead_letters.close()
            if self.conn is not None:
                self.conn.close()

    # -------------------------------------------------------------- one batch

    def _records(self, messages: Sequence[Message]) -> list[EventRecord]:
        records = []
        for msg in messages:
            err = msg.error()
            if err is not None:
                if err.fatal():  # e.g. fenced by a newer instance with the same instance id
                    raise KafkaException(err)
                log.warning("consumer error", extra={"error": str(err)})
                continue
            partition, offset = msg.partition(), msg.offset()
            if partition is None or offset is None or partition not in self.positions:
                continue  # revoked while this batch was fetched
            stored = self.positions[partition]
            if stored is not None and offset < stored:
                continue  # already in PostgreSQL
            records.append(EventRecord(partition, offset, msg.key(), msg.value()))
        return records

    def _project(self, records: list[EventRecord]) -> None:
        batch = build(records)
        expected = {p: self.positions.get(p) for p in batch.next_offsets}
        try:
            deadletter.publish(self.dead_letters, batch.failures)
            self.metrics.dlq.inc(len(batch.failures))
            conn = self._connection()
            started = time.perf_counter()
            with conn.transaction():
                applied = store.apply(conn, self.target, batch, topic=topics.EVENTS,
                                      expected=expected, generation=self.generation)
            self.metrics.batch_seconds.observe(time.perf_counter() - started)
        except store.Stale as exc:
            log.info("stored positions moved; seeking to them", extra={"why": str(exc)})
            self.metrics.resyncs.labels("stale").inc()
            self.resync_needed = True
            return
        except psycopg.Error as exc:
            # Whether the commit happened is unknown when the connection died during it:
            # the positions in PostgreSQL will say, once it answers again.
            self.failures += 1
            self.database_down = True
            delay = min(0.1 * 2 ** self.failures, self.settings.projector_max_backoff_seconds)
            log.warning("batch not committed: PostgreSQL failed",
                        extra={"error": repr(exc), "retry_in_s": round(delay, 2)})
            self.metrics.db_failures.inc()
            self.metrics.resyncs.labels("database").inc()
            self._drop_connection()
            self.resync_needed = True
            self._pause(delay)  # whatever failed, do not hammer the database with it
            return
        except (DeadLetterError, KafkaException) as exc:
            log.warning("batch not committed: dead-letter topic failed",
                        extra={"error": repr(exc)})
            self.metrics.resyncs.labels("dead_letter").inc()
            self.resync_needed = True
            self._pause(1.0)
            return
        self.failures = 0
        self.positions.update(batch.next_offsets)
        self.newest_event_at = batch.newest_event_at or self.newest_event_at
        self.metrics.batches.inc()
        self.metrics.repeated.inc(applied.repeated_decisions)
        for event_type, n in batch.event_counts.items():
            self.metrics.events.labels(event_type).inc(n)
        if log.isEnabledFor(logging.INFO):
            for decision in batch.decisions:
                # One line per decision, ids only, so one grep by correlation id follows a
                # sign-up from the HTTP request to the view.
                log.info("projected", extra={
                    "correlation_id": decision.correlation_id, "event_id": decision.event_id,
                    "signup_id": decision.signup_id, "course_id": decision.course_id,
                    "status": decision.status})

    # -------------------------------------------------------------- positions

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        generation, stored = self._stored_state()
        for tp in partitions:
            tp.offset = stored.get(tp.partition, OFFSET_BEGINNING)
        consumer.assign(partitions)
        self.positions = {tp.partition: stored.get(tp.partition) for tp in partitions}
        self.generation = generation
        self.resync_needed = False
        self.joined = True
        log.info("partitions assigned", extra={
            "partitions": sorted(self.positions), "generation": generation})

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            self.positions.pop(tp.partition, None)
            with contextlib.suppress(KeyError):  # no lag reported for it yet
                self.metrics.lag_events.remove(str(tp.partition))
        log.info("partitions revoked", extra={"partitions": [tp.partition for tp in partitions]})

    def _resync(self) -> None:
        """Seek every assigned partition to the position stored in PostgreSQL."""
        generation, stored = self._stored_state()
        assignment = self.consumer.assignment()
        try:
            for tp in assignment:
                self.consumer.seek(TopicPartition(
                    topics.EVENTS, tp.partition, stored.get(tp.partition, OFFSET_BEGINNING)))
        except KafkaException as exc:
            # A partition that has not started fetching cannot seek yet: let the consumer
            # run a moment (what it returns is dropped; the seek is repeated).
            log.info("seek not possible yet; retrying", extra={"error": str(exc)})
            self.consumer.consume(1, 0.2)
            return
        self.positions = {tp.partition: stored.get(tp.partition) for tp in assignment}
        self.generation = generation
        self.resync_needed = False
        log.info("seeked to stored positions", extra={
            "positions": {str(p): o for p, o in self.positions.items()},
            "generation": generation})

    def _stored_state(self) -> tuple[int, dict[int, int]]:
        """Generation and positions from PostgreSQL, waiting with backoff while it is away."""
        delay = 0.2
        while True:
            self.heartbeat = time.monotonic()
            try:
                conn = self._connection()
                with conn.transaction():
                    # Generation first: a swap between the two reads makes the next
                    # batch see a newer generation and seek once more, never the reverse.
                    generation = store.read_generation(conn, self.settings.projection)
                    stored = store.read_positions(conn, self.settings.projection, topics.EVENTS)
                self.database_down = False
                return generation, stored
            except psycopg.OperationalError as exc:
                self.database_down = True
                self._drop_connection()
                if self.halt.is_set():
                    raise SystemExit(0) from exc
                log.warning("PostgreSQL unavailable; retrying", extra={
                    "error": str(exc).strip()[:200], "retry_in_s": round(delay, 2)})
                self._pause(delay)
                delay = min(delay * 2, self.settings.projector_max_backoff_seconds)

    def _connection(self) -> psycopg.Connection:
        if self.conn is None or self.conn.closed:
            self.conn = psycopg.connect(self.settings.database_url, autocommit=True,
                                        connect_timeout=5)
        return self.conn

    def _drop_connection(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(psycopg.Error):
                self.conn.close()
        self.conn = None

    def _pause(self, seconds: float) -> None:
        self.halt.wait(seconds)

    # -------------------------------------------------------------- lag

    def _update_lag(self) -> None:
        total = 0
        assignment = self.consumer.assignment()
        if not assignment:
            return
        positions = {tp.partition: tp.offset for tp in self.consumer.position(assignment)}
        for tp in assignment:
            _low, high = self.consumer.get_watermark_offsets(tp, cached=True)
            if high < 0:
                continue
            # The consumer's position has stepped over transaction markers, the stored
            # one has not: the larger one is the truth once a batch has committed.
            done = max(self.positions.get(tp.partition) or 0, positions.get(tp.partition, 0))
            lag = max(0, high - done)
            total += lag
            self.metrics.lag_events.labels(str(tp.partition)).set(lag)
        behind = total > 0 and self.newest_event_at is not None
        self.metrics.lag_seconds.set(
            (datetime.now(UTC) - self.newest_event_at).total_seconds()
            if behind and self.newest_event_at is not None else 0.0)


# ------------------------------------------------------------------ entry point


def bootstrap(settings: ProjectorSettings, *, metrics: ProjectorMetrics | None = None,
              consumer: Consumer | None = None,
              dead_letters: DeadLetterProducer | None = None) -> Projector:
    """The projector, with a Kafka consumer and dead-letter producer unless given."""
    kafka_log = logging.getLogger("projections.projector.kafka")
    return Projector(
        settings, metrics or ProjectorMetrics(),
        consumer or Consumer(consumer_config(settings), logger=kafka_log),
        dead_letters or deadletter.producer(settings.kafka_bootstrap_servers, kafka_log),
    )


def _ensure_generation(projection: str) -> Callable[[str], None]:
    def prepare(conninfo: str) -> None:
        with psycopg.connect(conninfo, autocommit=True) as conn:
            store.ensure_generation(conn, projection)
    return prepare


def main() -> None:
    settings = load_settings(ProjectorSettings, "projector")
    configure_logging(settings.log_level, "projector")
    projector = bootstrap(settings)

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("stopping", extra={"signal": signal.Signals(signum).name})
        projector.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    server = serve_health(settings.host, settings.projector_port, alive=projector.healthy,
                          ready=projector.readiness, metrics=projector.metrics.render)
    try:
        if migrate_when_up(settings.database_url, projector.halt,
                           cap=settings.projector_max_backoff_seconds,
                           prepare=_ensure_generation(settings.projection)):
            log.info("projector started", extra={"port": settings.projector_port,
                                                 "projection": settings.projection})
            projector.run()
    finally:
        server.shutdown()


if __name__ == "__main__":
    main()
