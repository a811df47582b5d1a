"""service_kit.logs: the one log line format every service writes."""

from __future__ import annotations

import json
import logging
import sys
import threading
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta, timezone

import pytest
from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from service_kit.backoff import Backoff
from service_kit.deadletter import dead_letter_headers
from service_kit.health import serve_health
from service_kit.http import (
    CORRELATION_HEADER,
    ApiMetrics,
    RequestContextMiddleware,
    correlation_id_of,
)
from service_kit.logs import JsonFormatter
from service_kit.postgres import migrate_when_up
from service_kit.records import Headers, SourceRecord, header_pairs
from service_kit.settings import LogLevel, load_settings


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


# ------------------------------------------------------------ service_kit.deadletter


def source(headers: Headers | None = None) -> SourceRecord:
    return SourceRecord("course-commands", 3, 1234, b"k", b"v", headers or [])


def test_dead_letter_headers_say_why_where_from_and_when_in_utc_milliseconds() -> None:
    at = datetime(2026, 3, 1, 13, 0, tzinfo=timezone(timedelta(hours=1)))
    headers = dict(dead_letter_headers(source(), "undecodable: too short", at))
    # Every service writes one precision: milliseconds (the processor once wrote micro).
    assert headers == {
        "dlq.reason": b"undecodable: too short",
        "dlq.source.topic": b"course-commands",
        "dlq.source.partition": b"3",
        "dlq.source.offset": b"1234",
        "dlq.failed_at": b"2026-03-01T12:00:00.000+00:00",
        "dlq.error": b"",
        "dlq.attempts": b"1",
    }


def test_dead_letter_headers_keep_the_record_s_own_first_and_replace_old_dlq_ones() -> None:
    own = [("correlation_id", b"c-1"), ("dlq.reason", b"earlier"), ("dlq.attempts", b"9")]
    at = datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)
    headers = dead_letter_headers(source(own), "render_failed", at, "KeyError", attempts=3)
    assert headers[0] == ("correlation_id", b"c-1")
    assert [k for k, _ in headers].count("dlq.reason") == 1
    assert dict(headers)["dlq.reason"] == b"render_failed"
    assert dict(headers)["dlq.failed_at"] == b"2026-03-01T12:00:00.123+00:00"
    assert (dict(headers)["dlq.error"], dict(headers)["dlq.attempts"]) == (b"KeyError", b"3")


def test_dead_letter_headers_refuse_a_naive_time_and_no_failure() -> None:
    with pytest.raises(ValueError):
        dead_letter_headers(source(), "x", datetime(2026, 3, 1))
    with pytest.raises(ValueError):
        dead_letter_headers(source(), "x", datetime(2026, 3, 1, tzinfo=UTC), attempts=0)


def test_header_pairs_take_a_list_or_a_dict_of_text_or_bytes() -> None:
    assert header_pairs(None) == []
    assert header_pairs([("a", b"1"), ("b", "2"), ("c", None)]) == [
        ("a", b"1"), ("b", b"2"), ("c", b"")]
    assert header_pairs({"a": "1"}) == [("a", b"1")]
    assert SourceRecord("t", 0, 0, None, None, [("a", b"\xc3\xa9")]).header("a") == "é"


# ------------------------------------------------------------ service_kit.http


