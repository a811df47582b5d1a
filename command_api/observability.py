"""Prometheus metrics of the command API (its HTTP ones: `service_kit.http`)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, generate_latest

from service_kit.http import RequestMetrics


class Metrics:
    """The app's metrics, in a registry of their own so that each app instance starts at zero."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.http = RequestMetrics(
            self.registry, requests="command_api_requests_total",
            duration="command_api_request_duration_seconds")
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
