"""Typed reads of Kafka records for the tests: confluent-kafka types every part of a
record as optional, while a record the tests look at always has them."""

from __future__ import annotations

import email
import email.policy
import os
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Message, TopicPartition

from schemas import codec
from schemas.messages import Event
from service_kit.kafka_auth import client_config


def kafka_servers() -> str:
    """The broker the integration tests use (KAFKA_BOOTSTRAP_SERVERS, which the `infra`
    fixture sets); the test fails without one."""
    servers = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if not servers:
        pytest.fail("KAFKA_BOOTSTRAP_SERVERS is not set: these tests need a real Kafka broker "
                    "(make test provides one)")
    return servers


def value_of(msg: Message) -> bytes:
    value = msg.value()
    assert isinstance(value, bytes), f"no value at {position_of(msg)}"
    return value


def key_of(msg: Message) -> bytes:
    key = msg.key()
    assert isinstance(key, bytes), f"no key at {position_of(msg)}"
    return key


def position_of(msg: Message) -> tuple[int, int]:
    """(partition, offset)."""
    partition, offset = msg.partition(), msg.offset()
    assert partition is not None and offset is not None, "a record without a position"
    return partition, offset


def headers_of(msg: Message) -> dict[str, bytes]:
    """A record's headers by name; a header without a value reads as b""."""
    raw = msg.headers() or []
    pairs = raw.items() if isinstance(raw, dict) else raw
    return {name: value.encode() if isinstance(value, str) else (value or b"")
            for name, value in pairs}


def every_record(servers: str, wanted: Callable[[str], bool] = lambda topic: True
                 ) -> list[Message]:
    """Every record of every topic `wanted` takes (Kafka's own included), from each
    partition's first offset, aborted transactions' records included: every partition
    assigned at once and read in one pass (one partition at a time waited about 2 s at
    nearly every partition's end: 48 s for the whole log of an e2e stack)."""
    consumer = Consumer({**client_config(),
                         "bootstrap.servers": servers, "group.id": str(uuid.uuid4()),
                         "isolation.level": "read_uncommitted", "enable.auto.commit": False})
    found: list[Message] = []
    try:
        starts, ends = [], {}
        for name, topic in consumer.list_topics(timeout=30).topics.items():
            if not wanted(name):
                continue
            for p in topic.partitions:
                low, high = consumer.get_watermark_offsets(TopicPartition(name, p), timeout=10)
                if high > low:
                    starts.append(TopicPartition(name, p, low))
                    ends[(name, p)] = high
        if not starts:
            return found
        consumer.assign(starts)
        # Done when every position reaches its end. No consume returns a transaction
        # marker (a transactional partition's last offset is often one), so 2 s without
        # a record also ends it, in case a position stops short of its end.
        idle = 0.0
        while idle < 2.0:
            batch = consumer.consume(1000, 0.25)
            idle = 0.0 if batch else idle + 0.25
            found += [msg for msg in batch if msg.error() is None]
            if all(tp.offset >= ends[(tp.topic, tp.partition)]
                   for tp in consumer.position(starts)):
                break
    finally:
        consumer.close()
    return found


def event_in(data: bytes) -> Event:
    """The event a record's value holds (a command there fails the test)."""
    message = codec.decode(data)
    assert isinstance(message, Event), f"not an event: {message!r}"
    return message


def alert_subjects(mail_dir: Path, alertname: str) -> list[str]:
    """Subjects of the Alertmanager mails about one alert in the sink, oldest first:
    `[FIRING:n] <alertname> ...` and `[RESOLVED] <alertname> ...`."""
    subjects = []
    for path in sorted(mail_dir.glob("*.eml")):  # the sink's names start with the time
        mail = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
        subject = str(mail["Subject"] or "")
        if subject.startswith("[") and subject.split("] ", 1)[-1].split(" ")[0] == alertname:
            subjects.append(subject)
    return subjects
