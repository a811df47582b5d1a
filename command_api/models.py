"""HTTP request and response shapes; routes turn requests into `schemas.messages` commands."""

from __future__ import annotations

import re
import unicodedata
from datetime import UTC, date, datetime
from typing import Annotated, Literal

from email_validator import EmailNotValidError, validate_email
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
)

from schemas.ages import completed_years
from schemas.messages import COURSE_ID_PATTERN

TEXT_MAX_LENGTH = 200
MIN_AGE_YEARS = 10
MAX_AGE_YEARS = 130
MAX_CAPACITY = 100_000
_ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


def normalise_email(value: str) -> str:
    """The address in the one spelling the whole system compares on."""
    try:
        result = validate_email(value, check_deliverability=False)
    except EmailNotValidError as exc:
        raise ValueError(str(exc)) from None
    # One student holds one seat per course, compared case-insensitively: lower-casing the
    # whole address here makes "Ada@X.org" and "ada@x.org" the same student downstream.
    return result.normalized.lower()


def _without_control_characters(value: str) -> str:
    # Names end up in e-mail headers; a CR or LF there would let a caller inject headers.
    if any(unicodedata.category(char) == "Cc" for char in value):
        raise ValueError("must not contain control characters")
    return value


def _iso_date_text(value: object) -> object:
    # Pydantic's lax date parsing also takes unix timestamps; the contract says YYYY-MM-DD.
    if isinstance(value, date) and not isinstance(value, datetime):
        return value
    if isinstance(value, str) and _ISO_DATE.fullmatch(value):
        return value
    raise ValueError("must be a date written YYYY-MM-DD")


def _plausible_birth_date(value: date) -> date:
    today = datetime.now(UTC).date()
    if value > today:
        raise ValueError("must not be in the future")
    age = completed_years(value, today)
    if age > MAX_AGE_YEARS:
        raise ValueError(f"must be at most {MAX_AGE_YEARS} years ago")
    if age < MIN_AGE_YEARS:
        raise ValueError(f"must be at least {MIN_AGE_YEARS} years ago")
    return value


CourseId = Annotated[str, StringConstraints(pattern=COURSE_ID_PATTERN)]
Text = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=TEXT_MAX_LENGTH),
    AfterValidator(_without_control_characters),
]
Email = Annotated[
    str, StringConstraints(strip_whitespace=True, max_length=320), AfterValidator(normalise_email)
]
BirthDate = Annotated[
    date, BeforeValidator(_iso_date_text), AfterValidator(_plausible_birth_date)
]
Capacity = Annotated[int, Field(strict=True, ge=1, le=MAX_CAPACITY)]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CreateCourseRequest(_Request):
    course_id: CourseId | None = Field(default=None, description="A UUID is chosen if absent.")
    title: Text
    lecturer: Text
    capacity: Capacity


class SignUpRequest(_Request):
    email: Email
    name: Text
    date_of_birth: BirthDate


class ErasureRequest(_Request):
    email: Email


class ErasureAccepted(BaseModel):
    erasure_id: str
    status: Literal["pending"] = "pending"


class CourseAccepted(BaseModel):
    course_id: str
    command_id: str


class SignUpAccepted(BaseModel):
    signup_id: str
    status: Literal["pending"] = "pending"


class Status(BaseModel):
    status: str


class FieldError(BaseModel):
    loc: list[str | int] = Field(description='Where, e.g. ["body", "email"].')
    field: str = Field(description="The offending field, or 'body' for the body as a whole.")
    msg: str
    type: str


class FieldErrors(BaseModel):
    """422 and 413 answers: one entry per offending field."""

    detail: list[FieldError]


class Problem(BaseModel):
    """401 and 503 answers."""

    detail: str
