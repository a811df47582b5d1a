"""The Avro schemas, their examples, the dataclasses and the single-object codec agree."""

from __future__ import annotations

import base64
import contextlib
import copy
import dataclasses
import json
import random
import re
from datetime import UTC, date, datetime
from io import BytesIO
from typing import Any, cast, get_args

import pytest
from fastavro import parse_schema, schemaless_reader, schemaless_writer
from fastavro.read import SchemaResolutionError
from fastavro.schema import to_parsing_canonical_form

from schemas import codec
from schemas.messages import (
    AVRO_NAMES,
    COURSE_ID_PATTERN,
    REJECTION_REASONS,
    Command,
    CourseChangeRejectionReason,
    CourseCreated,
    CourseRejectionReason,
    Event,
    RejectionReason,
    StudentSignedUp,
    WithdrawalRejectionReason,
    WithdrawnFrom,
)

Schema = dict[str, Any]

EXAMPLES_DIR = codec.AVRO_DIR.parent / "examples"
VERSIONS = codec.schema_versions()
LATEST = {name: schema for name, _, schema in VERSIONS}
COMMANDS = get_args(Command)
CLASSES = {cls.__name__: cls for cls in (*COMMANDS, *get_args(Event))}
NAMESPACES = {
    **{cls.__name__: "edu.coursesignup.commands" for cls in COMMANDS},
    **{cls.__name__: "edu.coursesignup.events" for cls in get_args(Event)},
}
PAIRS = [
    (old, new)
    for old, new in zip(VERSIONS, VERSIONS[1:], strict=False)
    if old[0] == new[0] and old[1] + 1 == new[1]
]


def _version_id(version: tuple[str, int, Schema]) -> str:
    return f"{version[0]}.v{version[1]}"


def _pair_id(pair: tuple[tuple[str, int, Schema], ...]) -> str:
    return "->".join(_version_id(v) for v in pair)


# ---------------------------------------------------------------- CRC-64-AVRO, from the spec

RABIN_EMPTY = 0xC15D213AA4D7A795


def _rabin_table() -> list[int]:
    table = []
    for i in range(256):
        fp = i
        for _ in range(8):
            fp = (fp >> 1) ^ (RABIN_EMPTY & -(fp & 1))
        table.append(fp)
    return table


RABIN_TABLE = _rabin_table()


def rabin_fingerprint(data: bytes) -> int:
    fp = RABIN_EMPTY
    for byte in data:
        fp = (fp >> 8) ^ RABIN_TABLE[(fp ^ byte) & 0xFF]
    return fp


# ---------------------------------------------------------------- examples and raw writing


def _from_json(avro_type: Any, value: Any) -> Any:
    logical = avro_type.get("logicalType") if isinstance(avro_type, dict) else None
    if logical == "timestamp-millis":
        return datetime.fromisoformat(value)
    if logical == "date":
        return date.fromisoformat(value)
    if isinstance(value, str) and isinstance(avro_type, list) and "bytes" in avro_type:
        return base64.b64decode(value)  # JSON has no bytes: the examples hold them in base64
    return value


def example_record(name: str, version: int, schema: Schema) -> dict[str, Any]:
    """The example of one schema version, with Python dates and datetimes."""
    raw = json.loads((EXAMPLES_DIR / f"{name}.v{version}.json").read_text(encoding="utf-8"))
    return {f["name"]: _from_json(f["type"], raw[f["name"]]) for f in schema["fields"]}


def example_message(name: str, version: int, schema: Schema) -> Any:
    return CLASSES[name](**codec.python_names(example_record(name, version, schema)))


def avro_body(schema: Schema, record: dict[str, Any]) -> bytes:
    out = BytesIO()
    schemaless_writer(out, parse_schema(schema), record)
    return out.getvalue()


def single_object(schema: Schema, record: dict[str, Any]) -> bytes:
    """Single-object encoding built here from the spec, independent of the codec."""
    canonical = to_parsing_canonical_form(schema).encode()
    fingerprint = rabin_fingerprint(canonical).to_bytes(8, "little")
    return b"\xc3\x01" + fingerprint + avro_body(schema, record)


