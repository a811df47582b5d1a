"""Only the fields a view needs, read straight from an event's bytes: pure, no I/O.

A replay reads every event ever written, and decoding whole records (`schemas.codec`)
was most of its time: every string, sealed e-mail and name becomes a Python object, and
every timestamp a datetime, to be thrown away. Here each writer schema version kept in
`schemas/avro/` gets a reader of its own, generated once from the schema: it steps over
the fields no view needs (a length and a jump for a string) and returns the others as a
tuple, timestamps as epoch milliseconds and dates as epoch days (PostgreSQL converts
them). A field a writer version lacks takes its default from the latest version, as
Avro's schema resolution would give it.

A schema with a type the generator does not know (anything but string, bytes, int,
long, a logical type on int/long, and a union of null and one of those) is read with
`schemas.codec.decode_fields` instead: slower, same answer.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime
from typing import Any, get_args

from schemas import codec
from schemas.messages import Event

# The fields each view reads, per event type, in the order `read` returns them.
WANTED: dict[str, tuple[str, ...]] = {
    "CourseCreated": ("course_id", "title", "lecturer", "capacity", "waitlist_capacity"),
    "StudentSignedUp": ("signup_id", "course_id", "event_id", "occurred_at", "date_of_birth"),
    "SignUpRejected": ("signup_id", "course_id", "event_id", "occurred_at", "reason"),
}

_EVENTS = frozenset(cls.__name__ for cls in get_args(Event))
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_EPOCH_DAY = date(1970, 1, 1).toordinal()

Reader = Callable[[bytes], tuple[Any, ...]]


class Unreadable(Exception):
    """The bytes are not a readable record of a known writer schema."""


def read(data: bytes) -> tuple[str, tuple[Any, ...] | None]:
    """(record name, its wanted fields), with None for a record no view reads (such as
    CourseCreationRejected). Raises `Unreadable` for anything that is not a known record."""
    # One slice holds the marker and the fingerprint: one lookup per record.
    entry = _READERS.get(data[:codec.HEADER_SIZE])
    if entry is None:
        if len(data) < codec.HEADER_SIZE or data[:2] != codec.MARKER:
            raise Unreadable("not single-object encoding")
        raise Unreadable(f"unknown writer schema {bytes(data[2:codec.HEADER_SIZE]).hex()}")
    name, reader = entry
    if reader is None:
        if name not in _EVENTS:  # a command written to the wrong topic
            raise Unreadable(f"{name} is not an event")
        return name, None
    try:
        return name, reader(data)
    except Unreadable:
        raise
    except Exception as exc:  # IndexError, UnicodeDecodeError, ...: malformed bytes
        raise Unreadable(f"unreadable {name} body: {exc!r}") from exc


# ------------------------------------------------------------------ the generated readers


def _long(b: bytes, pos: int) -> tuple[int, int]:
    """Avro's zig-zag varint at `pos`: (value, position after it)."""
    byte = b[pos]
    if byte < 0x80:  # one byte: every length below 64 and most small ints
        return (byte >> 1) ^ -(byte & 1), pos + 1
    n = byte & 0x7F
    shift = 7
    pos += 1
    while True:
        byte = b[pos]
        pos += 1
        n |= (byte & 0x7F) << shift
        if byte < 0x80:
            return (n >> 1) ^ -(n & 1), pos
        shift += 7
        if shift > 63:
            raise Unreadable("varint longer than 10 bytes")


_SIMPLE = {"string", "bytes", "int", "long"}


def _base(avro_type: Any) -> str | None:
    """The primitive a field's type reads as (logical types as their raw int), or None."""
    if isinstance(avro_type, str):
        return avro_type if avro_type in _SIMPLE else None
    if isinstance(avro_type, dict) and avro_type.get("type") in ("int", "long"):
        return str(avro_type["type"])
    return None


def _varint(target: str, indent: str) -> list[str]:
    """Code reading a zig-zag varint at `pos` into `target`. One and two bytes (every
    length below 8,192, every union branch, a small int) are read inline: a call per
    field would cost more than the rest of the reading; longer ones (timestamps) call
    `_long`."""
    i = indent
    return [f"{i}c = b[pos]",
            f"{i}if c < 128:",
            f"{i}    {target} = (c >> 1) ^ -(c & 1)",
            f"{i}    pos += 1",
            f"{i}elif b[pos + 1] < 128:",
            f"{i}    c = (c & 127) | (b[pos + 1] << 7)",
            f"{i}    {target} = (c >> 1) ^ -(c & 1)",
            f"{i}    pos += 2",
            f"{i}else:",
            f"{i}    {target}, pos = _long(b, pos)"]


