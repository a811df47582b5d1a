"""The projector's retries while PostgreSQL fails: a capped backoff, however long it fails."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import cast

import psycopg
from confluent_kafka import Consumer

from projections.batch import EventRecord
from projections.observability import ProjectorMetrics
from projections.projector import Projector
from projections.settings import ProjectorSettings
from schemas import codec
from schemas.messages import CourseCreated
from service_kit.deadletter import DeadLetterProducer


def _failing_projector(pauses: list[float]) -> Projector:
    settings = ProjectorSettings(kafka_bootstrap_servers="unused:9092",
                                 database_url="postgresql://unused/db",
                                 projector_max_backoff_seconds=5.0)
    # Neither Kafka client is touched on the path under test: the batch has no failures
    # to dead-letter and the database fails before anything is consumed.
    projector = Projector(settings, ProjectorMetrics(), cast(Consumer, None),
                          cast(DeadLetterProducer, None))

    def no_database() -> psycopg.Connection:
        raise psycopg.OperationalError("connection refused")

    projector._connection = no_database  # type: ignore[method-assign]
    projector._pause = pauses.append  # type: ignore[method-assign,assignment]
    return projector


def test_two_thousand_failed_batches_in_a_row_wait_a_capped_delay_without_overflow() -> None:
    event = CourseCreated(str(uuid.uuid4()), "CourseCreated", datetime.now(UTC), "c-1", "cmd",
                          "corr", "Intro", "Ada", 30)
    record = EventRecord(0, 0, b"c-1", codec.encode(event))
    pauses: list[float] = []
    projector = _failing_projector(pauses)
    for _ in range(2000):
        projector._project([record])  # 0.1 * 2 ** 1024 raised OverflowError here
    assert projector.failures == 2000
    assert len(pauses) == 2000
    assert all(0 < p <= 5.0 for p in pauses)
    assert min(pauses[-100:]) >= 2.5  # at the cap, jitter taking at most half of it
    assert pauses[0] <= 0.2  # the first retry is quick
