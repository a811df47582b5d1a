"""The base of every service's metrics: a Prometheus registry of its own, and its text."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest


class ServiceMetrics:
    """A registry per instance, not the global one: each app or worker starts at zero
    (tests build many in one process)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()

    def render(self) -> bytes:
        """The exposition text that GET /metrics answers."""
        return generate_latest(self.registry)