def read_across(writer: Schema, reader: Schema, record: dict[str, Any]) -> dict[str, Any]:
    """Write `record` with `writer`, read it back through `reader` by schema resolution."""
    body = BytesIO(avro_body(writer, record))
    result = cast(
        dict[str, Any], schemaless_reader(body, parse_schema(writer), parse_schema(reader))
    )
    common = set(result) & set(record)
    if any(result[k] != record[k] for k in common):
        raise AssertionError(f"values changed on the way from {writer['name']}: {result}")
    return result


def with_nulls(schema: Schema, record: dict[str, Any]) -> dict[str, Any]:
    nullable = {
        f["name"] for f in schema["fields"] if isinstance(f["type"], list) and "null" in f["type"]
    }
    return {k: None if k in nullable else v for k, v in record.items()}


def check_compatible(
    old: Schema, old_record: dict[str, Any], new: Schema, new_record: dict[str, Any]
) -> None:
    """Raise unless each version reads what the other wrote, optional fields set or null."""
    for record in (old_record, with_nulls(old, old_record)):
        read_across(old, new, record)
    for record in (new_record, with_nulls(new, new_record)):
        read_across(new, old, record)


# ---------------------------------------------------------------- the files


@pytest.mark.parametrize("version", VERSIONS, ids=_version_id)
def test_schema_file_names_its_record_in_its_namespace(version: tuple[str, int, Schema]) -> None:
    name, _, schema = version
    assert schema["type"] == "record"
    assert schema["name"] == name
    assert schema["namespace"] == NAMESPACES[name]
    assert schema["doc"]
    assert all(f["doc"] for f in schema["fields"])


def test_every_message_type_has_versions_one_to_latest() -> None:
    numbers: dict[str, list[int]] = {}
    for name, number, _ in VERSIONS:
        numbers.setdefault(name, []).append(number)
    assert set(numbers) == set(CLASSES)
    assert all(found == list(range(1, len(found) + 1)) for found in numbers.values())


def test_every_schema_version_has_exactly_one_example() -> None:
    examples = sorted(p.name for p in EXAMPLES_DIR.glob("*.json"))
    assert examples == sorted(f"{name}.v{number}.json" for name, number, _ in VERSIONS)


@pytest.mark.parametrize("version", VERSIONS, ids=_version_id)
def test_example_has_exactly_the_schema_fields(version: tuple[str, int, Schema]) -> None:
    name, number, schema = version
    raw = json.loads((EXAMPLES_DIR / f"{name}.v{number}.json").read_text(encoding="utf-8"))
    assert list(raw) == [f["name"] for f in schema["fields"]]


def test_student_signed_up_v2_adds_only_an_optional_capacity() -> None:
    (v1,) = [s for n, v, s in VERSIONS if (n, v) == ("StudentSignedUp", 1)]
    (v2,) = [s for n, v, s in VERSIONS if (n, v) == ("StudentSignedUp", 2)]
    assert v2["fields"][:-1] == v1["fields"]
    assert v2["fields"][-1] | {"doc": ""} == {
        "name": "capacity",
        "type": ["null", "int"],
        "default": None,
        "doc": "",
    }


# ---------------------------------------------------------------- dataclasses mirror the schemas


def _annotation(avro_type: Any) -> str:
    if isinstance(avro_type, list):
        return " | ".join([_annotation(t) for t in avro_type if t != "null"] + ["None"])
    if isinstance(avro_type, dict):
        return {"timestamp-millis": "datetime", "date": "date"}[avro_type["logicalType"]]
    return {"string": "str", "int": "int", "bytes": "bytes"}[avro_type]


@pytest.mark.parametrize("name", sorted(CLASSES))
def test_dataclass_fields_equal_latest_schema_fields(name: str) -> None:
    schema_fields = LATEST[name]["fields"]
    data_fields = dataclasses.fields(CLASSES[name])
    assert [AVRO_NAMES.get(f.name, f.name) for f in data_fields] == [
        f["name"] for f in schema_fields
    ]
    # messages.py uses postponed annotations, so each type is its source text.
    assert [f.type for f in data_fields] == [_annotation(f["type"]) for f in schema_fields]
    assert [f.default for f in data_fields] == [
        f.get("default", dataclasses.MISSING) for f in schema_fields
    ]


