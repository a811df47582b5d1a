"""HTTP routes: validated requests become commands on the `course-commands` topic."""

from __future__ import annotations

import contextlib
import hmac
import logging
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, HTTPException, Path, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import PlainTextResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel

from command_api.keys import KeyStore, KeyStoreUnavailable, Verdict
from command_api.models import (
    ChangeCourseRequest,
    CourseAccepted,
    CreateCourseRequest,
    ErasureAccepted,
    ErasureRequest,
    FieldErrors,
    Problem,
    SignUpAccepted,
    SignUpRequest,
    Status,
    WithdrawalAccepted,
    WithdrawalRequest,
)
from command_api.observability import Metrics
from command_api.publisher import Publisher, PublishError
from command_api.settings import Settings
from schemas import codec, topics
from schemas.messages import (
    COURSE_ID_PATTERN,
    ChangeCourse,
    Command,
    CreateCourse,
    SignUp,
    Withdraw,
    withdrawal_id_for,
)
from schemas.personal import request_fingerprint, seal, seat_key, signup_id_for, student_hash
from schemas.withdrawal import is_withdrawal_token, withdrawal_token
from service_kit.records import TRACED

RETRY_AFTER_SECONDS = 5
IDEMPOTENCY_HEADER = "Idempotency-Key"
log = logging.getLogger("command_api")


@dataclass(frozen=True)
class Services:
    """What the routes use, built once by `create_app`. One dependency for all of them
    rather than one each: FastAPI solves every dependency of every request anew, and with
    one per service that was about a fifth of a sign-up's CPU."""

    settings: Settings
    publisher: Publisher
    keys: KeyStore
    metrics: Metrics


# `async def` because FastAPI runs a plain `def` dependency in a thread pool, a hop per
# request for what is an attribute lookup.
async def _services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


def _correlation_id(request: Request) -> str:
    correlation_id: str = request.state.correlation_id  # set by RequestContextMiddleware
    return correlation_id


ServicesDep = Annotated[Services, Depends(_services)]
_bearer = HTTPBearer(auto_error=False, description="The ADMIN_TOKEN of the deployment.")


BearerDep = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


def _is_admin(settings: Settings, credentials: HTTPAuthorizationCredentials | None) -> bool:
    expected = settings.admin_token.get_secret_value().encode()
    given = credentials.credentials.encode() if credentials is not None else b""
    # Constant time, so response timing reveals nothing about the token's prefix.
    return hmac.compare_digest(given, expected)


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(status_code=401, detail=detail,
                         headers={"WWW-Authenticate": 'Bearer realm="command-api"'})


async def _require_admin(services: ServicesDep, credentials: BearerDep) -> None:
    if not _is_admin(services.settings, credentials):
        raise _unauthorized("missing or wrong admin token")


Admin = Annotated[None, Depends(_require_admin)]
CourseIdPath = Annotated[str, Path(pattern=COURSE_ID_PATTERN)]
# Sign-up ids are UUID text as the command API writes it (lower case).
SIGNUP_ID_PATTERN = r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"
SignupIdPath = Annotated[str, Path(pattern=SIGNUP_ID_PATTERN)]
# Printable ASCII without spaces, at most 255 characters; the fast path
# (command_api.fastpath) checks the same two rules.
IDEMPOTENCY_KEY_PATTERN = r"^[\x21-\x7e]+$"
IDEMPOTENCY_KEY_MAX_LENGTH = 255
IdempotencyKey = Annotated[
    str | None,
    Header(alias=IDEMPOTENCY_HEADER, min_length=1, max_length=IDEMPOTENCY_KEY_MAX_LENGTH,
           pattern=IDEMPOTENCY_KEY_PATTERN),
]


Responses = dict[int | str, dict[str, Any]]


def _error(status: int, description: str, model: type[BaseModel] = Problem) -> Responses:
    return {status: {"description": description, "model": model}}


_BAD_INPUT = {
    **_error(400, "The body is not readable as JSON text (e.g. not UTF-8)."),
    **_error(413, "Body larger than MAX_BODY_BYTES.", FieldErrors),
    **_error(422, "Invalid input; each offending field is named.", FieldErrors),
}
_UNAVAILABLE = _error(503, "Kafka did not acknowledge the command, or the key store did not "
                           "answer; retry after Retry-After.")


async def _send(command: Command, publisher: Publisher, metrics: Metrics,
                traced: bool = False) -> None:
    kind = type(command).__name__
    headers = [("correlation_id", command.correlation_id.encode()),
               ("command_type", kind.encode())]
    if traced:  # the caller follows it by its own correlation id: log its decision at INFO
        headers.append(TRACED)
    try:
        await publisher.publish(
            topics.COMMANDS,
            # Key = course id: every command of a course lands on one partition, in order.
            key=command.course_id.encode(),
            value=codec.encode(command),
            headers=headers,
        )
    except PublishError:
        metrics.publish_failures.inc()
        raise
    metrics.commands_published.labels(kind).inc()


