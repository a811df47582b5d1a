"""Publishing commands to Kafka: a request awaits the broker's acknowledgement, not a flush.

One confluent-kafka producer batches the messages of all concurrent requests; a thread
serves its delivery callbacks. A callback only notes its report; after each poll the
thread hands all the reports that poll served to the event loop at once, which settles
the asyncio future of each request (one wake-up of the loop per produce batch, not per
message: under load, the per-message hop was a tenth of the process's CPU).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import re
import threading
import time
from typing import Any, Protocol

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from service_kit.kafka_auth import client_config
from service_kit.records import Headers

log = logging.getLogger(__name__)
kafka_log = logging.getLogger("command_api.kafka")


# librdkafka reports a timed-out message itself after message.timeout.ms; the asyncio
# timeout only guards against a callback that never comes, so it waits a little longer.
_CALLBACK_GRACE_SECONDS = 1.0
_REQUEST_TIMEOUT_MS = 5000
_READY_PROBE_TIMEOUT_SECONDS = 1.0
_READY_CACHE_SECONDS = 2.0
# While a broker is down librdkafka reports each reconnect attempt; one line per distinct
# message per window is enough for an operator.
_REPEAT_WINDOW_SECONDS = 30.0
_DIGITS = re.compile(r"\d+")


class PublishError(Exception):
    """The broker did not acknowledge the message, so the command may not be in Kafka."""


class Publisher(Protocol):
    """What the routes need from a message bus."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def publish(self, topic: str, key: bytes, value: bytes, headers: Headers) -> None:
        """Return once the broker acknowledged the message; raise PublishError otherwise."""
        ...

    async def ready(self) -> bool:
        """Whether a publish can currently succeed."""
        ...


def producer_config(bootstrap_servers: str, timeout_seconds: float) -> dict[str, Any]:
    """librdkafka settings for durable, batched, bounded-time publishing."""
    timeout_ms = max(1000, int(timeout_seconds * 1000))
    return {
        **client_config(),
        "bootstrap.servers": bootstrap_servers,
        "client.id": "command-api",
        # A 202 promises the command survives a broker loss: every in-sync replica has it.
        "acks": "all",
        # librdkafka retries inside message.timeout.ms; idempotence keeps those retries
        # from writing a command twice or out of order within a partition.
        "enable.idempotence": True,
        # Requests arriving within a few ms share one produce request.
        "linger.ms": 5,
        # librdkafka's default, spelled out: a course's partition is CRC-32 of its id.
        # Changing it would move courses away from their state in the processor; the
        # processor's migration (course_processor/migrate.py) computes the same.
        "partitioner": "consistent_random",
        "message.timeout.ms": timeout_ms,
        "request.timeout.ms": timeout_ms,
        # A request to a broker that hangs (SIGSTOP, a network partition) is given up
        # after at most 5 s on our side (librdkafka's request.timeout.ms is only the
        # broker's), so that within message.timeout.ms the retry can still reach the
        # partition's new leader once the cluster has fenced the hung one.
        "socket.timeout.ms": min(timeout_ms, _REQUEST_TIMEOUT_MS),
        "socket.connection.setup.timeout.ms": timeout_ms,
        # Reconnect quickly once the broker is back instead of backing off up to 10 s.
        "reconnect.backoff.max.ms": 1000,
    }


