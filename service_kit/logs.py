"""One JSON object per log line, the same fields in every service.

    {"ts": "2026-11-22T13:13:04.058+00:00", "level": "info", "service": "processor",
     "logger": "course_processor", "msg": "decided", "correlation_id": "...", ...}

`ts` is UTC with milliseconds; `level` is lower case; `exc` holds a traceback. The
other fields come from the call's `extra=`: all of them, or, with `allow`, only those
named (a service whose libraries log record values names what may leave it). `scrub`
rewrites the message and the traceback before they are written.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable, Collection
from datetime import UTC, datetime
from typing import Any

# Attributes every LogRecord has; anything else on a record came in through `extra=`.
_RECORD_ATTRIBUTES = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


def _unchanged(text: str) -> str:
    return text


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str, allow: Collection[str] | None = None,
                 scrub: Callable[[str], str] | None = None) -> None:
        super().__init__()
        self.service = service
        self.allow = tuple(allow) if allow is not None else None
        self.scrub = scrub or _unchanged

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "service": self.service,
            "logger": record.name,
            "msg": self.scrub(record.getMessage()),
        }
        fields = vars(record)
        if self.allow is None:
            entry.update((k, v) for k, v in fields.items() if k not in _RECORD_ATTRIBUTES)
        else:
            entry.update((k, fields[k]) for k in self.allow if fields.get(k) is not None)
        if record.exc_info:
            entry["exc"] = self.scrub(self.formatException(record.exc_info))
        return json.dumps(entry, default=str)


def configure_logging(level: str, service: str) -> None:
    """Every logger (uvicorn's and librdkafka's included) to stderr as JSON lines."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(service))
    logging.basicConfig(level=level, handlers=[handler], force=True)
