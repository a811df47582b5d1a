"""Typed reads of Kafka records for the tests: confluent-kafka types every part of a
record as optional, while a record the tests look at always has them."""

from __future__ import annotations

import email
import email.policy
import os
from pathlib import Path

import pytest
from confluent_kafka import Message

from schemas import codec
from schemas.messages import Event


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
