"""Commands and events as frozen dataclasses; `schemas/avro/*.avsc` is the source of truth.

Field names and order mirror the latest version of each Avro schema (a unit test
checks that). Timestamps are timezone-aware UTC datetimes; dates are `date`.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import date, datetime
from typing import Literal, get_args

# Deterministic ids: a command processed twice must yield an event with the same id,
# so every reader can drop the repeat. uuid5 over a fixed namespace gives that.
EVENT_NAMESPACE = uuid.UUID("6f1c7a52-3b8e-4d1e-9a57-2d4f0c9b8e11")


def event_id_for(command_id: str) -> str:
    """The id of the one event that a command produces."""
    return str(uuid.uuid5(EVENT_NAMESPACE, command_id))


# ---------------------------------------------------------------- commands


@dataclass(frozen=True)
class CreateCourse:
    command_id: str
    course_id: str
    title: str
    lecturer: str
    capacity: int
    issued_at: datetime
    correlation_id: str


@dataclass(frozen=True)
class SignUp:
    command_id: str
    signup_id: str
    course_id: str
    email: str
    name: str
    date_of_birth: date
    issued_at: datetime
    correlation_id: str
    # Added in SignUp v2: the command API seals e-mail and name under the student's data
    # key (schemas.personal) and sends email="" and name=""; it also computes the seat
    # key, which the processor can no longer compute without the address.
    seat_key: str | None = None
    key_id: str | None = None
    email_sealed: bytes | None = None
    name_sealed: bytes | None = None


Command = CreateCourse | SignUp


# ---------------------------------------------------------------- events
# Every event starts with the same metadata fields, in this order.


@dataclass(frozen=True)
class CourseCreated:
    event_id: str
    event_type: str
    occurred_at: datetime
    course_id: str
    causation_id: str
    correlation_id: str
    title: str
    lecturer: str
    capacity: int


@dataclass(frozen=True)
class CourseCreationRejected:
    """A CreateCourse for an id that already names a different course."""

    event_id: str
    event_type: str
    occurred_at: datetime
    course_id: str
    causation_id: str
    correlation_id: str
    reason: str


@dataclass(frozen=True)
class StudentSignedUp:
    event_id: str
    event_type: str
    occurred_at: datetime
    course_id: str
    causation_id: str
    correlation_id: str
    signup_id: str
    email: str
    name: str
    date_of_birth: date
    seats_taken: int
    # Added in StudentSignedUp v2 (default null), so v1 events still decode.
    capacity: int | None = None
    # Added in StudentSignedUp v3 (see SignUp): sealed personal data, copied from the
    # command, and the seat key, so the processor's tables can be rebuilt from the log.
    key_id: str | None = None
    email_sealed: bytes | None = None
    name_sealed: bytes | None = None
    seat_key: str | None = None


@dataclass(frozen=True)
class SignUpRejected:
    event_id: str
    event_type: str
    occurred_at: datetime
    course_id: str
    causation_id: str
    correlation_id: str
    signup_id: str
    email: str
    name: str
    reason: str
    # Added in SignUpRejected v2 (see SignUp).
    key_id: str | None = None
    email_sealed: bytes | None = None
    name_sealed: bytes | None = None
    seat_key: str | None = None


Event = CourseCreated | CourseCreationRejected | StudentSignedUp | SignUpRejected
Decision = StudentSignedUp | SignUpRejected

# The reasons a decision may give, as the schemas' docs list them. The dataclasses keep
# `reason: str`: a decoded record is whatever its writer put there, checked by no one.
RejectionReason = Literal["course_full", "course_not_found", "already_enrolled"]
REJECTION_REASONS: tuple[RejectionReason, ...] = get_args(RejectionReason)
CourseRejectionReason = Literal["course_exists"]

# A course id is a slug or a canonical (lower-case) UUID, which the slug pattern also
# matches. Anchored, because JSON Schema patterns (in the OpenAPI) match anywhere.
COURSE_ID_PATTERN = r"^[a-z0-9-]{1,64}$"
