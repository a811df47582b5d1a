"""Avro single-object encoding of every command and event in `schemas.messages`.

Wire format (Avro specification, "Single object encoding"): the marker `C3 01`, the
8-byte little-endian CRC-64-AVRO fingerprint of the writer schema's Parsing
Canonical Form, then the Avro binary body. `encode` always writes the latest
version of a message's schema; `decode` reads any version ever kept under
`schemas/avro/` and resolves it into the latest one.

Every `.avsc` file is parsed once, when this module is imported, so a broken
schema stops a service at start-up instead of at its first message.
"""

from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass, fields
from datetime import datetime
from io import BytesIO
from pathlib import Path
from typing import Any, TypeAlias, cast, get_args

from fastavro import parse_schema, schemaless_reader, schemaless_writer
from fastavro.schema import fingerprint, to_parsing_canonical_form

from schemas.messages import AVRO_NAMES, Command, Event

Message: TypeAlias = Command | Event
Schema: TypeAlias = dict[str, Any]

MARKER = b"\xc3\x01"
FINGERPRINT_SIZE = 8
HEADER_SIZE = len(MARKER) + FINGERPRINT_SIZE
AVRO_DIR = Path(__file__).with_name("avro")
_FILE_NAME = re.compile(r"(?P<name>[A-Za-z]\w*)\.v(?P<version>[1-9]\d*)\.avsc")


class DecodeError(ValueError):
    """The bytes are not a message this codec can read."""


class UnknownSchemaError(DecodeError):
    """The writer schema's fingerprint names no schema version kept in `schemas/avro/`."""

    def __init__(self, fingerprint: bytes) -> None:
        super().__init__(
            f"unknown writer schema: CRC-64-AVRO fingerprint {fingerprint.hex()} "
            f"matches no schema in {AVRO_DIR}"
        )
        self.fingerprint = fingerprint


@dataclass(frozen=True)
class _Version:
    name: str
    version: int
    schema: Schema
    parsed: Schema
    fingerprint: bytes


@dataclass(frozen=True, slots=True)
class _Writer:
    header: bytes
    parsed: Schema
    field_names: tuple[str, ...]
    timestamp_fields: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class _Reader:
    name: str
    writer: Schema
    # None when the writer is the latest version: no resolution needed.
    reader: Schema | None


def schema_fingerprint(schema: Schema) -> bytes:
    """The 8 fingerprint bytes of a schema exactly as single-object encoding writes them."""
    # fastavro returns the hex of the little-endian bytes, the order the spec puts on the wire.
    return bytes.fromhex(fingerprint(to_parsing_canonical_form(schema), "CRC-64-AVRO"))


def _load_version(path: Path) -> _Version:
    match = _FILE_NAME.fullmatch(path.name)
    if match is None:
        raise RuntimeError(f"{path}: schema files are named <Record>.v<N>.avsc")
    schema = json.loads(path.read_text(encoding="utf-8"))
    if schema.get("name") != match["name"]:
        raise RuntimeError(f"{path}: record name {schema.get('name')!r} differs from file name")
    return _Version(
        name=match["name"],
        version=int(match["version"]),
        schema=schema,
        # parse_schema returns a new dict and leaves `schema` as in the file.
        parsed=cast(Schema, parse_schema(schema)),
        fingerprint=schema_fingerprint(schema),
    )


def _load_versions() -> list[_Version]:
    versions = sorted(
        (_load_version(path) for path in AVRO_DIR.glob("*.avsc")),
        key=lambda v: (v.name, v.version),
    )
    seen: dict[bytes, _Version] = {}
    for v in versions:
        twin = seen.setdefault(v.fingerprint, v)
        if twin is not v:
            # Same canonical form (docs and defaults are not part of it): a reader could
            # not tell which version wrote a record.
            raise RuntimeError(
                f"{v.name} v{v.version} has the same writer schema as v{twin.version}"
            )
    return versions


def _latest(versions: list[_Version]) -> dict[str, _Version]:
    # Sorted by version, so the last one of each name wins.
    return {v.name: v for v in versions}


def _message_classes() -> dict[str, type[Message]]:
    return {cls.__name__: cls for cls in (*get_args(Command), *get_args(Event))}


def _timestamp_fields(schema: Schema) -> tuple[str, ...]:
    return tuple(
        f["name"]
        for f in schema["fields"]
        if isinstance(f["type"], dict) and f["type"].get("logicalType") == "timestamp-millis"
    )


