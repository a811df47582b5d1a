"""The bench's own offset commits wait for the group coordinator instead of failing."""

from __future__ import annotations

import pytest
from confluent_kafka import KafkaError, KafkaException, TopicPartition

from proof.bench_kafka import commit_retrying


class FlakyConsumer:
    def __init__(self, errors: list[int]) -> None:
        self.errors = errors
        self.commits: list[list[TopicPartition]] = []

    def commit(self, offsets: list[TopicPartition], asynchronous: bool) -> None:
        assert not asynchronous
        if self.errors:
            raise KafkaException(KafkaError(self.errors.pop(0)))
        self.commits.append(offsets)


def test_a_commit_waiting_for_the_coordinator_is_tried_again() -> None:
    consumer = FlakyConsumer([KafkaError._WAIT_COORD, KafkaError.COORDINATOR_NOT_AVAILABLE])
    waits: list[float] = []
    offsets = [TopicPartition("course-events", 0, 42)]
    commit_retrying(consumer, offsets, sleep=waits.append)
    assert consumer.commits == [offsets]
    assert waits == [0.1, 0.2]


def test_a_commit_refused_for_good_is_raised_at_once() -> None:
    consumer = FlakyConsumer([KafkaError.GROUP_AUTHORIZATION_FAILED])
    waits: list[float] = []
    with pytest.raises(KafkaException):
        commit_retrying(consumer, [TopicPartition("course-events", 0, 1)], sleep=waits.append)
    assert waits == []


def test_the_coordinator_missing_past_the_timeout_is_raised() -> None:
    consumer = FlakyConsumer([KafkaError._WAIT_COORD] * 100)
    with pytest.raises(KafkaException):
        commit_retrying(consumer, [TopicPartition("course-events", 0, 1)], timeout=0.0,
                        sleep=lambda _: None)
