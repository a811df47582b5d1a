"""Kafka records as every service sees them: headers as (name, bytes) pairs, and a
consumed record with its position, which is what a dead letter is made of."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

Headers = list[tuple[str, bytes]]
# A header the command API puts on a command whose caller follows it by its own
# correlation id, the processor copies onto its events, and the notifier reads: those
# requests are logged at INFO in every component, every other one at DEBUG.
TRACED_NAME = "traced"
TRACED: tuple[str, bytes] = (TRACED_NAME, b"1")
RawHeaders = Mapping[str, str | bytes | None] | Iterable[tuple[str, str | bytes | None]] | None


@dataclass(frozen=True)
class SourceRecord:
    """A record as consumed from Kafka."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Headers

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key == name:
                return value.decode("utf-8", "replace")
        return None


def header_pairs(raw: RawHeaders) -> Headers:
    """A client's headers (a list or a dict, text or bytes, values maybe None) as bytes pairs."""
    if raw is None:
        return []
    pairs = raw.items() if isinstance(raw, Mapping) else raw
    return [(k, v.encode() if isinstance(v, str) else v or b"") for k, v in pairs]