def _lines(kind: str, target: str | None, indent: str) -> list[str]:
    """Code reading one value of `kind` at `pos` into `target` (None: step over it)."""
    i = indent
    if kind in ("int", "long"):
        return _varint(target or "_", i)
    out = [*_varint("n", i), f"{i}if n < 0:",
           f"{i}    raise Unreadable(f'length {{n}} is negative')"]
    if target is not None:
        value = "b[pos:pos + n].decode()" if kind == "string" else "bytes(b[pos:pos + n])"
        out.append(f"{i}{target} = {value}")
    # Past the end, a slice is short rather than an error: the check of the final
    # position against the length catches a truncated record.
    out.append(f"{i}pos += n")
    return out


def _field_lines(avro_type: Any, target: str | None) -> list[str] | None:
    kind = _base(avro_type)
    if kind is not None:
        return _lines(kind, target, "    ")
    if isinstance(avro_type, list) and len(avro_type) == 2 and avro_type[0] == "null":
        inner = _base(avro_type[1])
        if inner is None:
            return None
        out = _varint("branch", "    ")
        if target is not None:
            out.append(f"    {target} = None")
        out += ["    if branch == 1:", *_lines(inner, target, "        "),
                "    elif branch != 0:", "        raise Unreadable('union branch out of range')"]
        return out
    return None


def _generate(name: str, writer: dict[str, Any], latest: dict[str, Any]) -> Reader | None:
    wanted = WANTED[name]
    defaults = {f["name"]: f.get("default") for f in latest["fields"]}
    present = {f["name"] for f in writer["fields"]}
    body: list[str] = []
    for i, field in enumerate(writer["fields"]):
        lines = _field_lines(field["type"], f"v{i}" if field["name"] in wanted else None)
        if lines is None:
            return None
        body += lines
    slots = {f["name"]: f"v{i}" for i, f in enumerate(writer["fields"])}
    values = [slots[w] if w in present else repr(defaults[w]) for w in wanted]
    source = "\n".join([
        "def reader(b):",
        f"    pos = {codec.HEADER_SIZE}",
        *body,
        "    if pos != len(b):",
        "        raise Unreadable('a length past the end' if pos > len(b)",
        "                         else f'{len(b) - pos} trailing bytes')",
        f"    return ({', '.join(values)},)",
    ])
    scope: dict[str, Any] = {"_long": _long, "Unreadable": Unreadable}
    exec(compile(source, f"<fields reader {writer['name']}>", "exec"), scope)  # noqa: S102
    return scope["reader"]  # type: ignore[no-any-return]


def _fallback(name: str) -> Reader:
    wanted = WANTED[name]

    def reader(data: bytes) -> tuple[Any, ...]:
        try:
            _, record = codec.decode_fields(data)
        except codec.DecodeError as exc:
            raise Unreadable(str(exc)) from exc
        return tuple(_raw(record[w]) for w in wanted)

    return reader


def _raw(value: Any) -> Any:
    if isinstance(value, datetime):
        return (value - _EPOCH) // _MILLISECOND
    if isinstance(value, date):
        return value.toordinal() - _EPOCH_DAY
    return value


_MILLISECOND = datetime.resolution * 1000


def _readers() -> dict[bytes, tuple[str, Reader | None]]:
    versions = codec.schema_versions()
    latest = {name: schema for name, _, schema in versions}  # oldest first: the last wins
    out: dict[bytes, tuple[str, Reader | None]] = {}
    for name, _, schema in versions:
        reader: Reader | None = None
        if name in WANTED:
            reader = _generate(name, schema, latest[name]) or _fallback(name)
        out[codec.MARKER + codec.schema_fingerprint(schema)] = (name, reader)
    return out


_READERS = _readers()


def from_epoch_millis(ms: int) -> datetime:
    return _EPOCH + _MILLISECOND * ms


def from_epoch_days(days: int) -> date:
    return date.fromordinal(days + _EPOCH_DAY)
