"""JSON log lines (`service_kit.logs`), one per record; only allow-listed fields ever
leave the process.

A record's extra fields are copied only if named in FIELDS, so an e-mail address,
a name or a birth date cannot reach a log line by accident. Record values hold
personal data in Avro, and libraries print them: faust and aiokafka at DEBUG (so
they log at INFO at most), faust also in a WARNING when a send fails. Every bytes
literal in a message or traceback is therefore replaced by its length.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from service_kit.logs import JsonFormatter

FIELDS = (
    "correlation_id", "command_id", "signup_id", "course_id", "event_id", "event_type",
    "outcome", "reason", "kind", "topic", "partition", "offset", "problems", "app_id",
    "generation",
)
LIBRARIES = ("faust", "aiokafka", "mode", "kafka")
BYTES_LITERAL = re.compile(r"(?<!\w)b'(?:[^'\\]|\\.)*'" "|" r'(?<!\w)b"(?:[^"\\]|\\.)*"')


def redact(text: str) -> str:
    """The text with every Python bytes literal (a record key or value) blanked out."""
    return BYTES_LITERAL.sub(lambda m: f"b<{len(m.group())} chars redacted>", text)


def formatter() -> JsonFormatter:
    """The processor's log line: allow-listed fields, bytes literals redacted."""
    return JsonFormatter("processor", allow=FIELDS, scrub=redact)


def logging_config(level: str) -> dict[str, Any]:
    """A logging.config.dictConfig that writes JSON lines to stderr."""
    library_level = max(logging.getLevelName(level), logging.INFO)
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": formatter}},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "json",
                                "stream": "ext://sys.stderr"}},
        "root": {"level": level, "handlers": ["stderr"]},
        "loggers": {name: {"level": library_level} for name in LIBRARIES},
    }