# ---------------------------------------------------------------- fingerprints


def test_own_rabin_matches_the_avro_test_vector() -> None:
    # From Avro's own schema-tests: the fingerprint64 of "null" is 7195948357588979594.
    assert rabin_fingerprint(b'"null"') == 7195948357588979594


@pytest.mark.parametrize("version", VERSIONS, ids=_version_id)
def test_fingerprint_equals_the_spec_algorithm(version: tuple[str, int, Schema]) -> None:
    schema = version[2]
    canonical = to_parsing_canonical_form(schema)
    expected = rabin_fingerprint(canonical.encode()).to_bytes(8, "little")
    assert codec.schema_fingerprint(schema) == expected


@pytest.mark.parametrize("version", VERSIONS, ids=_version_id)
def test_canonical_form_keeps_only_what_the_spec_keeps(version: tuple[str, int, Schema]) -> None:
    name, _, schema = version
    canonical = to_parsing_canonical_form(schema)
    assert canonical.startswith(f'{{"name":"{NAMESPACES[name]}.{name}","type":"record"')
    assert not any(word in canonical for word in ('"doc"', "logicalType", "default", " "))


@pytest.mark.parametrize("name", sorted(CLASSES))
def test_encode_writes_marker_and_latest_fingerprint(name: str) -> None:
    number = max(v for n, v, _ in VERSIONS if n == name)
    data = codec.encode(example_message(name, number, LATEST[name]))
    canonical = to_parsing_canonical_form(LATEST[name]).encode()
    assert data[:2] == b"\xc3\x01"
    assert data[2:10] == rabin_fingerprint(canonical).to_bytes(8, "little")


# ---------------------------------------------------------------- round trips


@pytest.mark.parametrize("version", VERSIONS, ids=_version_id)
def test_example_round_trips(version: tuple[str, int, Schema]) -> None:
    message = example_message(*version)
    assert codec.decode(codec.encode(message)) == message


@pytest.mark.parametrize("version", VERSIONS, ids=_version_id)
def test_example_written_with_its_own_version_decodes(version: tuple[str, int, Schema]) -> None:
    name, number, schema = version
    data = single_object(schema, example_record(name, number, schema))
    assert codec.message_type(data) == name
    assert codec.decode(data) == example_message(name, number, schema)


@pytest.mark.parametrize("version", VERSIONS, ids=_version_id)
def test_fields_of_any_version_are_those_of_the_latest_dataclass(
    version: tuple[str, int, Schema]
) -> None:
    name, number, schema = version
    data = single_object(schema, example_record(name, number, schema))
    decoded_name, fields = codec.decode_fields(data)
    assert decoded_name == name
    assert codec.python_names(fields) == dataclasses.asdict(codec.decode(data))


def test_v1_student_signed_up_decodes_with_capacity_none() -> None:
    (v1,) = [s for n, v, s in VERSIONS if (n, v) == ("StudentSignedUp", 1)]
    record = example_record("StudentSignedUp", 1, v1)
    message = codec.decode(single_object(v1, record))
    assert isinstance(message, StudentSignedUp)
    assert message.capacity is None
    assert message == StudentSignedUp(**record)


def test_decoded_times_are_utc_aware_and_dates_are_dates() -> None:
    message = example_message("StudentSignedUp", 3, LATEST["StudentSignedUp"])
    decoded = codec.decode(codec.encode(message))
    assert isinstance(decoded, StudentSignedUp)
    assert decoded.occurred_at.tzinfo == UTC
    assert type(decoded.date_of_birth) is date


def test_encode_refuses_a_naive_datetime() -> None:
    message = example_message("StudentSignedUp", 3, LATEST["StudentSignedUp"])
    naive = dataclasses.replace(message, occurred_at=message.occurred_at.replace(tzinfo=None))
    with pytest.raises(ValueError, match="occurred_at"):
        codec.encode(naive)


