"""Reading a command from a course-commands record: pure, no I/O."""

from __future__ import annotations

from course_processor.deciding.domain import validate
from schemas.codec import DecodeError, UnknownSchemaError, decode
from schemas.messages import ChangeCourse, Command, CreateCourse, SignUp, Withdraw


class Unprocessable(Exception):
    """A record that can never be decided: it goes to the dead-letter topic."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def read_command(key: bytes | None, value: bytes | None) -> Command:
    """The command in a course-commands record, or Unprocessable saying why not."""
    if value is None:
        raise Unprocessable("undecodable", "the record has no value")
    try:
        message = decode(value)
    except UnknownSchemaError as exc:
        raise Unprocessable("unknown_schema", str(exc)) from exc
    except DecodeError as exc:
        raise Unprocessable("undecodable", str(exc)) from exc
    if not isinstance(message, CreateCourse | SignUp | Withdraw | ChangeCourse):
        raise Unprocessable("not_a_command", f"{type(message).__name__} is an event")
    problems = validate(message)
    if problems:
        raise Unprocessable("invalid", "; ".join(problems))
    if key != message.course_id.encode():
        # The tables are co-partitioned by key: a command keyed otherwise could be
        # decided against another partition's (absent) state.
        raise Unprocessable("key_mismatch", "the record key is not the command's course_id")
    return message
