"""JSON log lines, one per record; only allow-listed fields ever leave the process.

A record's extra fields are copied only if named in FIELDS, so an e-mail address,
a name or a birth date cannot reach a log line by accident. Record values hold
personal data in Avro, and libraries print them: faust and aiokafka at DEBUG (so
they log at INFO at most), faust also in a WARNING when a send fails. Every bytes
literal in a message or traceback is therefore replaced by its length.
"""

from __future__ import annotations

import json
import logging
import re
from datetime import UTC, datetime
from typing import Any

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


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": redact(record.getMessage()),
        }
        for name in FIELDS:
            value = record.__dict__.get(name)
            if value is not None:
                line[name] = value
        if record.exc_info:
            line["exception"] = redact(self.formatException(record.exc_info))
        return json.dumps(line, default=str)


def logging_config(level: str) -> dict[str, Any]:
    """A logging.config.dictConfig that writes JSON lines to stderr."""
    library_level = max(logging.getLevelName(level), logging.INFO)
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": JsonFormatter}},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "json",
                                "stream": "ext://sys.stderr"}},
        "root": {"level": level, "handlers": ["stderr"]},
        "loggers": {name: {"level": library_level} for name in LIBRARIES},
    }