def test_the_request_middleware_echoes_an_id_and_counts_by_route_template() -> None:
    async def item(_request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok")

    metrics = ApiMetrics(requests="t_requests_total", duration="t_request_duration_seconds")
    app = Starlette(routes=[Route("/items/{item_id}", item)])
    app.add_middleware(RequestContextMiddleware, metrics=metrics, logger="t.access",
                       routes=app.router.routes)
    with TestClient(app) as client:
        given = client.get("/items/secret", headers={CORRELATION_HEADER: "c-1"})
        made = client.get("/nowhere", headers={CORRELATION_HEADER: "bad id!"})
    assert given.headers[CORRELATION_HEADER] == "c-1"
    assert made.status_code == 404 and made.headers[CORRELATION_HEADER] != "bad id!"
    text = metrics.render().decode()
    assert 't_requests_total{method="GET",route="/items/{item_id}",status="200"} 1.0' in text
    assert 't_requests_total{method="GET",route="unmatched",status="404"} 1.0' in text
    assert "secret" not in text


def test_a_well_formed_correlation_id_is_kept_and_any_other_replaced() -> None:
    assert correlation_id_of("req-1:a.b_c") == "req-1:a.b_c"
    assert correlation_id_of(None) != correlation_id_of(None)
    assert correlation_id_of("x" * 129) != "x" * 129


# ------------------------------------------------------------ service_kit.health


def test_the_health_server_answers_alive_ready_and_metrics() -> None:
    class Probe:
        alive = True
        ready = (False, "PostgreSQL unavailable")

    server = serve_health("127.0.0.1", 0, alive=lambda: Probe.alive, ready=lambda: Probe.ready,
                          metrics=lambda: b"m_total 1.0\n", dead_status="stuck")
    url = f"http://127.0.0.1:{server.server_address[1]}"

    def get(path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(url + path, timeout=5) as answer:
                return answer.status, answer.read().decode()
        except urllib.error.HTTPError as refused:
            return refused.code, refused.read().decode()

    try:
        assert get("/healthz") == (200, '{"status":"ok"}')
        assert get("/readyz") == (503, '{"status":"unavailable","reason":"PostgreSQL unavailable"}')
        assert get("/metrics?x=1") == (200, "m_total 1.0\n")
        assert get("/other")[0] == 404
        Probe.alive, Probe.ready = False, (True, "")
        assert get("/healthz") == (503, '{"status":"stuck"}')
        assert get("/readyz") == (200, '{"status":"ready"}')
    finally:
        server.shutdown()
        server.server_close()


# ------------------------------------------------------------ service_kit.postgres


def test_the_start_up_backoff_doubles_up_to_its_cap_and_jitters_down_to_half() -> None:
    backoff = Backoff(0.5, 3.0)
    assert [backoff.delay(n, lambda: 1.0) for n in (1, 2, 3, 4, 5)] == [
        0.5, 1.0, 2.0, 3.0, 3.0]
    assert backoff.delay(2, lambda: 0.0) == 0.5
    assert backoff.delay(10_000, lambda: 1.0) == 3.0


def test_the_migrations_wait_for_a_database_that_is_not_there_until_stopped() -> None:
    stop = threading.Event()
    failures: list[BaseException] = []

    def on_retry(exc: BaseException) -> None:
        failures.append(exc)
        if len(failures) == 2:
            stop.set()

    nobody_listens = "host=127.0.0.1 port=1 connect_timeout=1"
    assert not migrate_when_up(nobody_listens, stop, initial=0.01, on_retry=on_retry)
    assert len(failures) == 2


# ------------------------------------------------------------ service_kit.settings


class _Knobs(BaseSettings):
    model_config = SettingsConfigDict(case_sensitive=False)

    kit_test_token: SecretStr = Field(min_length=8)
    kit_test_port: int = Field(default=1, validation_alias=AliasChoices("KIT_TEST_PORT_ALIAS"))
    log_level: LogLevel = "INFO"


def test_bad_settings_are_named_by_variable_and_never_echoed(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KIT_TEST_TOKEN", "s3cr3t")
    monkeypatch.setenv("KIT_TEST_PORT_ALIAS", "not-a-port")
    monkeypatch.setenv("LOG_LEVEL", "debug")
    with pytest.raises(SystemExit) as exited:
        load_settings(_Knobs, "kit-test")
    message = str(exited.value.code)
    assert message.startswith("kit-test: invalid settings: KIT_TEST_TOKEN: ")
    assert "KIT_TEST_PORT_ALIAS: " in message
    assert "s3cr3t" not in message and "not-a-port" not in message
    monkeypatch.setenv("KIT_TEST_TOKEN", "long enough")
    monkeypatch.setenv("KIT_TEST_PORT_ALIAS", "2")
    assert load_settings(_Knobs, "kit-test").log_level == "DEBUG"
