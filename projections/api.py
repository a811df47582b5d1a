"""Run the query API: `python -m projections.api` (`make up` starts it this way).

Answers the read side of the contract from the views the projector keeps in
PostgreSQL. Settings (see `projections/settings.py`): DATABASE_URL, ADMIN_TOKEN and
ANALYST_TOKEN (who may read what: `projections/access.py`) are required; it
listens on HOST:QUERY_API_PORT (default 127.0.0.1:8001). Logs go to stderr as JSON
lines, one per request with its correlation id (X-Correlation-Id) and no personal data.

Statistics (a course's, the global ones, a page of courses, the dashboard at GET /) come
from memory: `projections.live` keeps every course's birth-date aggregates there and
refreshes them when the projector's commits notify it, and the answers rendered from them
are kept per date until the course changes. While that cache is not connected to
PostgreSQL, they are read from PostgreSQL as before (and answer 503 while it is away);
the dashboard then answers 503. A decision (GET /signups/{id}) is one primary-key probe.
Nothing scans enrollments: ages are computed at `as_of` from the stored birth-date
aggregates and counts per birth date, with `projections.stats`.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, date, datetime
from typing import Annotated, Any, Literal, TypeVar

import psycopg
import uvicorn
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Path, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST
from psycopg_pool import AsyncConnectionPool, PoolTimeout
from pydantic import BaseModel, Field

from projections import access, dashboard, erasures, store
from projections.live import LiveMetrics, LiveStats
from projections.observability import ErasureMetrics, query_api_metrics
from projections.readmodel import Snapshot, course_body, dump, global_body, page_json
from projections.settings import QueryApiSettings
from schemas.messages import COURSE_ID_PATTERN, RejectionReason
from service_kit.http import RequestContextMiddleware
from service_kit.logs import configure_logging
from service_kit.settings import load_settings

_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_COURSE_ID = re.compile(COURSE_ID_PATTERN)
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
RETRY_AFTER_SECONDS = "2"
T = TypeVar("T")


# ------------------------------------------------------------------ HTTP shapes


class SignupOut(BaseModel):
    signup_id: str
    course_id: str
    status: Literal["accepted", "waitlisted", "rejected", "withdrawn"]
    position: int | None = Field(description="1-based place on the waiting list now; "
                                 "null unless waitlisted.")
    reason: RejectionReason | None


class CourseStatsOut(BaseModel):
    course_id: str
    title: str
    lecturer: str
    capacity: int
    enrolled: int
    waitlist_capacity: int
    waitlisted: int
    min_age: int | None
    max_age: int | None
    average_age: float | None
    age_histogram: dict[str, int]  # completed years -> students of that age at as_of
    as_of: date


class GlobalStatsOut(BaseModel):
    courses: int
    enrollments: int
    min_age: int | None
    max_age: int | None
    average_age: float | None
    age_histogram: dict[str, int]
    as_of: date


class CoursesPageOut(BaseModel):
    courses: list[CourseStatsOut]
    next: str | None  # pass as `after` for the next page; null on the last page
    as_of: date


class QueryErrorOut(BaseModel):
    type: str
    loc: list[str | int] = Field(description='Where, e.g. ["query", "as_of"].')
    msg: str
    input: str | None = None


class InvalidQueryOut(BaseModel):
    """422 answers to a query parameter out of its declared range or format."""

    detail: list[QueryErrorOut]


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


async def _snapshot(request: Request) -> Snapshot | None:
    return await request.app.state.live.snapshot()  # type: ignore[no-any-return]


# Plain functions rather than FastAPI dependencies or parameters: resolving them took a
# fifth of each request's time, for a pool lookup and a date parse; on the statistics
# routes, which answer from memory, they would be most of it. The parameters are declared
# for the OpenAPI docs with `openapi_extra` instead.
def _as_of(as_of: str | None) -> date:
    if as_of is None:
        return datetime.now(UTC).date()
    try:
        if not _DATE.fullmatch(as_of):
            raise ValueError(as_of)
        return date.fromisoformat(as_of)
    except ValueError:
        raise _invalid("as_of", as_of, "date_parsing",
                       "as_of must be a calendar date written YYYY-MM-DD") from None


def _after(after: str | None) -> str | None:
    if after is not None and not _COURSE_ID.fullmatch(after):
        raise _invalid("after", after, "string_pattern_mismatch",
                       f"after must be a course id ({COURSE_ID_PATTERN})")
    return after


def _limit(limit: str | None, default: int) -> int:
    if limit is None:
        return default
    # ASCII digits only (str.isdigit() also takes "²", which int() refuses), and few.
    if not (limit.isascii() and limit.isdigit() and len(limit) <= 4) or not (
            1 <= int(limit) <= MAX_LIMIT):
        raise _invalid("limit", limit, "limit_range",
                       f"limit must be a whole number from 1 to {MAX_LIMIT}")
    return int(limit)


def _invalid(name: str, value: str, kind: str, message: str) -> RequestValidationError:
    return RequestValidationError([{"type": kind, "loc": ("query", name), "input": value,
                                    "msg": message}])


def _documented(*names: str) -> dict[str, Any]:
    return {"parameters": [_PARAMETERS[name] for name in names]}


_UNAUTHORIZED: dict[int | str, dict[str, Any]] = {
    401: {"description": "No valid token: the analyst's or the admin's, as Bearer or as the "
                         "HTTP Basic password (WWW-Authenticate names both)"}}
_INVALID_QUERY: dict[int | str, dict[str, Any]] = {
    422: {"description": "An invalid query parameter, named in `loc`", "model": InvalidQueryOut},
    **_UNAUTHORIZED}


_PARAMETERS: dict[str, dict[str, Any]] = {
    "as_of": {"name": "as_of", "in": "query", "required": False,
              "description": "YYYY-MM-DD; default today (UTC)",
              "schema": {"type": "string", "format": "date"}},
    "after": {"name": "after", "in": "query", "required": False,
              "description": "the last course id of the previous page (its `next`)",
              "schema": {"type": "string", "pattern": _COURSE_ID.pattern}},
    "limit": {"name": "limit", "in": "query", "required": False,
              "description": "courses per page",
              "schema": {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT,
                         "default": DEFAULT_LIMIT}},
}
AsOf = Annotated[str | None, Query(description="YYYY-MM-DD; default today (UTC)")]
# Declared, not checked: an id of another shape names no course, which is a 404 as ever.
CourseIdPath = Annotated[str, Path(json_schema_extra={"pattern": COURSE_ID_PATTERN})]

router = APIRouter()
ANALYST = [Depends(access.require_analyst)]


# ------------------------------------------------------------------ routes


@router.get("/signups/{signup_id}", response_model=SignupOut,
            responses={404: {"description": "Not decided yet, or unknown"}})
async def get_signup(signup_id: str, request: Request) -> Response:
    """The decision on one sign-up; 404 until it is decided."""
    found = await _db(request).run(store.fetch_decision, signup_id)
    if found is None:
        raise HTTPException(404, "no decision for this sign-up (yet)")
    return _json(SignupOut(signup_id=found.signup_id, course_id=found.course_id,
                           status=found.status,  # type: ignore[arg-type]
                           position=found.position,
                           reason=found.reason))  # type: ignore[arg-type]


@router.get("/courses/{course_id}/stats", response_model=CourseStatsOut,
            dependencies=ANALYST,
            responses={404: {"description": "Unknown course"}, **_INVALID_QUERY},
            openapi_extra=_documented("as_of"))
async def get_course_stats(course_id: CourseIdPath, request: Request) -> Response:
    """A course, its enrollment count and its students' ages at `as_of`."""
    day = _as_of(request.query_params.get("as_of"))
    snapshot = await _snapshot(request)
    if snapshot is not None:
        body = snapshot.course_json(course_id, day)
    else:
        course = await _db(request).run(store.fetch_course, course_id)
        body = None if course is None else dump(course_body(course, day))
    if body is None:
        raise HTTPException(404, "unknown course")
    return Response(body, media_type="application/json")