def test_encode_refuses_a_non_message() -> None:
    with pytest.raises(TypeError):
        codec.encode(object())  # type: ignore[arg-type]


# ---------------------------------------------------------------- evolution


@pytest.mark.parametrize("pair", PAIRS, ids=_pair_id)
def test_each_version_is_compatible_both_ways_with_the_one_before(
    pair: tuple[tuple[str, int, Schema], tuple[str, int, Schema]],
) -> None:
    (name, old_number, old), (_, new_number, new) = pair
    old_record = example_record(name, old_number, old)
    new_record = example_record(name, new_number, new)
    check_compatible(old, old_record, new, new_record)


def test_there_is_a_pair_to_check() -> None:
    assert ("StudentSignedUp", 1) in [(old[0], old[1]) for old, _ in PAIRS]


def _add_required_field(schema: Schema, record: dict[str, Any]) -> None:
    schema["fields"].append({"name": "room", "type": "string"})
    record["room"] = "A1"


def _drop_required_field(schema: Schema, record: dict[str, Any]) -> None:
    schema["fields"] = [f for f in schema["fields"] if f["name"] != "seats_taken"]
    del record["seats_taken"]


def _rename_field(schema: Schema, record: dict[str, Any]) -> None:
    (field,) = [f for f in schema["fields"] if f["name"] == "email"]
    field["name"] = "e_mail"
    record["e_mail"] = record.pop("email")


def _change_field_type(schema: Schema, record: dict[str, Any]) -> None:
    (field,) = [f for f in schema["fields"] if f["name"] == "seats_taken"]
    field["type"] = "string"
    record["seats_taken"] = str(record["seats_taken"])


def _make_optional_field_required(schema: Schema, record: dict[str, Any]) -> None:
    (field,) = [f for f in schema["fields"] if f["name"] == "capacity"]
    field["type"] = "int"
    del field["default"]


@pytest.mark.parametrize(
    "breaking_change",
    [
        _add_required_field,
        _drop_required_field,
        _rename_field,
        _change_field_type,
        _make_optional_field_required,
    ],
)
def test_compatibility_check_catches_a_breaking_change(breaking_change: Any) -> None:
    old = LATEST["StudentSignedUp"]
    old_record = example_record("StudentSignedUp", 3, old)
    new, new_record = copy.deepcopy(old), dict(old_record)
    breaking_change(new, new_record)
    with pytest.raises(SchemaResolutionError):
        check_compatible(old, old_record, new, new_record)


# ---------------------------------------------------------------- bad input


def _valid() -> bytes:
    return codec.encode(example_message("StudentSignedUp", 3, LATEST["StudentSignedUp"]))


def test_unknown_fingerprint_raises_naming_it() -> None:
    data = b"\xc3\x01" + bytes.fromhex("0123456789abcdef") + _valid()[10:]
    for read in (codec.decode, codec.message_type):
        with pytest.raises(codec.UnknownSchemaError, match="0123456789abcdef") as caught:
            read(data)
        assert caught.value.fingerprint == bytes.fromhex("0123456789abcdef")


@pytest.mark.parametrize(
    "data",
    [b"", b"\xc3", b"\xc3\x01\x00", b"not an avro message at all", b"\x00\x01" + _valid()[2:]],
    ids=["empty", "half-marker", "short-header", "text", "bad-marker"],
)
def test_garbage_raises_decode_error(data: bytes) -> None:
    for read in (codec.decode, codec.message_type):
        with pytest.raises(codec.DecodeError):
            read(data)


def test_every_truncation_raises_decode_error() -> None:
    valid = _valid()
    for size in range(len(valid)):
        with pytest.raises(codec.DecodeError):
            codec.decode(valid[:size])


def test_trailing_bytes_raise_decode_error() -> None:
    with pytest.raises(codec.DecodeError, match="trailing"):
        codec.decode(_valid() + b"\x00")


