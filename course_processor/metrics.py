"""Prometheus metrics of the processor, in a registry of its own (one per app)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from service_kit.metrics import LATENCY_BUCKETS, ServiceMetrics


class Metrics(ServiceMetrics):
    def __init__(self) -> None:
        super().__init__()
        r = self.registry
        self.commands = Counter(
            "processor_commands", "Commands consumed, by kind.", ["kind"], registry=r
        )
        self.decisions = Counter(
            "processor_decisions", "Events decided, by outcome and reason.",
            ["outcome", "reason"], registry=r,
        )
        self.dlq = Counter(
            "processor_dlq", "Commands sent to the dead-letter topic, by reason.",
            ["reason"], registry=r,
        )
        self.repeats = Counter(
            "processor_repeats", "Commands already decided (repeated requests): nothing written.",
            registry=r,
        )
        self.restored = Counter(
            "processor_restored_records",
            "Changelog records read into the local state on assignments.", registry=r,
        )
        self.processing = Histogram(
            "processor_processing_seconds", "Time to decide one command and queue its event.",
            buckets=LATENCY_BUCKETS, registry=r,
        )
        self.state_memory = Gauge(
            "processor_state_memory_bytes",
            "RocksDB memory held in the worker's one budget: blocks, indexes, filters and "
            "memtables (PROCESSOR_STATE_MEMORY_MB).", registry=r,
        )
        self.lag = Gauge(
            "processor_consumer_lag",
            "Commands in course-commands not yet read by this worker, per owned partition.",
            ["partition"], registry=r,
        )
