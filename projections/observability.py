"""Prometheus metrics of the projector and the query API (its HTTP ones: `service_kit.http`)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from service_kit.http import ApiMetrics
from service_kit.metrics import LATENCY_BUCKETS, ServiceMetrics


class ProjectorMetrics(ServiceMetrics):
    def __init__(self) -> None:
        super().__init__()
        r = self.registry
        self.events = Counter("projector_events_total", "Events projected, by type.",
                              ["event_type"], registry=r)
        self.batches = Counter("projector_batches_total", "Batches committed to PostgreSQL.",
                               registry=r)
        self.repeated = Counter("projector_repeated_decisions_total",
                                "Decisions read again or repeated in the log, counted once.",
                                registry=r)
        self.lag_events = Gauge("projector_lag_events", "Events in the log not yet projected.",
                                ["partition"], registry=r)
        self.lag_seconds = Gauge("projector_lag_seconds",
                                 "Age of the newest projected event while behind; 0 when "
                                 "caught up.", registry=r)
        self.dlq = Counter("projector_dlq_total", "Records sent to the dead-letter topic.",
                           registry=r)
        self.resyncs = Counter("projector_resyncs_total",
                               "Seeks back to the positions stored in PostgreSQL.",
                               ["reason"], registry=r)
        for reason in ("stale", "database", "dead_letter"):  # at 0 from the start
            self.resyncs.labels(reason)
        self.db_failures = Counter("projector_db_failures_total",
                                   "Batches not committed because PostgreSQL failed.",
                                   registry=r)
        self.replay_running = Gauge("projector_replay_running",
                                    "1 while a replay rebuilds the views (make replay).",
                                    registry=r)
        self.replay_progress = Gauge("projector_replay_progress_ratio",
                                     "Share of the event log a running replay has rebuilt.",
                                     registry=r)
        self.batch_seconds = Histogram("projector_batch_duration_seconds",
                                       "Time to write one batch to PostgreSQL.",
                                       buckets=LATENCY_BUCKETS, registry=r)


def query_api_metrics() -> ApiMetrics:
    return ApiMetrics(requests="query_api_requests_total",
                      duration="query_api_request_duration_seconds")


class ErasureMetrics:
    """Erasures not done yet, read from PostgreSQL on each scrape of the query API."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.pending = Gauge("erasures_pending", "Erasure requests still pending.",
                             registry=registry)
        self.oldest_pending = Gauge("erasures_oldest_pending_seconds",
                                    "Age of the oldest pending erasure request; 0 when none.",
                                    registry=registry)