class KafkaPublisher:
    """A Publisher on one confluent-kafka Producer."""

    def __init__(self, bootstrap_servers: str, timeout_seconds: float, probe_topic: str) -> None:
        self._config = {
            **producer_config(bootstrap_servers, timeout_seconds),
            "error_cb": self._on_error,
            "logger": _throttled(logging.getLogger("command_api.librdkafka")),
        }
        self._timeout = timeout_seconds
        self._probe_topic = probe_topic
        self._producer: Producer | None = None
        self._poller: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        # Delivery reports the current poll served, appended by its callbacks on the poll
        # thread (or on the thread of the last flush, once the poll thread has ended).
        self._reports: list[_Report] = []
        self._stopping = threading.Event()
        self._fatal: KafkaError | None = None
        self._ready = False
        self._checked_at = float("-inf")
        self._ready_lock = asyncio.Lock()
        _throttled(kafka_log)

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._producer = Producer(self._config)
        self._stopping.clear()
        self._poller = threading.Thread(target=self._poll, name="kafka-poll", daemon=True)
        self._poller.start()

    async def stop(self) -> None:
        producer, poller = self._producer, self._poller
        if producer is None or poller is None:
            return
        self._stopping.set()
        await asyncio.to_thread(poller.join)
        # The server has answered its in-flight requests by now; anything still queued
        # belongs to a request that timed out, so give it one last chance, bounded.
        remaining = await asyncio.to_thread(producer.flush, self._timeout)
        reports, self._reports = self._reports, []
        _settle_all(reports)
        if remaining:
            log.warning("producer stopped with undelivered messages", extra={"count": remaining})
        self._producer = self._poller = None

    async def publish(self, topic: str, key: bytes, value: bytes, headers: Headers) -> None:
        producer = self._producer
        if producer is None:
            raise PublishError("publisher is not started")
        if self._fatal is not None:
            raise PublishError(f"producer failed fatally: {self._fatal.str()}")
        acked: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        try:
            producer.produce(topic, value=value, key=key, headers=list(headers),
                             on_delivery=functools.partial(self._on_delivery, acked))
        except BufferError as exc:
            raise PublishError("local producer queue is full") from exc
        except KafkaException as exc:
            raise PublishError(f"produce failed: {exc}") from exc
        try:
            async with asyncio.timeout(self._timeout + _CALLBACK_GRACE_SECONDS):
                await acked
        except TimeoutError as exc:
            raise PublishError("no delivery report in time") from exc

    async def ready(self) -> bool:
        if self._fatal is not None or self._producer is None:
            return False
        if time.monotonic() - self._checked_at < _READY_CACHE_SECONDS:
            return self._ready
        async with self._ready_lock:  # one probe at a time; the others take its answer
            if time.monotonic() - self._checked_at >= _READY_CACHE_SECONDS:
                self._ready = await asyncio.to_thread(self._probe, self._producer)
                self._checked_at = time.monotonic()
        return self._ready

    def _probe(self, producer: Producer) -> bool:
        try:
            metadata = producer.list_topics(self._probe_topic, timeout=_READY_PROBE_TIMEOUT_SECONDS)
        except KafkaException as exc:
            kafka_log.warning("kafka unreachable", extra={"error": str(exc)})
            return False
        topic = metadata.topics.get(self._probe_topic)
        if topic is None or topic.error is not None or not topic.partitions:
            reason = "missing" if topic is None or topic.error is None else topic.error.str()
            kafka_log.warning(
                "topic unavailable", extra={"topic": self._probe_topic, "error": reason}
            )
            return False
        return True

    def _on_delivery(self, acked: asyncio.Future[None], err: KafkaError | None,
                     _msg: Message) -> None:
        # Runs on the thread that polls; the future belongs to the event loop.
        self._reports.append((acked, err))

    def _poll(self) -> None:
        assert self._producer is not None and self._loop is not None
        while not self._stopping.is_set():
            self._producer.poll(0.1)
            if self._reports:
                reports, self._reports = self._reports, []
                with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits
                    self._loop.call_soon_threadsafe(_settle_all, reports)

    def _on_error(self, err: KafkaError) -> None:
        if err.fatal():
            # An idempotent producer that hit a fatal error cannot produce again; readiness
            # turns false so the operator (or orchestrator) restarts the process.
            self._fatal = err
            kafka_log.error("kafka producer failed fatally", extra={"error": err.str()})
        else:
            kafka_log.warning("kafka client error", extra={"error": err.str()})


class _RepeatFilter(logging.Filter):
    """Drops a record whose text was already logged within the window."""

    def __init__(self, window_seconds: float) -> None:
        super().__init__()
        self._window = window_seconds
        self._last_seen: dict[str, float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        # librdkafka's lines differ between attempts only in numbers (durations, counts).
        text = _DIGITS.sub("N", f"{record.getMessage()} {getattr(record, 'error', '')}")
        now = time.monotonic()
        if now - self._last_seen.get(text, float("-inf")) < self._window:
            return False
        if len(self._last_seen) > 1000:  # bound the memory a flapping cluster can take
            self._last_seen.clear()
        self._last_seen[text] = now
        return True


def _throttled(logger: logging.Logger) -> logging.Logger:
    if not any(isinstance(f, _RepeatFilter) for f in logger.filters):
        logger.addFilter(_RepeatFilter(_REPEAT_WINDOW_SECONDS))
    return logger


_Report = tuple[asyncio.Future[None], KafkaError | None]


def _settle_all(reports: list[_Report]) -> None:
    for future, err in reports:
        if future.done():  # the request already gave up waiting
            continue
        if err is None:
            future.set_result(None)
        else:
            future.set_exception(PublishError(f"delivery failed: {err.str()}"))
