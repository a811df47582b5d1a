"""Prometheus metrics of the command API (its HTTP ones: `service_kit.http`)."""

from __future__ import annotations

from prometheus_client import Counter

from service_kit.http import ApiMetrics


class Metrics(ApiMetrics):
    def __init__(self) -> None:
        super().__init__(requests="command_api_requests_total",
                         duration="command_api_request_duration_seconds")
        self.commands_published = Counter(
            "command_api_commands_published_total", "Commands acknowledged by Kafka.",
            ["kind"], registry=self.registry,
        )
        self.key_lookups = Counter(
            "command_api_key_lookups_total",
            "Students whose key a sign-up asked the key store for.", registry=self.registry,
        )
        self.key_store_round_trips = Counter(
            "command_api_key_store_round_trips_total",
            "Batches of key lookups sent to the key store (each one round trip and one "
            "commit: the new students' keys and every request's key reference).",
            registry=self.registry,
        )
        self.publish_failures = Counter(
            "command_api_publish_failures_total",
            "Commands Kafka did not acknowledge in time (answered 503).",
            registry=self.registry,
        )
