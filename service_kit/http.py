"""What both HTTP APIs do around every request: a correlation id, metrics, an access line.

The log line holds no body, query or path, only the route template: a path could carry
personal data, and the contract forbids e-mail, name and birth date in logs.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Sequence

from prometheus_client import Counter, Histogram
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service_kit.metrics import LATENCY_BUCKETS, ServiceMetrics

CORRELATION_HEADER = "X-Correlation-Id"
_CORRELATION_HEADER_NAME = CORRELATION_HEADER.lower().encode("latin-1")
_CORRELATION_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


class ApiMetrics(ServiceMetrics):
    """An API's metrics: requests answered and their duration, by route template, and
    whatever the service adds to `registry`.

    The names are spelled out by each service, so that a grep for a metric finds it.
    """

    def __init__(self, requests: str, duration: str) -> None:
        super().__init__()
        self.requests = Counter(requests, "HTTP requests answered.",
                                ["route", "method", "status"], registry=self.registry)
        self.duration = Histogram(duration,
                                  "Time from request to response.", ["route", "method"],
                                  buckets=LATENCY_BUCKETS, registry=self.registry)


class RequestContextMiddleware:
    """Gives each request a correlation id, records its metrics and writes one access line:
    at INFO for a request that came with its own correlation id or failed (status >= 400),
    else at DEBUG.

    A route may add ids to the line through `request.state.log_ids` (a dict).
    """

    def __init__(self, app: ASGIApp, metrics: ApiMetrics, logger: str,
                 routes: Sequence[BaseRoute] = ()) -> None:
        self.app = app
        self.metrics = metrics
        self.log = logging.getLogger(logger)
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        given = next((value.decode("latin-1") for name, value in scope["headers"]
                      if name == _CORRELATION_HEADER_NAME), None)
        correlation_id = correlation_id_of(given)
        traced = given is not None and given == correlation_id
        state = scope.setdefault("state", {})
        state["correlation_id"] = correlation_id
        # The caller follows this request by its own id: the services downstream log its
        # steps at INFO too (the command carries a `traced` header; see the processor).
        state["traced"] = traced
        status = 500  # what the server answers if the app raises before responding

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                # Appended to the raw list (a Headers object per response cost more than
                # the rest of this middleware); one the app set itself is replaced.
                message["headers"] = [
                    *(h for h in message.get("headers", ())
                      if h[0].lower() != _CORRELATION_HEADER_NAME),
                    (_CORRELATION_HEADER_NAME, correlation_id.encode("latin-1"))]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            elapsed = time.perf_counter() - started
            route, method = self._route_of(scope), scope["method"]
            self.metrics.requests.labels(route, method, str(status)).inc()
            self.metrics.duration.labels(route, method).observe(elapsed)
            # Not a line per request at INFO: under load, formatting and writing it was a
            # visible share of a request's CPU, and the counters above already count every
            # request. A request whose caller traces it (its own correlation id) and every
            # failure still get their line; the rest only at DEBUG.
            level = logging.INFO if traced or status >= 400 else logging.DEBUG
            if self.log.isEnabledFor(level):
                self.log.log(level, "request", extra={
                    "correlation_id": correlation_id, "method": method, "route": route,
                    "status": status, "latency_ms": round(elapsed * 1000, 2),
                    **scope["state"].get("log_ids", {})})

    def _route_of(self, scope: Scope) -> str:
        # A template, not the path, keeps metric labels few (and paths out of the logs).
        route = scope.get("route")
        if route is None:  # answered before routing (a 413, say) or no route matched
            route = next((r for r in self.routes if r.matches(scope)[0] is Match.FULL), None)
        return getattr(route, "path", "unmatched")


def correlation_id_of(given: str | None) -> str:
    # An id that is too long or has odd characters is replaced, not rejected: correlation
    # is a debugging aid and must never cost a caller their request.
    if given is not None and _CORRELATION_ID.fullmatch(given):
        return given
    return str(uuid.uuid4())
