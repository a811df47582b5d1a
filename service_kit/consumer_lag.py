"""Consumer lag of every consumer group, as Prometheus series (`kafka_consumergroup_lag`).

The brokers' JMX metrics have no committed offsets, and a consumer that is stopped
cannot report its own lag: so one service that is up anyway (the command API) asks
Kafka for every group's committed offsets and every partition's last stable offset, in
a background thread every few seconds, and serves the last answer on each scrape. A
stopped processor then shows as its group's lag growing, which the alert rules of
`ops/rules/` watch.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Mapping
from typing import Any

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

log = logging.getLogger(__name__)
Lags = dict[tuple[str, str, int], int]  # (group, topic, partition) -> records behind


def lags(committed: dict[str, dict[tuple[str, int], int]],
         ends: dict[tuple[str, int], int], starts: dict[tuple[str, int], int],
         consumed: dict[str, set[str]]) -> Lags:
    """Pure: records behind per group and partition, for every partition of each topic
    the group has committed on or been assigned (`consumed`). A partition it has not
    committed on yet (a worker that stopped before its first commit there) is behind
    from the log's start, where a new consumer of the group begins; a negative
    difference (an end offset read before a commit) counts as 0."""
    found: Lags = {}
    for group, offsets in committed.items():
        group_topics = {topic for topic, _ in offsets} | consumed.get(group, set())
        for (topic, partition), end in ends.items():
            if topic not in group_topics:
                continue
            offset = offsets.get((topic, partition), -1)
            if offset < 0:
                offset = starts.get((topic, partition), 0)
            found[(group, topic, partition)] = max(0, end - offset)
    return found


class ConsumerLagCollector(Collector):
    """Serves the lags of the last successful poll; `kafka_consumergroup_lag_poll_ok`
    is 0 while polls fail (the lag then shows the last known values)."""

    def __init__(self, bootstrap_servers: str, interval: float = 5.0,
                 extra_config: Mapping[str, str | int | float | bool] | None = None) -> None:
        self.config: dict[str, str | int | float | bool] = {
            "bootstrap.servers": bootstrap_servers, "log_level": 3, **(extra_config or {})}
        self.interval = interval
        self.latest: Lags = {}
        self.consumed: dict[str, set[str]] = {}  # group -> topics ever assigned to it
        self.ok = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def register(self, registry: CollectorRegistry) -> ConsumerLagCollector:
        registry.register(self)
        return self

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="consumer-lag", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=15)

    def _run(self) -> None:
        from confluent_kafka.admin import AdminClient

        admin = AdminClient(self.config)
        while not self._stop.is_set():
            try:
                self.latest = poll(admin, max(self.interval, 2.0), self.consumed)
                self.ok = True
            except Exception as exc:  # noqa: BLE001 - Kafka away: report it, keep trying
                if self.ok:
                    log.warning("consumer lag poll failed", extra={"error": str(exc)})
                self.ok = False
            self._stop.wait(self.interval)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        lag = GaugeMetricFamily("kafka_consumergroup_lag",
                                "Records of a partition not yet committed by the group "
                                "(last stable offset minus committed offset).",
                                labels=["group", "topic", "partition"])
        for (group, topic, partition), value in sorted(self.latest.items()):
            lag.add_metric([group, topic, str(partition)], value)
        yield lag
        ok = GaugeMetricFamily("kafka_consumergroup_lag_poll_ok",
                               "1 if the last poll of the groups' offsets succeeded.")
        ok.add_metric([], 1 if self.ok else 0)
        yield ok


def poll(admin: Any, timeout: float, consumed: dict[str, set[str]]) -> Lags:
    """One round: the groups, their committed offsets and members' assignments (added
    to `consumed`, which outlives a member: a stopped worker leaves the group, its
    topics stay), the partitions' start and end offsets."""
    from confluent_kafka import ConsumerGroupTopicPartitions, IsolationLevel, TopicPartition
    from confluent_kafka.admin import OffsetSpec

    listed = admin.list_consumer_groups(request_timeout=timeout).result()
    committed: dict[str, dict[tuple[str, int], int]] = {}
    for group in (g.group_id for g in listed.valid):
        futures = admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group)],
                                                    request_timeout=timeout)
        answer = futures[group].result()
        committed[group] = {(tp.topic, tp.partition): tp.offset
                            for tp in answer.topic_partitions or [] if tp.error is None}
    if committed:
        described = admin.describe_consumer_groups(list(committed), request_timeout=timeout)
        for group, future in described.items():
            for member in future.result().members:
                assigned = member.assignment.topic_partitions if member.assignment else []
                consumed.setdefault(group, set()).update(tp.topic for tp in assigned)
    group_topics = ({topic for offsets in committed.values() for topic, _ in offsets}
                    | {topic for group in committed for topic in consumed.get(group, ())})
    if not group_topics:
        return {}
    metadata = admin.list_topics(timeout=timeout).topics
    wanted = [TopicPartition(topic, partition) for topic in sorted(group_topics)
              if topic in metadata for partition in metadata[topic].partitions]

    def offsets(spec: Any) -> dict[tuple[str, int], int]:
        # Read committed: the end a transactional consumer (the processor) can reach, so
        # a group that is caught up shows 0, not the commit markers.
        results = admin.list_offsets({tp: spec for tp in wanted},
                                     isolation_level=IsolationLevel.READ_COMMITTED,
                                     request_timeout=timeout)
        return {(tp.topic, tp.partition): future.result().offset
                for tp, future in results.items()}

    return lags(committed, offsets(OffsetSpec.latest()), offsets(OffsetSpec.earliest()),
                consumed)