def test_random_bodies_raise_only_decode_error() -> None:
    header = _valid()[:10]
    rng = random.Random(20261122)
    for _ in range(300):
        body = rng.randbytes(rng.randrange(0, 120))
        with contextlib.suppress(codec.DecodeError):
            codec.decode(header + body)


def _reasons_in_doc(name: str, version: int) -> set[str]:
    (field,) = (f for f in _version(name, version)["fields"] if f["name"] == "reason")
    return set(re.findall(r"[a-z]+(?:_[a-z]+)+", field["doc"]))


def _version(name: str, version: int) -> Schema:
    return next(s for n, v, s in VERSIONS if (n, v) == (name, version))


@pytest.mark.parametrize("version", [v for n, v, _ in VERSIONS if n == "SignUpRejected"])
def test_the_rejection_reasons_are_the_ones_the_schema_documents(version: int) -> None:
    assert _reasons_in_doc("SignUpRejected", version) == set(get_args(RejectionReason))
    assert get_args(RejectionReason) == REJECTION_REASONS


@pytest.mark.parametrize(("name", "literal"), [
    ("SignUpRejected", RejectionReason),
    ("CourseCreationRejected", CourseRejectionReason),
    ("WithdrawalRejected", WithdrawalRejectionReason),
    ("CourseChangeRejected", CourseChangeRejectionReason),
])
def test_every_example_reason_is_in_its_vocabulary(name: str, literal: object) -> None:
    examples = [json.loads((EXAMPLES_DIR / f"{n}.v{v}.json").read_text(encoding="utf-8"))
                for n, v, _ in VERSIONS if n == name]
    assert examples and {e["reason"] for e in examples} <= set(get_args(literal))


@pytest.mark.parametrize(("name", "literal"), [
    ("WithdrawalRejected", WithdrawalRejectionReason),
    ("CourseChangeRejected", CourseChangeRejectionReason),
    ("StudentWithdrew", WithdrawnFrom),
])
def test_the_new_vocabularies_are_the_ones_the_schema_documents(name: str, literal: object) -> None:
    (field,) = (f for f in LATEST[name]["fields"] if f["name"] in ("reason", "from"))
    assert set(re.findall(r"[a-z]+(?:_[a-z]+)*(?= \(|,| or|$)", field["doc"])) >= set(
        get_args(literal))


def test_a_course_created_before_waiting_lists_decodes_with_none_waiting() -> None:
    schema = _version("CourseCreated", 1)
    data = single_object(schema, example_record("CourseCreated", 1, schema))
    decoded = codec.decode(data)
    assert isinstance(decoded, CourseCreated) and decoded.waitlist_capacity == 0


def test_student_withdrew_writes_its_from_field_under_the_avro_name() -> None:
    schema = LATEST["StudentWithdrew"]
    message = example_message("StudentWithdrew", 1, schema)
    assert message.from_ == "enrolled"
    name, fields = codec.decode_fields(codec.encode(message))
    assert (name, fields["from"]) == ("StudentWithdrew", "enrolled")


@pytest.mark.parametrize("version", VERSIONS, ids=_version_id)
def test_the_documented_course_id_slug_is_the_pattern_every_service_checks(
        version: tuple[str, int, Schema]) -> None:
    (field,) = (f for f in version[2]["fields"] if f["name"] == "course_id")
    slug = COURSE_ID_PATTERN.removeprefix("^").removesuffix("$")
    assert f"a slug {slug} or UUID text" in field["doc"]


def test_a_decode_error_never_quotes_the_bytes_it_read() -> None:
    # A clear address (an event from before sealing) with one byte that is not UTF-8:
    # the error's text goes to logs and dead-letter headers, so it names the failure only.
    event = dataclasses.replace(example_message("StudentSignedUp", 3, LATEST["StudentSignedUp"]),
                                email="ann.secret@example.org")
    data = codec.encode(event).replace(b"secret@", b"secret\xff")
    with pytest.raises(codec.DecodeError) as caught:
        codec.decode(data)
    assert "ann" not in str(caught.value) and "secret" not in str(caught.value)
