"""Prometheus metrics of the processor, in a registry of its own (one per app)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
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

        self.lag = Gauge(
            "processor_consumer_lag",
            "Commands in course-commands not yet read by this worker, per owned partition.",
            ["partition"], registry=r,
        )

    def exposition(self) -> bytes:
        """The Prometheus text format of every metric."""
        return generate_latest(self.registry)
