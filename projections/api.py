"""Run the query API: `python -m projections.api` (`make up` starts it this way).

Answers the read side of the contract from the views the projector keeps in
PostgreSQL. Settings (see `projections/settings.py`): DATABASE_URL is required; it
listens on HOST:QUERY_API_PORT (default 127.0.0.1:8001). Logs go to stderr as JSON
lines, one per request with its correlation id (X-Correlation-Id) and no personal data.

Every answer is one primary-key probe (a sign-up, a course) or the single global row:
O(1) in the number of sign-ups. Ages are computed per request from the stored birth-date
aggregates at `as_of`, with `projections.stats`.
"""

from __future__ import annotations

import re
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, date, datetime
from typing import Annotated, Literal, TypeVar

import psycopg
import uvicorn
from fastapi import APIRouter, FastAPI, HTTPException, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST
from psycopg_pool import AsyncConnectionPool, PoolTimeout
from pydantic import BaseModel, ValidationError

from projections import erasures, store
from projections.observability import ApiMetrics, RequestContextMiddleware
from projections.settings import QueryApiSettings
from projections.stats import age_stats
from service_kit.logs import configure_logging

_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
RETRY_AFTER_SECONDS = "2"
T = TypeVar("T")


# ------------------------------------------------------------------ HTTP shapes


class SignupOut(BaseModel):
    signup_id: str
    course_id: str
    status: Literal["accepted", "rejected"]
    reason: str | None


class CourseStatsOut(BaseModel):
    course_id: str
    title: str
    lecturer: str
    capacity: int
    enrolled: int
    min_age: int | None
    max_age: int | None
    average_age: float | None
    as_of: date


class GlobalStatsOut(BaseModel):
    courses: int
    enrollments: int
    min_age: int | None
    max_age: int | None
    average_age: float | None
    as_of: date


# ------------------------------------------------------------------ database and as_of


class Database:
    """The pool, with one retry for a connection that died while it sat in the pool.

    A checkout is not tested first (that would double the round trips of every
    request). When PostgreSQL restarted, the first query on a stale connection fails;
    then every idle connection is checked, the dead ones are dropped, and the query
    runs once more on a live one.
    """

    def __init__(self, pool: AsyncConnectionPool) -> None:
        self.pool = pool

    async def run(self, query: Callable[..., Awaitable[T]], *args: object) -> T:
        used: psycopg.AsyncConnection | None = None
        try:
            async with self.pool.connection() as conn:
                used = conn
                return await query(conn, *args)
        except psycopg.OperationalError:
            if used is None or not used.broken:
                raise  # the database answered (a timeout, a cancel): not a stale connection
            await self.pool.check()
            async with self.pool.connection() as conn:
                return await query(conn, *args)


def _db(request: Request) -> Database:
    return request.app.state.database  # type: ignore[no-any-return]


# Plain functions rather than FastAPI dependencies: resolving dependencies took a
# fifth of each request's time, for a pool lookup and a date parse.
def _as_of(as_of: str | None) -> date:
    if as_of is None:
        return datetime.now(UTC).date()
    try:
        if not _DATE.fullmatch(as_of):
            raise ValueError(as_of)
        return date.fromisoformat(as_of)
    except ValueError:
        raise RequestValidationError([{
            "type": "date_parsing", "loc": ("query", "as_of"), "input": as_of,
            "msg": "as_of must be a calendar date written YYYY-MM-DD"}]) from None


AsOf = Annotated[str | None, Query(description="YYYY-MM-DD; default today (UTC)")]

router = APIRouter()


# ------------------------------------------------------------------ routes


@router.get("/signups/{signup_id}", response_model=SignupOut,
            responses={404: {"description": "Not decided yet, or unknown"}})
async def get_signup(signup_id: str, request: Request) -> Response:
    """The decision on one sign-up; 404 until it is decided."""
    found = await _db(request).run(store.fetch_decision, signup_id)
    if found is None:
        raise HTTPException(404, "no decision for this sign-up (yet)")
    return _json(SignupOut(signup_id=found.signup_id, course_id=found.course_id,
                           status=found.status, reason=found.reason))  # type: ignore[arg-type]


@router.get("/courses/{course_id}/stats", response_model=CourseStatsOut,
            responses={404: {"description": "Unknown course"}})
