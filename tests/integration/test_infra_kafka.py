"""The broker started by the project: round trip with acks=all, and the topic settings."""

from __future__ import annotations

import time
import uuid

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, ConfigResource

from schemas import topics
from service_kit.kafka_auth import client_config
from tests.infra import Infra
from tests.support import position_of


def test_produce_consume_round_trip_with_acks_all(infra: Infra) -> None:
    producer = Producer({**client_config(),
                         "bootstrap.servers": infra.kafka_bootstrap, "acks": "all",
                         "enable.idempotence": True})
    key, value = f"course-{uuid.uuid4()}".encode(), uuid.uuid4().bytes
    reports = []
    producer.produce(topics.COMMANDS, key=key, value=value,
                     on_delivery=lambda err, msg: reports.append((err, msg)))
    assert producer.flush(15) == 0
    err, msg = reports[0]
    assert err is None

    consumer = Consumer({**client_config(),
                         "bootstrap.servers": infra.kafka_bootstrap, "group.id": str(uuid.uuid4()),
                         "enable.auto.commit": False})
    consumer.assign([TopicPartition(topics.COMMANDS, *position_of(msg))])
    deadline, got = time.monotonic() + 15, None
    while got is None and time.monotonic() < deadline:
        polled = consumer.poll(0.5)
        if polled is not None and polled.error() is None:
            got = polled
    consumer.close()
    assert got is not None and (got.key(), got.value()) == (key, value)


def test_topics_exist_with_the_project_settings(infra: Infra) -> None:
    admin = AdminClient({**client_config(), "bootstrap.servers": infra.kafka_bootstrap})
    metadata = admin.list_topics(timeout=10).topics
    for name in (topics.COMMANDS, topics.EVENTS, topics.COMMANDS_DLQ, topics.EVENTS_DLQ,
                 topics.NOTIFIER_DLQ):
        assert name in metadata, name
    assert len(metadata[topics.COMMANDS].partitions) == len(metadata[topics.EVENTS].partitions)

    resource = ConfigResource(ConfigResource.Type.TOPIC, topics.EVENTS)
    config = admin.describe_configs([resource])[resource].result()
    # The event log is the source of truth: no time or size retention.
    assert config["retention.ms"].value == "-1"
    assert config["retention.bytes"].value == "-1"
    assert config["cleanup.policy"].value == "delete"


def test_topics_are_never_auto_created(infra: Infra) -> None:
    producer = Producer({**client_config(), "bootstrap.servers": infra.kafka_bootstrap,
                         "message.timeout.ms": 3000, "log_level": 0})
    errors: list[object] = []
    producer.produce(f"typo-{uuid.uuid4()}", b"x", on_delivery=lambda err, _: errors.append(err))
    producer.flush(10)
    assert errors and errors[0] is not None
