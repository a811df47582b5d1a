"""KafkaPublisher's bridge from librdkafka delivery reports to asyncio, on a fake Producer."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException

from command_api import publisher as publisher_module
from command_api.publisher import KafkaPublisher, PublishError, producer_config

DeliveryCallback = Callable[[KafkaError | None, Any], None]


@dataclass
class FakeProducer:
    """Reports deliveries from whichever thread polls it, as librdkafka does."""

    config: dict[str, Any]
    error: KafkaError | None = None
    silent: bool = False  # never report: a lost callback
    full: bool = False
    reachable: bool = True
    paused: bool = False  # poll serves no report meanwhile
    produced: list[tuple[str, bytes, bytes, list[tuple[str, bytes]]]] = field(default_factory=list)
    _pending: list[DeliveryCallback] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    probes: int = 0

    def produce(self, topic: str, *, value: bytes, key: bytes,
                headers: list[tuple[str, bytes]], on_delivery: DeliveryCallback) -> None:
        if self.full:
            raise BufferError("queue full")
        with self._lock:
            self.produced.append((topic, key, value, headers))
            if not self.silent:
                self._pending.append(on_delivery)

    def poll(self, timeout: float) -> int:
        if self.paused:
            time.sleep(min(timeout, 0.005))
            return 0
        with self._lock:
            pending, self._pending = self._pending, []
        for callback in pending:
            callback(self.error, None)
        if not pending:
            time.sleep(min(timeout, 0.005))
        return len(pending)

    def flush(self, timeout: float) -> int:
        self.poll(0)
        return 0

    def list_topics(self, topic: str, timeout: float) -> Any:
        self.probes += 1
        if not self.reachable:
            raise KafkaException(KafkaError(KafkaError._TRANSPORT))
        partitions = {0: object()}
        return type("Metadata", (), {"topics": {
            topic: type("Topic", (), {"error": None, "partitions": partitions})()}})()


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> list[FakeProducer]:
    made: list[FakeProducer] = []

    def producer(config: dict[str, Any]) -> FakeProducer:
        made.append(FakeProducer(config))
        return made[-1]

    monkeypatch.setattr(publisher_module, "Producer", producer)
    monkeypatch.setattr(publisher_module, "_CALLBACK_GRACE_SECONDS", 0.05)
    return made


@pytest.fixture
async def publisher(fake: list[FakeProducer]) -> AsyncIterator[KafkaPublisher]:
    publisher = KafkaPublisher("unused:9092", timeout_seconds=0.2, probe_topic="course-commands")
    await publisher.start()
    yield publisher
    await publisher.stop()


def test_the_producer_waits_for_all_replicas_and_retries_idempotently() -> None:
    config = producer_config("k:9092", timeout_seconds=5)

    assert (config["acks"], config["enable.idempotence"]) == ("all", True)
    assert 0 < config["linger.ms"] <= 10
    assert config["message.timeout.ms"] == 5000


async def test_publish_returns_once_the_delivery_report_arrives(
    publisher: KafkaPublisher, fake: list[FakeProducer]
) -> None:
    await publisher.publish("course-commands", b"c1", b"value", [("command_type", b"SignUp")])

    assert fake[0].produced == [("course-commands", b"c1", b"value", [("command_type", b"SignUp")])]


async def test_the_reports_of_one_poll_reach_the_event_loop_in_one_hand_off(
    publisher: KafkaPublisher, fake: list[FakeProducer], monkeypatch: pytest.MonkeyPatch
) -> None:
    loop = asyncio.get_running_loop()
    hand_offs: list[object] = []
    real = loop.call_soon_threadsafe

    def counted(callback: Any, *args: Any) -> Any:
        hand_offs.append(callback)
        return real(callback, *args)

    monkeypatch.setattr(loop, "call_soon_threadsafe", counted)
    fake[0].paused = True  # the poll thread serves nothing until all 50 are produced
    sends = [asyncio.ensure_future(publisher.publish("course-commands", b"c", b"v", []))
             for _ in range(50)]
    await asyncio.sleep(0.05)
    fake[0].paused = False
    await asyncio.gather(*sends)

    assert len(fake[0].produced) == 50
    assert 1 <= len(hand_offs) <= 2, len(hand_offs)  # one poll's worth, not one per message


async def test_a_failed_delivery_is_a_publish_error(
    publisher: KafkaPublisher, fake: list[FakeProducer]
) -> None:
    fake[0].error = KafkaError(KafkaError._MSG_TIMED_OUT)

    with pytest.raises(PublishError, match="timed out"):
        await publisher.publish("course-commands", b"c1", b"value", [])


async def test_a_delivery_report_that_never_comes_is_a_publish_error_in_bounded_time(
    publisher: KafkaPublisher, fake: list[FakeProducer]
) -> None:
    fake[0].silent = True
    began = time.monotonic()

    with pytest.raises(PublishError):
        await publisher.publish("course-commands", b"c1", b"value", [])

    assert time.monotonic() - began < 1


async def test_a_full_local_queue_is_a_publish_error(
    publisher: KafkaPublisher, fake: list[FakeProducer]
) -> None:
    fake[0].full = True

    with pytest.raises(PublishError, match="queue is full"):
        await publisher.publish("course-commands", b"c1", b"value", [])


async def test_readiness_probes_the_broker_and_caches_the_answer(
    publisher: KafkaPublisher, fake: list[FakeProducer]
) -> None:
    assert await publisher.ready()
    fake[0].reachable = False

    assert await publisher.ready()  # cached for a moment: probes stay cheap under polling
    assert fake[0].probes == 1


async def test_an_unreachable_broker_is_not_ready(fake: list[FakeProducer]) -> None:
    publisher = KafkaPublisher("unused:9092", timeout_seconds=0.2, probe_topic="course-commands")
    await publisher.start()
    fake[0].reachable = False
    try:
        assert not await publisher.ready()
    finally:
        await publisher.stop()


def test_repeated_client_errors_are_logged_once_per_window(
    fake: list[FakeProducer], caplog: pytest.LogCaptureFixture
) -> None:
    publisher = KafkaPublisher("unused:9092", timeout_seconds=0.2, probe_topic="course-commands")
    caplog.set_level(logging.WARNING, logger="command_api.kafka")
    text = f"1/1 brokers are down ({uuid.uuid4()})"  # the window outlives this test

    for _ in range(5):
        publisher._on_error(KafkaError(KafkaError._ALL_BROKERS_DOWN, text))

    assert len([r for r in caplog.records if r.name == "command_api.kafka"]) == 1
