"""Prometheus metrics and JSON log lines of the projector and the query API.

Log lines never carry personal data: no e-mail, name or birth date, and for HTTP only
the route template, never the path.
"""

from __future__ import annotations

import logging
import re
import time
import uuid

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)

CORRELATION_HEADER = "X-Correlation-Id"
_CORRELATION_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


class ProjectorMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
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
        self.db_failures = Counter("projector_db_failures_total",
                                   "Batches not committed because PostgreSQL failed.",
                                   registry=r)
        self.batch_seconds = Histogram("projector_batch_duration_seconds",
                                       "Time to write one batch to PostgreSQL.",
                                       buckets=_LATENCY_BUCKETS, registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class ApiMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("query_api_requests_total", "HTTP requests answered.",
                                ["route", "method", "status"], registry=self.registry)
        self.latency = Histogram("query_api_request_duration_seconds",
                                 "Time from request to response.", ["route", "method"],
                                 buckets=_LATENCY_BUCKETS, registry=self.registry)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class RequestContextMiddleware:
    """A correlation id per request (taken from X-Correlation-Id or made), metrics, one log line."""

    def __init__(self, app: ASGIApp, metrics: ApiMetrics) -> None:
        self.app = app
        self.metrics = metrics
        self.log = logging.getLogger("projections.api.access")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        correlation_id = correlation_id_of(Headers(scope=scope).get(CORRELATION_HEADER))
        scope.setdefault("state", {})["correlation_id"] = correlation_id
        status = 500  # what the server answers if the app raises before responding

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                MutableHeaders(scope=message)[CORRELATION_HEADER] = correlation_id
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            elapsed = time.perf_counter() - started
            # The template, not the path: few label values, and no ids in the logs' index.
            route = getattr(scope.get("route"), "path", "unmatched")
            method = scope["method"]
            self.metrics.requests.labels(route, method, str(status)).inc()
            self.metrics.latency.labels(route, method).observe(elapsed)
            self.log.info("request", extra={
                "correlation_id": correlation_id, "method": method, "route": route,
                "status": status, "latency_ms": round(elapsed * 1000, 2)})


def correlation_id_of(given: str | None) -> str:
    # A malformed id is replaced, not rejected: correlation is a debugging aid.
    if given is not None and _CORRELATION_ID.fullmatch(given):
        return given
    return str(uuid.uuid4())
