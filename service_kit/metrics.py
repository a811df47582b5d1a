"""The base of every service's metrics: a Prometheus registry of its own, and its text."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest

# One set of latency buckets (seconds) for every duration histogram: sub-millisecond
# decisions up to the 10 s an API request may take while a dependency is away.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                   2.5, 5.0, 10.0)


class ServiceMetrics:
    """A registry per instance, not the global one: each app or worker starts at zero
    (tests build many in one process)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()

    def render(self) -> bytes:
        """The exposition text that GET /metrics answers."""
        return generate_latest(self.registry)
