"""service_kit.logs: the one log line format every service writes."""

from __future__ import annotations

import json
import logging
import sys
from datetime import datetime

from service_kit.logs import JsonFormatter


def record(msg: str = "decided", **extra: object) -> logging.LogRecord:
    rec = logging.LogRecord("some.logger", logging.WARNING, __file__, 1, msg, None, None)
    rec.__dict__.update(extra)
    return rec


def test_the_common_fields_then_every_extra() -> None:
    line = JsonFormatter("notifier").format(record(correlation_id="c-1", attempt=2))
    assert "\n" not in line
    parsed = json.loads(line)
    assert list(parsed)[:5] == ["ts", "level", "service", "logger", "msg"]
    assert (parsed["level"], parsed["service"], parsed["logger"], parsed["msg"]) == (
        "warning", "notifier", "some.logger", "decided")
    assert datetime.fromisoformat(parsed["ts"]).utcoffset().total_seconds() == 0  # type: ignore[union-attr]
    assert (parsed["correlation_id"], parsed["attempt"]) == ("c-1", 2)


def test_with_an_allow_list_only_the_named_extras_leave() -> None:
    line = JsonFormatter("processor", allow=("correlation_id", "offset")).format(
        record(correlation_id="c-1", email="ann@example.org", offset=None))
    parsed = json.loads(line)
    assert parsed["correlation_id"] == "c-1"
    assert "email" not in parsed and "offset" not in parsed  # None is left out
    assert "ann@example.org" not in line


def test_scrub_rewrites_the_message_and_the_traceback() -> None:
    try:
        raise ValueError("secret-value")
    except ValueError:
        rec = record("saw secret-value")
        rec.exc_info = sys.exc_info()
    line = JsonFormatter("x", scrub=lambda t: t.replace("secret-value", "***")).format(rec)
    parsed = json.loads(line)
    assert parsed["msg"] == "saw ***"
    assert "ValueError: ***" in parsed["exc"]
    assert "secret-value" not in line