def _now() -> datetime:
    # issued_at is an Avro timestamp-millis: keep only what survives the round trip.
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


commands = APIRouter(tags=["commands"], responses={**_UNAVAILABLE, **_BAD_INPUT})


@commands.post(
    "/courses",
    status_code=202,
    response_model=CourseAccepted,
    responses=_error(401, "Missing or wrong admin token."),
)
async def create_course(
    request: Request,
    _: Admin,
    body: CreateCourseRequest,
    services: ServicesDep,
) -> CourseAccepted:
    """Queue the creation of a course (admin only); 202 once Kafka holds the command."""
    command = CreateCourse(
        command_id=str(uuid.uuid4()),
        course_id=body.course_id or str(uuid.uuid4()),
        title=body.title,
        lecturer=body.lecturer,
        capacity=body.capacity,
        issued_at=_now(),
        correlation_id=_correlation_id(request),
        waitlist_capacity=body.waitlist_capacity,
    )
    await _send(command, services.publisher, services.metrics,
                traced=bool(request.state.traced))
    request.state.log_ids = {"course_id": command.course_id, "command_id": command.command_id}
    return CourseAccepted(course_id=command.course_id, command_id=command.command_id)


@commands.patch(
    "/courses/{course_id}",
    status_code=202,
    response_model=CourseAccepted,
    responses=_error(401, "Missing or wrong admin token."),
)
async def change_course(
    request: Request,
    _: Admin,
    course_id: CourseIdPath,
    body: ChangeCourseRequest,
    services: ServicesDep,
) -> CourseAccepted:
    """Queue a change of a course (admin only); the processor decides it."""
    command = ChangeCourse(
        command_id=str(uuid.uuid4()),
        course_id=course_id,
        issued_at=_now(),
        correlation_id=_correlation_id(request),
        title=body.title,
        lecturer=body.lecturer,
        capacity=body.capacity,
        waitlist_capacity=body.waitlist_capacity,
    )
    await _send(command, services.publisher, services.metrics)
    request.state.log_ids = {"course_id": course_id, "command_id": command.command_id}
    return CourseAccepted(course_id=course_id, command_id=command.command_id)


@commands.post(
    "/courses/{course_id}/signups/{signup_id}/withdrawal",
    status_code=202,
    response_model=WithdrawalAccepted,
    responses=_error(401, "Neither the sign-up's withdrawal token nor the admin token."),
)
async def withdraw(
    request: Request,
    course_id: CourseIdPath,
    signup_id: SignupIdPath,
    services: ServicesDep,
    credentials: BearerDep,
    body: WithdrawalRequest | None = None,
) -> WithdrawalAccepted:
    """Queue the withdrawal of a sign-up, with its withdrawal token or the admin token."""
    settings = services.settings
    token_ok = body is not None and is_withdrawal_token(
        settings.withdrawal_key, course_id, signup_id, body.withdrawal_token)
    if not token_ok and not _is_admin(settings, credentials):
        raise _unauthorized("missing or wrong withdrawal token")
    command = Withdraw(
        # One command id per sign-up: a repeated withdrawal is the same command, and the
        # processor decides it once.
        command_id=withdrawal_id_for(course_id, signup_id),
        signup_id=signup_id,
        course_id=course_id,
        issued_at=_now(),
        correlation_id=_correlation_id(request),
    )
    await _send(command, services.publisher, services.metrics)
    request.state.log_ids = {"course_id": course_id, "signup_id": signup_id}
    return WithdrawalAccepted(signup_id=signup_id, command_id=command.command_id)


_IN_FLIGHT = _error(409, "A request with this Idempotency-Key is being produced now (retry "
                        "after Retry-After), or an old one is in doubt (use a new key).")


@commands.post("/courses/{course_id}/signups", status_code=202, response_model=SignUpAccepted,
               responses=_IN_FLIGHT)
async def sign_up(
    request: Request,
    course_id: CourseIdPath,
    body: SignUpRequest,
    services: ServicesDep,
    response: Response,
    idempotency_key: IdempotencyKey = None,
) -> SignUpAccepted:
    """Queue a sign-up for a course; 202 once Kafka holds the command."""
    # Ids only: the access log line lets one grep go from a sign-up id to its correlation id.
    log_ids: dict[str, str] = {}
    request.state.log_ids = log_ids
    accepted = await accept_sign_up(services, course_id, body, idempotency_key,
                                    _correlation_id(request), bool(request.state.traced),
                                    log_ids)
    response.headers["Location"] = signup_location(accepted.signup_id)
    return accepted


def signup_location(signup_id: str) -> str:
    return f"/signups/{signup_id}"


