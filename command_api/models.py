"""HTTP request and response shapes; routes turn requests into `schemas.messages` commands."""

from __future__ import annotations

import re
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
    model_validator,
)

from schemas.ages import completed_years
from schemas.messages import COURSE_ID_PATTERN

TEXT_MAX_LENGTH = 200
MIN_AGE_YEARS = 10
MAX_AGE_YEARS = 130
MAX_CAPACITY = 100_000
_ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
# Names end up in e-mail headers; a control character (Unicode category Cc) there, a CR or
# LF above all, would let a caller inject headers. Checked after the surrounding white
# space is stripped; in the OpenAPI, where nothing is stripped, the pattern is stricter.
_CONTROL = r"\x00-\x1f\x7f-\x9f"
# Bidirectional controls (embeddings, overrides, isolates, marks) reorder what is shown,
# so a name could display as something else (a spoofed lecturer, a reversed address in
# a mail): refused anywhere in the text.
_BIDI = r"\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069"
# What pydantic strips (Unicode White_Space) less the control characters among it.
_SPACE = r" \u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
# Characters that show nothing: format characters (zero-width space and joiners, word
# joiner, invisible operators, BOM, soft hyphen, ...), fillers, variation selectors and
# tags. Allowed next to visible ones (a ZWJ inside a name is legitimate), but a text
# needs at least one character outside them and outside the white space.
_INVISIBLE = (
    r"\u00ad\u034f\u115f\u1160\u17b4\u17b5\u180b-\u180f\u200b-\u200d\u2060-\u2065"
    r"\u206a-\u206f\u2800\u3164\ufe00-\ufe0f\ufeff\uffa0\ufff0-\ufffb"
    r"\U0001d173-\U0001d17a\U000e0000-\U000e0fff"
)
TEXT_PATTERN = (
    rf"^[^{_CONTROL}{_BIDI}]*[^{_CONTROL}{_BIDI}{_SPACE}{_INVISIBLE}][^{_CONTROL}{_BIDI}]*$"
)
EMAIL_MAX_LENGTH = 320
# The ASCII addresses `canonical_email` accepts, for the OpenAPI: dot-atom local part of at
# most 64 characters, host-name labels (none with "--" in 3rd and 4th place, which IDNA
# keeps for Punycode), and an alphabetic top-level domain other than the special-use
# ones email_validator refuses. It accepts internationalised addresses too; the
# description says so.
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]"
_LABEL = r"(?![A-Za-z0-9]{2}--)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
EMAIL_PATTERN = (
    rf"^(?=[^@]{{1,64}}@){_ATEXT}+(\.{_ATEXT}+)*@({_LABEL}\.)+"
    r"(?!(arpa|invalid|local|localhost|onion|test)$)[A-Za-z]{2,63}$"
)
# email_validator's limit for a whole address, below the raw input's EMAIL_MAX_LENGTH.
EMAIL_ADDRESS_MAX_LENGTH = 254


def canonical_email(value: str) -> str:
    """The address as mail goes to it: email_validator's normalised form (NFC, the
    domain in lower case). Which addresses are one student is decided elsewhere, by
    the one rule `schemas.addresses.same_student_form`."""
    try:
        result = validate_email(value, check_deliverability=False)
    except EmailNotValidError as exc:
        raise ValueError(str(exc)) from None
    return result.normalized


def _iso_date_text(value: object) -> object:
    # Pydantic's lax date parsing also takes unix timestamps; the contract says YYYY-MM-DD.
    if isinstance(value, date) and not isinstance(value, datetime):
        return value
    if isinstance(value, str) and _ISO_DATE.fullmatch(value):
        return value
    raise ValueError("must be a date written YYYY-MM-DD")


def _birth_years(today: date) -> str:
    # The years whose every day is a plausible birth date today, and will still be a
    # year from now: what an OpenAPI generated once per process can promise.
    years = range(today.year - MAX_AGE_YEARS + 1, today.year - MIN_AGE_YEARS)
    return rf"^({'|'.join(map(str, years))})-\d{{2}}-\d{{2}}$"


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


def _json_integer(value: object) -> object:
    # A JSON number without a fraction, 30.0 included (JSON Schema's "integer"); pydantic's
    # lax int would also take "30" and true.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("must be a whole number")
    return value


CourseId = Annotated[str, StringConstraints(pattern=COURSE_ID_PATTERN)]
Text = Annotated[
    str,
    StringConstraints(
        strip_whitespace=True, min_length=1, max_length=TEXT_MAX_LENGTH, pattern=TEXT_PATTERN
    ),
]
Email = Annotated[
    str,
    StringConstraints(strip_whitespace=True, max_length=EMAIL_MAX_LENGTH),
    AfterValidator(canonical_email),
    Field(
        description="An e-mail address; internationalised ones (RFC 6531) are accepted too.",
        json_schema_extra={
            "format": "email", "pattern": EMAIL_PATTERN, "maxLength": EMAIL_ADDRESS_MAX_LENGTH
        },
    ),
]
BirthDate = Annotated[
    date,
    BeforeValidator(_iso_date_text),
    AfterValidator(_plausible_birth_date),
    Field(
        description=f"YYYY-MM-DD, from {MAX_AGE_YEARS} to {MIN_AGE_YEARS} years ago",
        json_schema_extra={"pattern": _birth_years(datetime.now(UTC).date())},
    ),
]
Capacity = Annotated[int, Field(ge=1, le=MAX_CAPACITY), BeforeValidator(_json_integer)]
WaitlistCapacity = Annotated[
    int,
    Field(ge=0, le=MAX_CAPACITY, description="How many students may wait for a seat once the "
          "course is full; with 0 a full course rejects with course_full."),
    BeforeValidator(_json_integer),
]
# A withdrawal token (schemas.withdrawal): 43 url-safe base64 characters.
WITHDRAWAL_TOKEN_PATTERN = r"^[A-Za-z0-9_-]{43}$"
WithdrawalToken = Annotated[str, Field(pattern=WITHDRAWAL_TOKEN_PATTERN)]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CreateCourseRequest(_Request):
    course_id: CourseId | None = Field(default=None, description="A UUID is chosen if absent.")
    title: Text
    lecturer: Text
    capacity: Capacity
    waitlist_capacity: WaitlistCapacity = 0


class ChangeCourseRequest(_Request):
    """One or more of the fields; those left out keep their value."""

    model_config = ConfigDict(extra="forbid", frozen=True, json_schema_extra={"minProperties": 1})

    title: Text | None = None
    lecturer: Text | None = None
    capacity: Capacity | None = None
    waitlist_capacity: WaitlistCapacity | None = None

    @model_validator(mode="after")
    def _changes_something(self) -> ChangeCourseRequest:
        if not self.model_fields_set:
            raise ValueError("name one or more of title, lecturer, capacity, waitlist_capacity")
        return self


class WithdrawalRequest(_Request):
    withdrawal_token: WithdrawalToken


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
    withdrawal_token: str = Field(description="Lets its holder withdraw this sign-up "
                                  "(POST .../withdrawal); also in every e-mail about it.")


class WithdrawalAccepted(BaseModel):
    signup_id: str
    command_id: str


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
