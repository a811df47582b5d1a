"""The FastAPI application of the command API, built by `create_app`."""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from command_api import routes
from command_api.fastpath import SignUpFastPath
from command_api.keybatch import BatchingKeyStore
from command_api.keys import KeyStore, KeyStoreUnavailable, PostgresKeyStore
from command_api.middleware import BodyLimitMiddleware
from command_api.observability import Metrics
from command_api.publisher import KafkaPublisher, Publisher, PublishError
from command_api.settings import Settings
from schemas import topics
from service_kit.consumer_lag import ConsumerLagCollector
from service_kit.http import RequestContextMiddleware
from service_kit.kafka_auth import client_config

log = logging.getLogger(__name__)


def create_app(settings: Settings, publisher: Publisher | None = None,
               keys: KeyStore | None = None) -> FastAPI:
    """The app; without `publisher` it publishes to the Kafka of `settings`, without
    `keys` it keeps the students' keys in the PostgreSQL of `settings`."""
    bus = publisher or KafkaPublisher(
        settings.kafka_bootstrap_servers, settings.produce_timeout_seconds, topics.COMMANDS
    )
    metrics = Metrics()

    def counted(students: int) -> None:
        metrics.key_store_round_trips.inc()
        metrics.key_lookups.inc(students)

    # Concurrent requests' key lookups share round trips (command_api/keybatch.py).
    key_store = keys or BatchingKeyStore(PostgresKeyStore(
        settings.database_url, settings.key_store_timeout_seconds, settings.key_store_pool_size
    ), on_batch=counted)

    # The front door runs whenever commands can arrive: it reports every consumer
    # group's lag, so a stopped processor shows as commands waiting (ops/rules/).
    lag = (ConsumerLagCollector(settings.kafka_bootstrap_servers,
                                settings.consumer_lag_interval_seconds,
                                client_config()).register(metrics.registry)
           if publisher is None and settings.consumer_lag_interval_seconds > 0 else None)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await bus.start()
        await key_store.start()
        if lag is not None:
            lag.start()
        # What start-up built (modules, the app, pools) lives as long as the process:
        # out of the collector's sight, so its full collections scan only what requests
        # create instead of stalling every request in flight for tens of milliseconds.
        gc.freeze()
        try:
            yield
        finally:
            if lag is not None:
                lag.stop()
            await key_store.stop()
            await bus.stop()

    app = FastAPI(title="Course sign-up command API", version="1", lifespan=lifespan)
    app.state.services = routes.Services(settings, bus, key_store, metrics)
    app.include_router(routes.commands)
    app.include_router(routes.ops)
    app.add_exception_handler(RequestValidationError, _invalid_request)
    app.add_exception_handler(PublishError, _unavailable)
    app.add_exception_handler(KeyStoreUnavailable, _key_store_unavailable)
    # The last one added runs first: every response, a 413 included, gets an id and a log
    # line; a plainly valid sign-up is then answered without FastAPI's routing.
    app.add_middleware(SignUpFastPath, services=app.state.services,
                       route=next(r for r in routes.commands.routes
                                  if getattr(r, "endpoint", None) is routes.sign_up),
                       handlers=app.exception_handlers)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(RequestContextMiddleware, metrics=metrics, logger="command_api.access",
                       routes=app.router.routes)
    return app


async def _invalid_request(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return JSONResponse({"detail": [_field_error(e) for e in exc.errors()]}, status_code=422)


def _field_error(error: dict[str, Any]) -> dict[str, Any]:
    loc = list(error["loc"])
    # ("body", "email") names the field "email"; ("body", 17) is a JSON syntax error at
    # character 17 of the body, so it names "body".
    field = ".".join(map(str, loc[1:])) if len(loc) > 1 and isinstance(loc[1], str) else loc[0]
    msg = error["msg"]
    if error["type"] == "json_invalid" and "error" in error.get("ctx", {}):
        msg = f"{msg}: {error['ctx']['error']}"
    # The rejected input is left out: echoing it back would put personal data into
    # whatever logs responses between here and the caller.
    return {"loc": loc, "field": field, "msg": msg, "type": error["type"]}


async def _unavailable(request: Request, exc: Exception) -> JSONResponse:
    # A produce request that timed out may still have been written, so this is "not
    # confirmed", not "not stored": a retry with the same Idempotency-Key is safe.
    return _retry_later(request, exc, "command not acknowledged by kafka",
                        "Kafka did not confirm the command in time; retry with the same "
                        "Idempotency-Key after Retry-After seconds")


async def _key_store_unavailable(request: Request, exc: Exception) -> JSONResponse:
    # Nothing reached Kafka: the key (or the erasure record) comes first.
    return _retry_later(request, exc, "key store unavailable",
                        "the key store did not answer in time; nothing was queued; retry "
                        "after Retry-After seconds")


def _retry_later(request: Request, exc: Exception, event: str, detail: str) -> JSONResponse:
    """503 with Retry-After, and a warning with the request's correlation id."""
    log.warning(event, extra={"correlation_id": request.state.correlation_id,
                              "error": str(exc)})
    return JSONResponse({"detail": detail}, status_code=503,
                        headers={"Retry-After": str(routes.RETRY_AFTER_SECONDS)})