async def accept_sign_up(services: Services, course_id: str, body: SignUpRequest,
                         idempotency_key: str | None, correlation_id: str, traced: bool,
                         log_ids: dict[str, str]) -> SignUpAccepted:
    """The sign-up route's work once its input is valid (the route, and the fast path
    of `command_api.fastpath`, call it): the student's key, the claim of a keyed request,
    the command produced; fills `log_ids` for the access line as soon as it knows them."""
    settings = services.settings
    # The address and name leave this process only sealed under the student's own key:
    # erasing the student deletes the key, and every copy in Kafka becomes unreadable.
    # The seat key and a keyed sign-up's id are derived from that key too, so once it is
    # gone nobody can recompute them from a guessed address, whatever secret they hold.
    key = await services.keys.key_for(student_hash(settings.secret, body.email))
    if idempotency_key:
        # The key belongs to the student: another student's request with the same key
        # gets a sign-up of their own.
        signup_id = signup_id_for(key.key, course_id, idempotency_key)
        fingerprint = request_fingerprint(key.key, body.name, body.date_of_birth.isoformat())
        found = await services.keys.claim_signup(signup_id, key.key_id, fingerprint)
        log_ids.update(course_id=course_id, signup_id=signup_id)
        if found == "produced":
            # Produced before: the same answer, and no second command, however late.
            return SignUpAccepted(
                signup_id=signup_id,
                withdrawal_token=withdrawal_token(settings.withdrawal_key, course_id, signup_id),
            )
        _refuse_unless_claimed(found)
    else:
        signup_id = str(uuid.uuid4())
    command = SignUp(
        # A retry with the same Idempotency-Key is the very same command, so the
        # processor can recognise it and decide it only once.
        command_id=signup_id,
        signup_id=signup_id,
        course_id=course_id,
        email="",
        name="",
        date_of_birth=body.date_of_birth,
        issued_at=_now(),
        correlation_id=correlation_id,
        seat_key=seat_key(key.key, course_id),
        key_id=key.ref,  # this sign-up's own reference to the key: links no other sign-up
        email_sealed=seal(key.key, signup_id, "email", body.email),
        name_sealed=seal(key.key, signup_id, "name", body.name),
    )
    try:
        await _send(command, services.publisher, services.metrics, traced=traced)
    except PublishError:
        if idempotency_key:
            with contextlib.suppress(KeyStoreUnavailable):
                await services.keys.release_signup(signup_id)
        raise
    if idempotency_key:
        try:
            await services.keys.signup_produced(signup_id)
        except KeyStoreUnavailable:
            # Kafka has it: the answer is 202. A retry finds the record unmarked and,
            # within TAKEOVER_LIMIT, produces the same command again, which the
            # processor recognises.
            log.warning("sign-up produced but not marked", extra={"signup_id": signup_id})
    log_ids.update(course_id=course_id, signup_id=signup_id)
    return SignUpAccepted(
        signup_id=signup_id,
        withdrawal_token=withdrawal_token(settings.withdrawal_key, course_id, signup_id),
    )


def _refuse_unless_claimed(found: Verdict) -> None:
    if found == "mismatch":
        raise RequestValidationError([{
            "loc": ("header", IDEMPOTENCY_HEADER), "type": "idempotency_key_reused",
            "msg": "this Idempotency-Key was used by this student for another request body",
        }])
    if found == "in_flight":
        raise HTTPException(status_code=409, headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
                            detail="a request with this Idempotency-Key is in flight; retry "
                                   "after Retry-After seconds")
    if found == "in_doubt":
        # Produced or not, nobody knows; producing it now could decide it twice.
        raise HTTPException(status_code=409, detail="an old request with this "
                            "Idempotency-Key never completed; use a new Idempotency-Key")


@commands.post(
    "/erasures",
    status_code=202,
    response_model=ErasureAccepted,
    responses=_error(401, "Missing or wrong admin token."),
)
async def request_erasure(
    request: Request, _: Admin, body: ErasureRequest, services: ServicesDep
) -> ErasureAccepted:
    """Forget a student (admin only); 202 once the erasure is durably recorded."""
    erasure_id = await services.keys.request_erasure(
        student_hash(services.settings.secret, body.email))
    request.state.log_ids = {"erasure_id": erasure_id}
    return ErasureAccepted(erasure_id=erasure_id)


ops = APIRouter(tags=["operations"])


@ops.get("/healthz", response_model=Status)
async def healthz() -> Status:
    """The process is up and serving."""
    return Status(status="ok")


@ops.get("/readyz", response_model=Status,
         responses=_error(503, "Kafka or the key store is not reachable.", Status))
async def readyz(services: ServicesDep, response: Response) -> Status:
    """Kafka is reachable, the command topic exists, and the key store answers."""
    kafka_ok, keys_ok = await services.publisher.ready(), await services.keys.ready()
    if kafka_ok and keys_ok:
        return Status(status="ready")
    response.status_code = 503
    response.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
    return Status(status="kafka unavailable" if not kafka_ok else "key store unavailable")


@ops.get("/metrics", response_class=PlainTextResponse)
async def metrics(services: ServicesDep) -> Response:
    """Prometheus metrics in the text exposition format."""
    return Response(services.metrics.render(), media_type=CONTENT_TYPE_LATEST)