@router.get("/courses", response_model=CoursesPageOut, responses=_INVALID_QUERY,
            dependencies=ANALYST,
            openapi_extra=_documented("as_of", "after", "limit"))
async def get_courses(request: Request) -> Response:
    """A page of every course's statistics at `as_of`, in course id order (keyset
    pagination: pass `next` as `after`)."""
    query = request.query_params
    day = _as_of(query.get("as_of"))
    after, limit = _after(query.get("after")), _limit(query.get("limit"), DEFAULT_LIMIT)
    snapshot = await _snapshot(request)
    if snapshot is not None:
        return Response(snapshot.page_json(day, after, limit), media_type="application/json")
    courses, next_after = await _db(request).run(store.fetch_page, after, limit)
    body = page_json((dump(course_body(c, day)) for c in courses), next_after, day)
    return Response(body, media_type="application/json")


@router.get("/stats", response_model=GlobalStatsOut, responses=_INVALID_QUERY,
            dependencies=ANALYST,
            openapi_extra=_documented("as_of"))
async def get_stats(request: Request) -> Response:
    """Courses, enrollments and ages at `as_of` over every accepted enrollment."""
    day = _as_of(request.query_params.get("as_of"))
    snapshot = await _snapshot(request)
    if snapshot is not None:
        body = snapshot.global_json(day)
    else:
        body = dump(global_body(await _db(request).run(store.fetch_global), day))
    return Response(body, media_type="application/json")


