"""The replay's reader of only the fields a view needs gives what the full codec gives."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from projections import fields
from projections.staged import stage
from schemas import codec
from schemas.messages import (
    CourseChanged,
    CourseCreated,
    Event,
    SignUp,
    SignUpRejected,
    StudentSignedUp,
    StudentWithdrew,
)
from tests.unit.test_schemas import VERSIONS, example_record, single_object, with_nulls

READ = [v for v in VERSIONS if v[0] in fields.WANTED]


def expected(data: bytes) -> tuple[Any, ...]:
    name, record = codec.decode_fields(data)
    return tuple(fields._raw(record[w]) for w in fields.WANTED[name])


@pytest.mark.parametrize("version", READ, ids=lambda v: f"{v[0]}.v{v[1]}")
def test_every_version_reads_as_the_codec_decodes_it(version: tuple[str, int, Any]) -> None:
    name, number, schema = version
    record = example_record(name, number, schema)
    for variant in (record, with_nulls(schema, record)):
        data = single_object(schema, variant)
        assert fields.read(data) == (name, expected(data))


@pytest.mark.parametrize("version", READ, ids=lambda v: f"{v[0]}.v{v[1]}")
def test_every_version_gets_a_generated_reader(version: tuple[str, int, Any]) -> None:
    # Not the slower fallback through the full codec.
    name, number, schema = version
    data = single_object(schema, example_record(name, number, schema))
    _, reader = fields._READERS[data[:codec.HEADER_SIZE]]
    assert reader is not None and reader.__name__ == "reader"


texts = st.text(max_size=300)
moments = st.datetimes(min_value=datetime(1970, 1, 1), max_value=datetime(2200, 1, 1),
                       timezones=st.just(UTC)).map(
    lambda d: d.replace(microsecond=d.microsecond // 1000 * 1000))
births = st.dates(min_value=date(1900, 1, 1), max_value=date(2100, 1, 1))
blobs = st.none() | st.binary(max_size=300)


@given(texts, texts, moments, births, st.integers(-2**31, 2**31 - 1), blobs, texts)
def test_any_signed_up_event_reads_as_the_codec_decodes_it(
        course: str, signup: str, at: datetime, dob: date, seats: int, sealed: bytes | None,
        text: str) -> None:
    event = StudentSignedUp(str(uuid.uuid4()), "StudentSignedUp", at, course, text, text,
                            signup, text, text, dob, seats, seats, None, sealed, sealed, text)
    data = codec.encode(event)
    days = (dob - date(1970, 1, 1)).days
    assert fields.read(data) == ("StudentSignedUp",
                                 (signup, course, event.event_id, expected(data)[3], days))
    assert fields.from_epoch_millis(expected(data)[3]) == at


@given(texts, texts, moments, texts)
def test_any_rejection_reads_as_the_codec_decodes_it(course: str, signup: str, at: datetime,
                                                     reason: str) -> None:
    event = SignUpRejected(str(uuid.uuid4()), "SignUpRejected", at, course, "c", "r", signup,
                           "", "", reason)
    data = codec.encode(event)
    assert fields.read(data) == ("SignUpRejected", expected(data))


def signed_up(course: str = "c-1") -> StudentSignedUp:
    return StudentSignedUp(str(uuid.uuid4()), "StudentSignedUp", datetime.now(UTC), course,
                           "c", "r", str(uuid.uuid4()), "", "", date(2000, 2, 29), 1, 30)


@given(st.integers(0, 200))
def test_a_truncated_record_is_unreadable(cut: int) -> None:
    data = codec.encode(signed_up())
    with pytest.raises(fields.Unreadable):
        fields.read(data[:min(cut, len(data) - 1)])


def test_trailing_bytes_and_unknown_schemas_are_unreadable() -> None:
    data = codec.encode(signed_up())
    with pytest.raises(fields.Unreadable, match="trailing"):
        fields.read(data + b"\x00")
    with pytest.raises(fields.Unreadable, match="unknown writer schema"):
        fields.read(data[:2] + b"\x00" * 8 + data[10:])
    with pytest.raises(fields.Unreadable, match="single-object"):
        fields.read(b"\x00\x01" + data[2:])
    command = SignUp(str(uuid.uuid4()), str(uuid.uuid4()), "c-1", "", "", date(2000, 1, 1),
                     datetime.now(UTC), "r")
    with pytest.raises(fields.Unreadable, match="not an event"):
        fields.read(codec.encode(command))


def test_a_long_varint_is_read_whole() -> None:
    at = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(milliseconds=123)
    event = SignUpRejected("e", "SignUpRejected", at, "c", "c", "r", "s", "", "", "x" * 5000)
    assert fields.read(codec.encode(event))[1] == ("s", "c", "e", expected(codec.encode(event))[3],
                                                   "x" * 5000)


def test_stage_keeps_the_first_decision_per_signup_and_the_first_course() -> None:
    first = signed_up()
    again = first  # a decision the processor repeated after a crash: same record
    course = CourseCreated("e1", "CourseCreated", datetime.now(UTC), "c-1", "c", "r", "T",
                           "L", 30)
    retitled = CourseCreated("e2", "CourseCreated", datetime.now(UTC), "c-1", "c", "r", "U",
                             "L", 30)
    events: list[Event] = [course, first, retitled, again]
    records: list[tuple[int, int, bytes, bytes | None]] = [
        (0, i, b"c-1", codec.encode(e)) for i, e in enumerate(events)]
    records.append((1, 7, b"k", None))
    records.append((1, 8, b"k", b"junk"))
    staged = stage(records)
    assert [c.title for c in staged.courses] == ["T"]
    assert [d[0] for d in staged.decisions] == [first.signup_id]
    assert staged.decisions[0][2] is None and staged.decisions[0][5] == \
        (date(2000, 2, 29) - date(1970, 1, 1)).days
    assert [(f.record.partition, f.record.offset) for f in staged.failures] == [(1, 7), (1, 8)]
    assert staged.next_offsets == {0: 4, 1: 9}


def test_stage_sends_only_a_terms_events_to_the_live_fold_in_log_order() -> None:
    # A term's events among sign-ups: the sign-ups stay on the fast path (COPY), and the
    # term's events alone are folded afterwards, as the live projector folds a batch.
    first, second = signed_up(), signed_up()
    leave = StudentWithdrew("w1", "StudentWithdrew", datetime.now(UTC), "c-1", "c", "r",
                            first.signup_id, "enrolled", 0, first.date_of_birth)
    change = CourseChanged("x1", "CourseChanged", datetime.now(UTC), "c-1", "c", "r", "T",
                           "L", 40, 2)
    events: list[Event] = [first, leave, second, change]
    staged = stage([(3, 10 + i, b"c-1", codec.encode(e)) for i, e in enumerate(events)])
    assert [d[0] for d in staged.decisions] == [first.signup_id, second.signup_id]
    assert staged.live is not None
    assert [r.offset for r in staged.live] == [11, 13]
    assert [codec.decode_fields(r.value)[1]["event_id"] for r in staged.live if r.value] == [
        "w1", "x1"]
    assert staged.next_offsets == {3: 14}
    assert stage([(0, 0, b"c-1", codec.encode(first))]).live is None
