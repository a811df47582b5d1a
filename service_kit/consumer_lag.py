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
from collections.abc import Iterator
from typing import Any

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

log = logging.getLogger(__name__)
Lags = dict[tuple[str, str, int], int]  # (group, topic, partition) -> records behind


def lags(committed: dict[str, dict[tuple[str, int], int]],
         ends: dict[tuple[str, int], int]) -> Lags:
    """Pure: records behind per group and partition. A partition the group has not
    committed on yet has no lag (nothing to say); a negative difference (an end offset
    read before a commit) counts as 0."""
    return {(group, topic, partition): max(0, ends[(topic, partition)] - offset)
            for group, offsets in committed.items()
            for (topic, partition), offset in offsets.items()
            if offset >= 0 and (topic, partition) in ends}


class ConsumerLagCollector(Collector):
    """Serves the lags of the last successful poll; `kafka_consumergroup_lag_poll_ok`
    is 0 while polls fail (the lag then shows the last known values)."""

    def __init__(self, bootstrap_servers: str, interval: float = 5.0,
                 extra_config: dict[str, str] | None = None) -> None:
        self.config: dict[str, str | int | float | bool] = {
            "bootstrap.servers": bootstrap_servers, "log_level": 3, **(extra_config or {})}
        self.interval = interval
        self.latest: Lags = {}
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
                self.latest = poll(admin, timeout=max(self.interval, 2.0))
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


def poll(admin: Any, timeout: float) -> Lags:
    """One round: the groups, their committed offsets, the partitions' end offsets."""
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
    wanted = {tp for offsets in committed.values() for tp in offsets}
    if not wanted:
        return {}
    # Read committed: the end a transactional consumer (the processor) can reach, so a
    # group that is caught up shows 0, not the commit markers.
    results = admin.list_offsets({TopicPartition(t, p): OffsetSpec.latest() for t, p in wanted},
                                 isolation_level=IsolationLevel.READ_COMMITTED,
                                 request_timeout=timeout)
    ends = {(tp.topic, tp.partition): future.result().offset
            for tp, future in results.items()}
    return lags(committed, ends)