Sort = Literal["course_id", "title", "lecturer", "enrolled", "capacity", "fill", "waitlisted",
               "min_age",
               "max_age", "average_age"]  # the keys of readmodel.SORT_KEYS


@router.get("/", response_class=HTMLResponse, include_in_schema=False, dependencies=ANALYST)
async def get_dashboard(
    request: Request, as_of: AsOf = None, sort: Sort = "course_id",
    dir: Literal["asc", "desc"] = "asc",  # noqa: A002 (the query parameter's name)
    course: Annotated[str | None, Query(max_length=64)] = None,
) -> Response:
    """The statistics as a page for people: global figures, every course, age charts."""
    day = _as_of(as_of)
    after = _after(request.query_params.get("after"))
    limit = _limit(request.query_params.get("limit"), dashboard.DEFAULT_LIMIT)
    snapshot = await _snapshot(request)
    if snapshot is None:
        return HTMLResponse("<!doctype html><title>Course sign-ups</title><p>The statistics "
                            "are being loaded from the database; try again in a moment.</p>",
                            status_code=503, headers={"Retry-After": RETRY_AFTER_SECONDS})
    view = dashboard.View(day, sort, dir == "desc", after, limit, course or None)
    rows, next_after = snapshot.sorted_page(day, sort, dir == "desc", after, limit)
    chosen = snapshot.figures(course, day) if course else None
    histogram = ({} if chosen is None else
                 {int(a): n for a, n in course_body(chosen.view, day)["age_histogram"].items()})
    page = dashboard.Page(view, global_body(snapshot.overall, day), rows, next_after, chosen,
                          histogram)
    return HTMLResponse(dashboard.render_page(page))


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
    """PostgreSQL answers (and whether statistics come from memory: `cache`)."""
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
    return JSONResponse({"status": "ready", "postgres": True,
                         "cache": request.app.state.live.live})


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    await _read_erasures(request)
    return Response(request.app.state.metrics.render(), media_type=CONTENT_TYPE_LATEST)


async def _read_erasures(request: Request) -> None:
    """Refresh the pending-erasure gauges; while PostgreSQL does not answer within a
    second (or refuses the query) they are NaN, unknown: the scrape itself must not
    fail for it, and a stale 0 must not pass for "none pending"."""
    gauges: ErasureMetrics = request.app.state.erasure_metrics
    try:
        async with request.app.state.pool.connection(timeout=1) as conn:
            count, oldest = await erasures.pending_erasures(conn)
    except (PoolTimeout, psycopg.Error):
        gauges.pending.set(float("nan"))
        gauges.oldest_pending.set(float("nan"))
        return
    gauges.pending.set(count)
    gauges.oldest_pending.set(oldest)


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
        live.start()
        try:
            yield
        finally:
            await live.stop()
            await pool.close()

    metrics = query_api_metrics()
    live = LiveStats(settings.database_url, LiveMetrics(metrics.registry), settings.projection)
    app = FastAPI(title="Course sign-up: query API", lifespan=lifespan)
    app.state.pool = pool
    app.state.database = Database(pool)
    app.state.metrics = metrics
    app.state.erasure_metrics = ErasureMetrics(metrics.registry)
    app.state.live = live
    app.state.tokens = access.Tokens(settings.admin_token.get_secret_value(),
                                     settings.analyst_token.get_secret_value())
    app.include_router(router)
    app.include_router(erasures.router)
    app.add_exception_handler(PoolTimeout, _database_unavailable)
    app.add_exception_handler(psycopg.OperationalError, _database_unavailable)
    app.add_middleware(RequestContextMiddleware, metrics=metrics,
                       logger="projections.api.access", routes=app.router.routes)
    return app


def main() -> None:
    settings = load_settings(QueryApiSettings, "query api")
    configure_logging(settings.log_level, "query-api")
    uvicorn.run(create_app(settings), host=settings.host, port=settings.query_api_port,
                log_config=None, access_log=False, server_header=False)


if __name__ == "__main__":
    main()