def _writers(latest: dict[str, _Version], classes: dict[str, type[Message]]) -> dict[type, _Writer]:
    return {
        classes[name]: _Writer(
            header=MARKER + v.fingerprint,
            parsed=v.parsed,
            field_names=tuple(f.name for f in fields(classes[name])),
            timestamp_fields=_timestamp_fields(v.schema),
        )
        for name, v in latest.items()
    }


def _readers(versions: list[_Version], latest: dict[str, _Version]) -> dict[bytes, _Reader]:
    return {
        v.fingerprint: _Reader(
            name=v.name,
            writer=v.parsed,
            reader=None if v is latest[v.name] else latest[v.name].parsed,
        )
        for v in versions
    }


def _check_coverage(latest: dict[str, _Version], classes: dict[str, type[Message]]) -> None:
    if set(latest) != set(classes):
        raise RuntimeError(
            f"schemas without a dataclass: {sorted(set(latest) - set(classes))}, "
            f"dataclasses without a schema: {sorted(set(classes) - set(latest))}"
        )


_VERSIONS = _load_versions()
_LATEST = _latest(_VERSIONS)
_CLASSES = _message_classes()
_check_coverage(_LATEST, _CLASSES)
_WRITERS = _writers(_LATEST, _CLASSES)
_READERS = _readers(_VERSIONS, _LATEST)


def encode(message: Message) -> bytes:
    """Single-object encoding of `message` with the latest schema of its type."""
    writer = _WRITERS.get(type(message))
    if writer is None:
        raise TypeError(f"{type(message).__name__} is not a message type of schemas.messages")
    record = {AVRO_NAMES.get(name, name): getattr(message, name) for name in writer.field_names}
    for name in writer.timestamp_fields:
        _require_aware(name, record[name])
    out = BytesIO()
    out.write(writer.header)
    schemaless_writer(out, writer.parsed, record)
    return out.getvalue()


def _require_aware(name: str, value: datetime) -> None:
    # fastavro would take a naive datetime as UTC, but the decoded aware datetime would
    # then never compare equal to the original: refuse it where the mistake is made.
    if value.tzinfo is None:
        raise ValueError(f"{name} must be a timezone-aware datetime, got naive {value}")


def decode(data: bytes) -> Message:
    """The message in `data`, written with any kept version, as the latest dataclass."""
    name, record = decode_fields(data)
    return _CLASSES[name](**python_names(record))


def python_names(record: dict[str, Any]) -> dict[str, Any]:
    """`record` with each Avro field name that is a Python keyword as its dataclass name."""
    renamed = {avro: python for python, avro in AVRO_NAMES.items()}
    return {renamed.get(name, name): value for name, value in record.items()}


def decode_fields(data: bytes) -> tuple[str, dict[str, Any]]:
    """The record name and the fields of the message in `data`, resolved into the latest
    schema of that name, without building its dataclass (for readers that need a few
    fields of many records: the dataclass costs a quarter of the decoding)."""
    reader = _reader_for(data)
    body = BytesIO(data)
    body.seek(HEADER_SIZE)
    try:
        record = cast(dict[str, Any], schemaless_reader(body, reader.writer, reader.reader))
    # fastavro signals a malformed body with EOFError, IndexError, ValueError and more;
    # whatever it raises, the bytes are not a readable message.
    except Exception as exc:
        # The type only: a decoder's message may quote the bytes it read (a
        # UnicodeDecodeError's repr holds the whole string), and this text is logged
        # and kept in dead letters.
        raise DecodeError(f"unreadable {reader.name} body: {type(exc).__name__}") from exc
    if body.tell() != len(data):
        raise DecodeError(f"{len(data) - body.tell()} trailing bytes after a {reader.name} body")
    return reader.name, record


def message_type(data: bytes) -> str:
    """The record's short name (e.g. "SignUp"), from the header alone."""
    return _reader_for(data).name


def _reader_for(data: bytes) -> _Reader:
    if len(data) < HEADER_SIZE:
        raise DecodeError(f"{len(data)} bytes is too short for a message header ({HEADER_SIZE})")
    if data[:2] != MARKER:
        raise DecodeError(f"marker {bytes(data[:2]).hex()} is not single-object encoding (c301)")
    fp = bytes(data[2:HEADER_SIZE])
    reader = _READERS.get(fp)
    if reader is None:
        raise UnknownSchemaError(fp)
    return reader


def schema_versions() -> list[tuple[str, int, Schema]]:
    """Every kept schema as (record name, version, schema as in its file), oldest first."""
    return [(v.name, v.version, copy.deepcopy(v.schema)) for v in _VERSIONS]
