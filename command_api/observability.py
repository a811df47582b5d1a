"""Prometheus metrics and JSON log lines of the command API."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    """The app's metrics, in a registry of their own so that each app instance starts at zero."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "command_api_requests_total", "HTTP requests answered.",
            ["route", "method", "status"], registry=self.registry,
        )
        self.request_duration = Histogram(
            "command_api_request_duration_seconds", "Time from request to response.",
            ["route", "method"], buckets=_LATENCY_BUCKETS, registry=self.registry,
        )
        self.commands_published = Counter(
            "command_api_commands_published_total", "Commands acknowledged by Kafka.",
            ["kind"], registry=self.registry,
        )
        self.publish_failures = Counter(
            "command_api_publish_failures_total",
            "Commands Kafka did not acknowledge in time (answered 503).",
            registry=self.registry,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