async def get_course_stats(course_id: str, request: Request, as_of: AsOf = None) -> Response:
    """A course, its enrollment count and its students' ages at `as_of`."""
    day = _as_of(as_of)
    course = await _db(request).run(store.fetch_course, course_id)
    if course is None:
        raise HTTPException(404, "unknown course")
    ages = age_stats(course.ages, day)
    return _json(CourseStatsOut(course_id=course.course_id, title=course.title,
                                lecturer=course.lecturer, capacity=course.capacity,
                                enrolled=course.ages.count, min_age=ages.min_age,
                                max_age=ages.max_age, average_age=ages.average_age,
                                as_of=day))


@router.get("/stats", response_model=GlobalStatsOut)
async def get_stats(request: Request, as_of: AsOf = None) -> Response:
    """Courses, enrollments and ages at `as_of` over every accepted enrollment."""
    day = _as_of(as_of)
    found = await _db(request).run(store.fetch_global)
    ages = age_stats(found.ages, day)
    return _json(GlobalStatsOut(courses=found.courses, enrollments=found.ages.count,
                                min_age=ages.min_age, max_age=ages.max_age,
                                average_age=ages.average_age, as_of=day))


def _json(body: BaseModel) -> Response:
    # The model is built from typed rows, so it is serialised once, here; FastAPI would
    # validate a returned model against response_model again (which stays for the docs).
    return Response(body.model_dump_json(), media_type="application/json")


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(request: Request) -> JSONResponse:
    """PostgreSQL answers."""
    pool: AsyncConnectionPool = request.app.state.pool
    try:
        async with pool.connection(timeout=2) as conn:
            await conn.execute("SELECT 1")
    except psycopg.OperationalError:
        await pool.check()  # drop connections that died with a database restart
        return JSONResponse({"status": "unavailable", "postgres": False}, status_code=503,
                            headers={"Retry-After": RETRY_AFTER_SECONDS})
    except (PoolTimeout, psycopg.Error):
        return JSONResponse({"status": "unavailable", "postgres": False}, status_code=503,
                            headers={"Retry-After": RETRY_AFTER_SECONDS})
    return JSONResponse({"status": "ready", "postgres": True})


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    return Response(request.app.state.metrics.render(), media_type=CONTENT_TYPE_LATEST)


# ------------------------------------------------------------------ the app


async def _database_unavailable(_request: Request, _exc: Exception) -> JSONResponse:
    return JSONResponse({"detail": "the database is unavailable; try again"}, status_code=503,
                        headers={"Retry-After": RETRY_AFTER_SECONDS})


def create_app(settings: QueryApiSettings) -> FastAPI:
    pool = AsyncConnectionPool(
        settings.database_url,
        min_size=1,
        max_size=settings.query_api_pool_size,
        timeout=settings.query_api_db_timeout_seconds,
        # Autocommit: each read is one statement, and no connection sits idle in a
        # transaction holding a lock that a replay's swap would have to wait for.
        kwargs={"autocommit": True},
        open=False,
        name="query-api",
    )

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await pool.open(wait=False)  # start even while PostgreSQL is away; /readyz says so
        try:
            yield
        finally:
            await pool.close()

    app = FastAPI(title="Course sign-up: query API", lifespan=lifespan)
    app.state.pool = pool
    app.state.database = Database(pool)
    app.state.metrics = ApiMetrics()
    app.include_router(router)
    app.include_router(erasures.router)
    app.add_exception_handler(PoolTimeout, _database_unavailable)
    app.add_exception_handler(psycopg.OperationalError, _database_unavailable)
    app.add_middleware(RequestContextMiddleware, metrics=app.state.metrics)
    return app


def load_settings() -> QueryApiSettings:
    try:
        return QueryApiSettings()  # type: ignore[call-arg]  # the environment fills it in
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])).upper()}: {e['msg']}"
                             for e in exc.errors())
        sys.exit(f"query api: invalid settings: {problems}")


def main() -> None:
    settings = load_settings()
    configure_logging(settings.log_level, "query-api")
    uvicorn.run(create_app(settings), host=settings.host, port=settings.query_api_port,
                log_config=None, access_log=False, server_header=False)


if __name__ == "__main__":
    main()
