"""The processor's settings, logs, metrics and app wiring, without a broker."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from course_processor.bootstrap import state_config
from course_processor.faust_eos.app import Processor, create_app
from course_processor.logs import formatter, logging_config
from course_processor.metrics import Metrics
from course_processor.settings import Settings, SettingsError
from course_processor.state.runtime import StateRuntime

REQUIRED = {"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9092", "PSEUDONYM_SECRET": "s3cret"}


@pytest.mark.parametrize("missing", sorted(REQUIRED))
def test_settings_need_a_broker_and_a_secret(missing: str) -> None:
    with pytest.raises(SettingsError, match=missing):
        Settings.from_env({k: v for k, v in REQUIRED.items() if k != missing})


def test_settings_defaults() -> None:
    s = Settings.from_env(REQUIRED)
    assert (s.partitions, s.port, s.data_dir, s.build_from_events) == (
        4, 6066, Path(".run/processor"), True)
    assert s.dlq_topic == "course-commands.dlq"
    assert s.broker_url == "kafka://127.0.0.1:9092"
    assert s.secret == b"s3cret" and "s3cret" not in repr(s)


def test_settings_from_the_environment() -> None:
    s = Settings.from_env({
        **REQUIRED, "KAFKA_BOOTSTRAP_SERVERS": "a:1, b:2", "PARTITIONS": "8",
        "PROCESSOR_PORT": "7000", "PROCESSOR_DATA_DIR": "/tmp/x",
        "LOG_LEVEL": "debug", "PROCESSOR_APP_ID": "p2", "PROCESSOR_SESSION_TIMEOUT": "6",
        "PROCESSOR_COMMIT_INTERVAL": "0.5", "PROCESSOR_BUILD_FROM_EVENTS": "false",
    })
    assert s.broker_url == "kafka://a:1;kafka://b:2"
    assert (s.partitions, s.port, s.data_dir, s.log_level) == (8, 7000, Path("/tmp/x"), "DEBUG")
    assert (s.app_id, s.session_timeout, s.commit_interval) == ("p2", 6.0, 0.5)
    assert s.build_from_events is False


@pytest.mark.parametrize(("name", "value"), [
    ("PARTITIONS", "four"), ("PROCESSOR_PORT", "-1"), ("LOG_LEVEL", "loud"),
    ("PROCESSOR_SESSION_TIMEOUT", "0"),
])
def test_settings_refuse_nonsense(name: str, value: str) -> None:
    with pytest.raises(SettingsError, match=name):
        Settings.from_env({**REQUIRED, name: value})


def app_only() -> Processor:
    """The app with its tables, not connected (no agent: nothing runs)."""
    settings = Settings.from_env({**REQUIRED, "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1"})
    return create_app(settings, StateRuntime(state_config(settings)))


def test_the_worker_keeps_the_log_level_it_is_given() -> None:
    # faust's terminal spinner set the root logger to DEBUG at LOG_LEVEL=WARNING, so
    # the per-decision debug line was built for every decision.
    from course_processor.__main__ import new_worker

    p = app_only()
    worker = new_worker(p, p.settings.model_copy(update={"log_level": "WARNING"}))
    root, level = logging.getLogger(), logging.getLogger().level
    try:
        root.setLevel(logging.WARNING)
        worker.on_setup_root_logger(root, logging.WARNING)
        assert not logging.getLogger("course_processor").isEnabledFor(logging.INFO)
    finally:
        root.setLevel(level)


def test_tables_write_their_changelogs_with_the_right_serializers() -> None:
    p = app_only()
    # faust types changelog_topic as TopicT, which does not declare the serializers.
    serializers = {t.name: (t.changelog_topic.key_serializer,  # type: ignore[attr-defined]
                            t.changelog_topic.value_serializer)  # type: ignore[attr-defined]
                   for t in p.tables.values()}
    assert serializers == {"courses": ("json", "json"), "seat_holders": ("json", "json"),
                           "decided_signups": ("json", "json"), "places": ("json", "json"),
                           "waiting": ("json", "json")}
    assert all(t.partitions == 4 for t in p.tables.values())
    assert p.changelog_topics()["seat_holders"] == "course-processor-seat_holders-changelog"


def test_a_log_line_is_one_json_object_with_allow_listed_fields_only() -> None:
    record = logging.LogRecord("course_processor", logging.INFO, __file__, 1, "decided",
                               None, None)
    record.__dict__.update(correlation_id="c-1", outcome="accepted",
                           email="ann@example.org", student="Ann Smith",
                           date_of_birth="2000-01-01")
    line = formatter().format(record)
    assert "\n" not in line
    parsed = json.loads(line)
    assert parsed["msg"] == "decided"
    assert (parsed["correlation_id"], parsed["outcome"]) == ("c-1", "accepted")
    for personal in ("ann@example.org", "Ann Smith", "2000-01-01"):
        assert personal not in line


def test_record_values_printed_by_libraries_are_redacted() -> None:
    # faust logs the whole pending message, value included, when a send fails.
    value = b"\xc3\x01\x00ann@example.org\x06Ann's"
    record = logging.LogRecord("faust.topics", logging.WARNING, __file__, 1,
                               "_on_published error message %r", (dict(key=b"c1", value=value),),
                               None)
    line = formatter().format(record)
    assert "ann@example.org" not in line and "c1" not in line
    assert "redacted" in json.loads(line)["msg"]


def test_libraries_never_log_below_info() -> None:
    config = logging_config("DEBUG")
    assert config["root"]["level"] == "DEBUG"
    assert {cfg["level"] for cfg in config["loggers"].values()} == {logging.INFO}


def test_metrics_are_exposed_in_prometheus_text_format() -> None:
    m = Metrics()
    m.commands.labels("SignUp").inc()
    m.decisions.labels("rejected", "course_full").inc()
    m.dlq.labels("undecodable").inc()
    m.processing.observe(0.002)
    text = m.render().decode()
    assert 'processor_commands_total{kind="SignUp"} 1.0' in text
    assert 'processor_decisions_total{outcome="rejected",reason="course_full"} 1.0' in text
    assert 'processor_dlq_total{reason="undecodable"} 1.0' in text
    assert "processor_processing_seconds_count 1.0" in text


class FailStopped(Exception):
    pass


async def test_a_crashed_producer_buffer_ends_the_process_instead_of_a_graceful_stop(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # A graceful stop after a fenced send hangs flushing the buffer (app.py); the
    # crash must reach the app through mode's service tree and fail-stop there.
    def fail_stop(reason: str, exc: BaseException | None = None) -> None:
        raise FailStopped(reason)

    monkeypatch.setattr("course_processor.faust_eos.app.fail_stop", fail_stop)
    p = app_only()
    with pytest.raises(FailStopped, match="IllegalOperation"):
        await p.app.producer.buffer.crash(RuntimeError("IllegalOperation: not in transaction"))


@settings(max_examples=50, deadline=None)
@given(st.text(max_size=80))
def test_table_views_write_faust_s_bytes_by_the_short_path(key: str) -> None:
    from course_processor.faust_eos.tables import TableView, json_bytes, json_value

    p = app_only()
    for table in (p.courses, p.decided):
        view = TableView(table)
        assert view.fast  # the json module gives faust's bytes: the short path is taken
        assert json_bytes(key) == table.data._encode_key(key)  # type: ignore[attr-defined]
        assert json_bytes({"k": key}) == table.data._encode_value({"k": key})  # type: ignore[attr-defined]
        # And back: the view's reader gives what faust's serializers give.
        raw_key, raw_value = json_bytes(key), json_bytes({"k": key})
        assert json_value(raw_key) == table.data._decode_key(raw_key) == key  # type: ignore[attr-defined]
        assert json_value(raw_value) == table.data._decode_value(raw_value)  # type: ignore[attr-defined]


def test_faust_s_monitor_keeps_no_books_per_record() -> None:
    # Counters, timestamps and a dict per record that nothing reads (app.py, QuietMonitor).
    from faust.types import TP, Message

    p = app_only()
    message = Message("commands", 0, 5, 0.0, 0, None, b"k", b"v", None)
    monitor = p.app.monitor
    monitor.on_message_in(TP("commands", 0), 5, message)
    assert monitor.on_stream_event_in(TP("commands", 0), 5, None, None) is None  # type: ignore[arg-type]
    monitor.on_message_out(TP("commands", 0), 5, message)
    assert monitor.messages_received_total == 0 and monitor.events_total == 0
    assert message.time_in is None


async def test_the_consumer_commits_when_caught_up_and_fetches_with_a_short_wait() -> None:
    # faust's consumer commits on a fixed timer and has the broker hold a fetch for
    # 1.5 s: a command could wait that long to be read, and a decision a whole commit
    # interval to be visible (course_processor/faust_eos/pacing.py).
    from course_processor.faust_eos.pacing import PacedConsumer

    p = app_only()
    consumer = p.app.consumer
    assert isinstance(consumer, PacedConsumer)
    assert consumer.commit_floor == p.settings.commit_min_interval == 0.01
    assert consumer.commit_interval == p.settings.commit_interval == 0.1
    kafka = consumer._thread._create_worker_consumer(p.app.transport)  # type: ignore[arg-type]
    assert kafka._fetch_max_wait_ms == 100 < 1500


async def test_after_recovery_only_the_command_partitions_are_fetched() -> None:
    # faust "pauses" the changelogs and its leader topic only in its own bookkeeping:
    # aiokafka fetched them all the time, and a fetch holding only those was held by
    # the broker for the whole fetch wait while a command partition waited for it.
    from aiokafka import TopicPartition

    p = app_only()
    commands = p.settings.commands_topic
    assigned = {TopicPartition(commands, 0), TopicPartition(commands, 1),
                TopicPartition(f"{p.settings.app_id}-decided_signups-changelog", 0),
                TopicPartition(f"{p.settings.app_id}-__assignor-__leader", 0)}

    class Fetching:
        """What _pause_unread uses of aiokafka's consumer."""

        def __init__(self) -> None:
            self.paused: set[TopicPartition] = set()

        def assignment(self) -> set[TopicPartition]:
            return assigned

        def pause(self, *tps: TopicPartition) -> None:
            self.paused.update(tps)

    fetching = Fetching()
    p.app.consumer._thread._consumer = fetching  # type: ignore[attr-defined]
    recovery: Any = p.app.tables.recovery  # type: ignore[attr-defined]
    recovery._pause_unread()
    assert fetching.paused == {tp for tp in assigned if tp.topic != commands}


def test_the_transactional_producers_retry_a_refused_produce_soon() -> None:
    # Kafka 4 refuses a transaction's first produce as NotEnoughReplicas while the last
    # commit's markers are being written; aiokafka's default retry after 100 ms made
    # every decision of that commit wait that long.
    from course_processor.faust_eos.transactions import RETRY_BACKOFF_MS

    producer: Any = app_only().app.producer
    settings = producer._settings_extra()  # noqa: SLF001
    assert settings["retry_backoff_ms"] == RETRY_BACKOFF_MS <= 20
