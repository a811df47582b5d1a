"""The sign-up route's fast path: a well-formed `POST /courses/{course_id}/signups` answered
without FastAPI's per-request machinery.

Sign-ups are nearly all of the command API's traffic, and under load FastAPI's own work
per request (its exception and exit-stack middleware, routing, dependency solving, the
response model's second validation) was about a third of the process's CPU. This ASGI
layer sits inside the correlation-id and body-limit middleware, so every request still
gets its id, metrics, access line and size limit. It takes only a request that is
plainly valid: the route's path and method, `Content-Type: application/json`, a body
that `SignUpRequest` accepts, a course id and an `Idempotency-Key` that the route's
parameters accept. It then does exactly what the route does (`routes.accept_sign_up`)
and answers with the same bytes. Anything else goes on to FastAPI unchanged (the body
was buffered by `BodyLimitMiddleware`, and it is replayed), so every error answer is
FastAPI's own; a failure after the input was accepted (503, 409, the Idempotency-Key's
422) is answered by the app's own exception handlers.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError
from starlette.requests import Request
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from command_api import routes
from command_api.models import SignUpRequest
from schemas.messages import COURSE_ID_PATTERN

_PATH = re.compile(r"/courses/([^/]+)/signups")
_COURSE_ID = re.compile(COURSE_ID_PATTERN)
_IDEMPOTENCY_KEY = re.compile(routes.IDEMPOTENCY_KEY_PATTERN)
_IDEMPOTENCY_HEADER = routes.IDEMPOTENCY_HEADER.lower().encode()


class SignUpFastPath:
    """Answers a plainly valid sign-up itself; passes every other request on to `app`."""

    def __init__(self, app: ASGIApp, services: routes.Services, route: BaseRoute,
                 handlers: Mapping[Any, Any]) -> None:
        self.app = app
        self.services = services
        self.route = route  # what the access line and metrics name the request by
        self.handlers = handlers  # the app's exception handlers, by exception class

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (scope["type"] != "http" or scope["method"] != "POST" or scope.get("root_path")
                or (match := _PATH.fullmatch(scope["path"])) is None):
            await self.app(scope, receive, send)
            return
        message = await receive()  # the whole body: BodyLimitMiddleware buffered it
        accepted = _accepted_input(scope, match.group(1), message)
        if accepted is None:
            await self.app(scope, _replay(message, receive), send)
            return
        course_id, body, idempotency_key = accepted
        scope["route"] = self.route
        state = scope["state"]
        log_ids: dict[str, str] = {}
        state["log_ids"] = log_ids
        try:
            answer = await routes.accept_sign_up(
                self.services, course_id, body, idempotency_key, state["correlation_id"],
                bool(state["traced"]), log_ids)
        except Exception as exc:
            handler = next((self.handlers[cls] for cls in type(exc).__mro__
                            if cls in self.handlers), None)
            if handler is None:
                raise  # a 500, from the server error middleware, as for the route
            response = await handler(Request(scope, receive), exc)
        else:
            # The route's answer (its response model as JSON, and the Location header),
            # sent without building a Response.
            content = answer.__pydantic_serializer__.to_json(answer)
            await send({"type": "http.response.start", "status": 202, "headers": [
                (b"content-length", str(len(content)).encode()),
                (b"content-type", b"application/json"),
                (b"location", routes.signup_location(answer.signup_id).encode())]})
            await send({"type": "http.response.body", "body": content})
            return
        await response(scope, receive, send)


def _accepted_input(scope: Scope, course_id: str, message: Message
                    ) -> tuple[str, SignUpRequest, str | None] | None:
    """The route's arguments if the route would accept them, else None."""
    if message["type"] != "http.request" or message.get("more_body", False):
        return None
    content_type = idempotency_key = None
    for name, value in scope["headers"]:
        if name == b"content-type":
            if content_type is not None:
                return None
            content_type = value
        elif name == _IDEMPOTENCY_HEADER:
            if idempotency_key is not None:
                return None
            idempotency_key = value.decode("latin-1")
    if content_type is None or content_type.strip().lower() != b"application/json":
        return None
    if not _COURSE_ID.fullmatch(course_id):
        return None
    if idempotency_key is not None and not (
            len(idempotency_key) <= routes.IDEMPOTENCY_KEY_MAX_LENGTH
            and _IDEMPOTENCY_KEY.fullmatch(idempotency_key)):
        return None
    try:
        # As FastAPI does: the JSON text parsed, then validated in Python mode.
        body = SignUpRequest.model_validate(json.loads(message.get("body", b"")))
    except (ValueError, ValidationError):  # JSONDecodeError and UnicodeDecodeError too
        return None
    return course_id, body, idempotency_key


def _replay(message: Message, receive: Receive) -> Receive:
    delivered = False

    async def replay() -> Message:
        nonlocal delivered
        if delivered:
            return await receive()
        delivered = True
        return message

    return replay
