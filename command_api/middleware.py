"""ASGI middleware of the command API alone: the request body size limit.

Correlation ids, request metrics and access lines: `service_kit.http`.
"""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send


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
