"""The one-off migration of an event log written in clear (command_api.reseal), against a
real Kafka and PostgreSQL: every decision sealed, everything else byte for byte, in order."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from schemas.codec import encode
from schemas.messages import CourseCreated, Event, SignUpRejected, StudentSignedUp
from schemas.personal import unseal
from schemas.pseudonyms import seat_key
from service_kit.kafka_auth import client_config
from tests.support import event_in

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SECRET = "integration-test-pseudonym-secret"
NOW = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)


def _meta(kind: str, course: str) -> dict[str, Any]:
    return dict(event_id=str(uuid.uuid4()), event_type=kind, occurred_at=NOW, course_id=course,
                causation_id=str(uuid.uuid4()), correlation_id="corr")


def _history(tag: str) -> list[tuple[int, Event]]:
    events: list[tuple[int, Event]] = []
    for p, course in enumerate((f"a-{tag}", f"b-{tag}")):
        events.append((p, CourseCreated(**_meta("CourseCreated", course), title="T",
                                        lecturer="L", capacity=1)))
        events.append((p, StudentSignedUp(
            **_meta("StudentSignedUp", course), signup_id=str(uuid.uuid4()),
            email=f"clear.{p}.{tag}@example.org", name=f"Clara Klartext{tag}",
            date_of_birth=date(2000, 1, 2), seats_taken=1, capacity=1)))
        events.append((p, SignUpRejected(
            **_meta("SignUpRejected", course), signup_id=str(uuid.uuid4()),
            email=f"late.{p}.{tag}@example.org", name=f"Lars Klartext{tag}",
            reason="course_full")))
    return events


def _read(servers: str, topic: str) -> dict[int, list[bytes]]:
    consumer = Consumer({**client_config(),
                         "bootstrap.servers": servers, "group.id": str(uuid.uuid4()),
                         "isolation.level": "read_committed", "enable.auto.commit": False})
    found: dict[int, list[bytes]] = {0: [], 1: []}
    try:
        consumer.assign([TopicPartition(topic, p, 0) for p in (0, 1)])
        for _ in range(20):
            for msg in consumer.consume(100, 0.5):
                if msg.error() is None:
                    found[msg.partition() or 0].append(msg.value() or b"")
            if sum(map(len, found.values())) >= 6:
                break
    finally:
        consumer.close()
    return found


def _reseal(source: str, target: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "command_api.reseal", "--source", source, "--target", target],
        cwd=ROOT, env={**os.environ, "PSEUDONYM_SECRET": SECRET}, capture_output=True,
        text=True, timeout=120)


def test_a_clear_event_log_is_copied_with_every_decision_sealed_and_nothing_else_changed(
) -> None:
    servers = os.environ["KAFKA_BOOTSTRAP_SERVERS"]
    tag = uuid.uuid4().hex[:8]
    source, target = f"reseal-src-{tag}", f"reseal-dst-{tag}"
    admin = AdminClient({**client_config(), "bootstrap.servers": servers})
    admin.create_topics([NewTopic(source, 2, 1)])[source].result(30)
    history = _history(tag)
    producer = Producer({**client_config(),
                         "bootstrap.servers": servers, "transactional.id": f"hist-{tag}"})
    producer.init_transactions(30)
    for p, event in history:  # one transaction per event: markers between the records
        producer.begin_transaction()
        producer.produce(source, key=b"k", value=encode(event), partition=p,  # type: ignore[arg-type]
                         headers=[("correlation_id", b"corr")])
        producer.commit_transaction(30)

    done = _reseal(source, target)
    assert done.returncode == 0, done.stderr
    assert '"sealed": 4' in done.stdout and '"copied": 6' in done.stdout

    copied = _read(servers, target)
    with psycopg.connect(os.environ["DATABASE_URL"]) as conn:
        keys = {str(k): bytes(v) for k, v in conn.execute(
            "SELECT key_id::text, key FROM student_keys")}
    blob = b"".join(v for values in copied.values() for v in values).lower()
    assert b"klartext" not in blob and b"example.org" not in blob
    for p in (0, 1):
        originals = [e for q, e in history if q == p]
        assert len(copied[p]) == len(originals)
        for original, value in zip(originals, copied[p], strict=True):
            event = event_in(value)
            assert type(event) is type(original)
            assert event.event_id == original.event_id
            if isinstance(original, CourseCreated):
                assert value == encode(original)
                continue
            assert isinstance(event, StudentSignedUp | SignUpRejected)
            assert isinstance(original, StudentSignedUp | SignUpRejected)
            assert (event.email, event.name) == ("", "")
            assert event.key_id is not None and event.email_sealed and event.name_sealed
            key = keys[event.key_id]
            assert unseal(key, event.signup_id, "email", event.email_sealed) == original.email
            assert unseal(key, event.signup_id, "name", event.name_sealed) == original.name
            assert event.seat_key == seat_key(SECRET.encode(), original.course_id,
                                              original.email)

    again = _reseal(source, target)
    assert again.returncode != 0 and "not empty" in again.stderr
