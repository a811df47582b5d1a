"""The consumer lag the command API reports (service_kit.consumer_lag.lags): pure."""

from __future__ import annotations

from service_kit.consumer_lag import ConsumerLagCollector, lags

ENDS = {("course-commands", 0): 10, ("course-commands", 1): 7, ("course-events", 0): 50}
STARTS = {("course-commands", 0): 0, ("course-commands", 1): 2, ("course-events", 0): 0}


def test_lag_is_the_end_minus_the_committed_offset_per_partition() -> None:
    committed = {"course-processor": {("course-commands", 0): 4, ("course-commands", 1): 7}}
    assert lags(committed, ENDS, STARTS, {}) == {
        ("course-processor", "course-commands", 0): 6,
        ("course-processor", "course-commands", 1): 0}


def test_a_partition_never_committed_is_behind_from_the_log_start() -> None:
    # The worker stopped before its first commit on partition 1: 5 records wait there.
    committed = {"course-processor": {("course-commands", 0): 10}}
    assert lags(committed, ENDS, STARTS, {})[("course-processor", "course-commands", 1)] == 5


def test_a_group_without_any_commit_is_behind_on_the_topics_it_was_assigned() -> None:
    assigned = {"course-processor": {"course-commands"}}
    lagging = lags({"course-processor": {}}, ENDS, STARTS, assigned)
    assert lagging == {("course-processor", "course-commands", 0): 10,
                       ("course-processor", "course-commands", 1): 5}
    assert lags({"course-processor": {}}, ENDS, STARTS, {}) == {}


def test_an_end_read_before_a_commit_is_no_negative_lag() -> None:
    committed = {"notifier": {("course-events", 0): 52}}
    assert lags(committed, ENDS, STARTS, {}) == {("notifier", "course-events", 0): 0}


def test_the_collector_serves_the_last_poll() -> None:
    collector = ConsumerLagCollector("127.0.0.1:1")
    collector.latest = {("notifier", "course-events", 3): 12}
    families = {f.name: f for f in collector.collect()}
    [sample] = families["kafka_consumergroup_lag"].samples
    assert sample.labels == {"group": "notifier", "topic": "course-events", "partition": "3"}
    assert sample.value == 12
    assert families["kafka_consumergroup_lag_poll_ok"].samples[0].value == 0
