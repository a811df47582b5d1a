"""ASGI middleware: body size limit, correlation ids, request metrics and access log lines."""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Sequence

from starlette.datastructures import Headers, MutableHeaders
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from command_api.observability import Metrics

CORRELATION_HEADER = "X-Correlation-Id"
_CORRELATION_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")

access_log = logging.getLogger("command_api.access")


class BodyLimitMiddleware:
    """Answers 413 to a body over `max_bytes`, by its Content-Length or by the bytes received.

    The body is read before the app runs (it is small by definition), so the app never
    sees a partial body and nothing is published for an oversized request.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await self._reject(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            # Chunked uploads have no Content-Length: count what actually arrives.
            if size > self.max_bytes:
                await self._reject(scope, receive, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        await self.app(scope, _replay(b"".join(chunks), receive), send)

    async def _reject(self, scope: Scope, receive: Receive, send: Send) -> None:
        error = {
            "loc": ["body"],
            "field": "body",
            "msg": f"request body is larger than {self.max_bytes} bytes",
            "type": "body_too_large",
        }
        await JSONResponse({"detail": [error]}, status_code=413)(scope, receive, send)


def _replay(body: bytes, receive: Receive) -> Receive:
    delivered = False

    async def replay() -> Message:
        nonlocal delivered
        if delivered:
            return await receive()  # only http.disconnect can follow
        delivered = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay


class RequestContextMiddleware:
    """Gives each request a correlation id and records its metrics and one access log line.

    The line holds no body, query or path, only the route template: a path could carry
    personal data, and the contract forbids e-mail, name and birth date in logs.
    """

    def __init__(self, app: ASGIApp, metrics: Metrics, routes: Sequence[BaseRoute]) -> None:
        self.app = app
        self.metrics = metrics
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        correlation_id = _correlation_id(Headers(scope=scope).get(CORRELATION_HEADER))
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
            route, method = self._route_of(scope), scope["method"]
            self.metrics.requests.labels(route, method, str(status)).inc()
            self.metrics.request_duration.labels(route, method).observe(elapsed)
            access_log.info(
                "request",
                extra={
                    "correlation_id": correlation_id,
                    "method": method,
                    "route": route,
                    "status": status,
                    "latency_ms": round(elapsed * 1000, 2),
                    **scope["state"].get("log_ids", {}),
                },
            )

    def _route_of(self, scope: Scope) -> str:
        # A template, not the path, keeps metric labels few (and paths out of the logs).
        route = scope.get("route")
        if route is None:  # answered before routing (413) or no route matched (404)
            route = next((r for r in self.routes if r.matches(scope)[0] is Match.FULL), None)
        return getattr(route, "path", "unmatched")


def _correlation_id(given: str | None) -> str:
    # An id that is too long or has odd characters is replaced, not rejected: correlation
    # is a debugging aid and must never cost a caller their request.
    if given is not None and _CORRELATION_ID.fullmatch(given):
        return given
    return str(uuid.uuid4())
