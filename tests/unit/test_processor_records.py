"""The processor's pure parts: reading a command record, headers, table values, continuity."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime

import pytest

from course_processor.deciding.commands import Unprocessable, read_command
from course_processor.deciding.domain import Course
from course_processor.deciding.values import (
    SignupOutcome,
    course_from_value,
    course_to_value,
    outcome_of,
)
from course_processor.deciding.wire import event_headers, outcome
from course_processor.faust_eos.continuity import Continuity
from schemas.codec import encode
from schemas.messages import (
    CourseCreated,
    CourseCreationRejected,
    CreateCourse,
    SignUp,
    SignUpRejected,
    StudentSignedUp,
)

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def signup(**changes: object) -> SignUp:
    fields: dict[str, object] = {
        "command_id": str(uuid.uuid4()), "signup_id": str(uuid.uuid4()),
        "course_id": "intro-python", "email": "Ann@Example.org", "name": "Ann",
        "date_of_birth": date(2000, 5, 17), "issued_at": NOW,
        "correlation_id": str(uuid.uuid4()),
    }
    return SignUp(**{**fields, **changes})  # type: ignore[arg-type]


def metadata(event_type: str) -> dict[str, object]:
    return {"event_id": str(uuid.uuid4()), "event_type": event_type, "occurred_at": NOW,
            "course_id": "intro-python", "causation_id": str(uuid.uuid4()),
            "correlation_id": "corr-1"}


# ------------------------------------------------------------ read_command


def test_a_valid_command_keyed_by_its_course_is_read() -> None:
    cmd = signup()
    assert read_command(b"intro-python", encode(cmd)) == cmd


@pytest.mark.parametrize(("value", "reason"), [
    (None, "undecodable"),
    (b"", "undecodable"),
    (b"{\"email\": \"ann@example.org\"}", "undecodable"),
    (b"\xc3\x01" + bytes(8) + b"body", "unknown_schema"),
])
def test_unreadable_bytes_are_unprocessable(value: bytes | None, reason: str) -> None:
    with pytest.raises(Unprocessable) as exc:
        read_command(b"intro-python", value)
    assert exc.value.reason == reason


def test_an_event_on_the_command_topic_is_unprocessable() -> None:
    event = CourseCreated(**metadata("CourseCreated"), title="T", lecturer="L",  # type: ignore[arg-type]
                          capacity=3)
    with pytest.raises(Unprocessable) as exc:
        read_command(b"intro-python", encode(event))
    assert exc.value.reason == "not_a_command"


def test_an_invalid_command_names_its_problems() -> None:
    with pytest.raises(Unprocessable) as exc:
        read_command(b"intro-python", encode(signup(name=" ", email="")))
    assert exc.value.reason == "invalid"
    assert "name" in exc.value.detail and "email" in exc.value.detail


def test_a_command_keyed_by_another_course_is_unprocessable() -> None:
    # The tables are co-partitioned by key: deciding it would read another
    # partition's state.
    with pytest.raises(Unprocessable) as exc:
        read_command(b"other-course", encode(signup()))
    assert exc.value.reason == "key_mismatch"


def test_an_unprocessable_record_never_carries_personal_data_in_its_reason() -> None:
    cmd = signup(name=" ", email="secret.person@example.org")
    with pytest.raises(Unprocessable) as exc:
        read_command(b"other-course", encode(cmd))
    assert "secret.person" not in str(exc.value)


# ------------------------------------------------------------ headers


def test_event_headers_name_the_event_and_its_request() -> None:
    event = SignUpRejected(**metadata("SignUpRejected"), signup_id="s", email="a@b.c",  # type: ignore[arg-type]
                           name="A", reason="course_full")
    headers = dict(event_headers(event, "host:42", 7))
    assert headers == {"correlation_id": b"corr-1", "event_type": b"SignUpRejected",
                       "event_id": event.event_id.encode(), "processor_id": b"host:42",
                       "generation": b"7"}
    assert b"a@b.c" not in b"".join(headers.values())
    # A command its caller traces (the command API's `traced` header) gives traced events.
    assert dict(event_headers(event, "host:42", 7, traced=True))["traced"] == b"1"


# ------------------------------------------------------------ outcome and table values


def test_outcome_labels_each_kind_of_event() -> None:
    accepted = StudentSignedUp(**metadata("StudentSignedUp"), signup_id="s",  # type: ignore[arg-type]
                               email="a@b.c", name="A", date_of_birth=date(2000, 1, 1),
                               seats_taken=1, capacity=3)
    rejected = SignUpRejected(**metadata("SignUpRejected"), signup_id="s",  # type: ignore[arg-type]
                              email="a@b.c", name="A", reason="already_enrolled")
    created = CourseCreated(**metadata("CourseCreated"), title="T", lecturer="L",  # type: ignore[arg-type]
                            capacity=3)
    refused = CourseCreationRejected(**metadata("CourseCreationRejected"),  # type: ignore[arg-type]
                                     reason="course_exists")
    assert [outcome(e) for e in (accepted, rejected, created, refused)] == [
        ("accepted", ""), ("rejected", "already_enrolled"), ("course_created", ""),
        ("course_rejected", "course_exists")]


def test_a_course_round_trips_through_its_table_value() -> None:
    course = Course("intro-python", "Intro", "Ada", capacity=30, seats_taken=7)
    assert course_from_value(course_to_value(course)) == course
    assert course_from_value(None) is None


def test_create_course_commands_are_read_too() -> None:
    cmd = CreateCourse(str(uuid.uuid4()), "intro-python", "Intro", "Ada", 30, NOW, "c")
    assert read_command(b"intro-python", encode(cmd)) == cmd


# ------------------------------------------------------------ continuity


def test_continuity_accepts_consecutive_offsets_and_repeats() -> None:
    c = Continuity()
    assert [c.skipped(1, 0, o) for o in (10, 11, 12, 5, 6, 7)] == [False] * 6


def test_continuity_notices_a_hole_within_a_partition() -> None:
    c = Continuity()
    assert not c.skipped(1, 0, 10)
    assert not c.skipped(1, 1, 500)  # other partitions are independent
    assert c.skipped(1, 0, 12)


def test_continuity_starts_afresh_after_a_rebalance() -> None:
    c = Continuity()
    assert not c.skipped(1, 0, 10)
    assert not c.skipped(2, 0, 40)  # a new generation may start anywhere


def test_an_outcome_round_trips_through_its_compact_value() -> None:
    accepted = StudentSignedUp(**metadata("StudentSignedUp"), signup_id="s", email="a@b.c",  # type: ignore[arg-type]
                               name="Ann", date_of_birth=date(2000, 1, 1), seats_taken=17)
    rejected = SignUpRejected(**metadata("SignUpRejected"), signup_id="s", email="a@b.c",  # type: ignore[arg-type]
                              name="Ann", reason="course_full")
    for event, value in ((accepted, "accepted 17"), (rejected, "rejected course_full")):
        found = outcome_of(event)
        assert found is not None and found.encode() == value
        assert SignupOutcome.decode(value) == found
    with pytest.raises(ValueError):
        SignupOutcome.decode("maybe 3")
