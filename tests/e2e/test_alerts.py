"""Prometheus and Alertmanager of `make up`, on the session's stack: every component and
the broker scraped, the dashboard's metrics all scraped, and real faults mailed as
alerts to the sink: a SIGSTOPped processor with commands waiting (and its resolution
after SIGCONT), a poison command on the dead-letter topic.

The stack runs with tests.infra.FAST_ALERTS: rules a tenth of their length."""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.parse
import urllib.request
import uuid
from typing import Any

import httpx
import pytest
from confluent_kafka import Producer

from schemas import topics
from stack import monitoring
from stack.procs import read_pid
from stack.waiting import eventually, wait_until
from tests.e2e.conftest import RunningStack
from tests.support import alert_subjects
from tests.unit.test_ops_assets import used_metrics

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]


def _prometheus(stack: RunningStack, path: str) -> object:
    url = f"http://127.0.0.1:{stack.config.prometheus_port}{path}"
    with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - loopback
        return json.load(response)["data"]


def _targets(stack: RunningStack) -> dict[str, str]:
    data = _prometheus(stack, "/api/v1/targets")
    assert isinstance(data, dict)
    return {t["labels"]["component"]: t["health"] for t in data["activeTargets"]}


def _query(stack: RunningStack, expr: str) -> dict[str, Any]:
    data = _prometheus(stack, "/api/v1/query?query=" + urllib.parse.quote(expr))
    assert isinstance(data, dict)
    return data


def _diagnosis(stack: RunningStack, *exprs: str) -> str:
    """What Prometheus says now: its alerts and the series a rule reads."""
    lines = [f"alerts: {_prometheus(stack, '/api/v1/alerts')}"]
    lines += [f"{expr}: {_query(stack, expr)}" for expr in exprs]
    return "\n".join(lines)


def promised_seconds(stack: RunningStack, window: str, hold: str) -> float:
    """What a rule promises end to end: its range and `for:` as rendered, an evaluation
    and a scrape, the command API's lag poll (5 s), Alertmanager's group wait."""
    config = stack.config
    interval = monitoring.seconds(config.prometheus_interval)
    rendered = monitoring.render_rules(f"  for: {hold}\n x[{window}]", config.alert_time_scale,
                                       config.prometheus_interval)
    hold_s = monitoring.seconds(rendered.split("for: ")[1].split("\n")[0])
    window_s = monitoring.seconds(rendered.split("[")[1].rstrip("]"))
    return window_s + hold_s + 2 * interval + 5 + monitoring.seconds(config.alert_group_wait)


def test_prometheus_scrapes_every_component_and_the_broker(full_stack: RunningStack) -> None:
    expected = {"kafka", "processor", "projector", "notifier", "command-api", "query-api",
                "prometheus", "alertmanager"}
    wait_until(lambda: _targets(full_stack).keys() >= expected
               and all(_targets(full_stack)[c] == "up" for c in expected), 60,
               "every target scraped successfully")
    for name in (monitoring.PROMETHEUS, monitoring.ALERTMANAGER):
        pid = read_pid(full_stack.config, name)
        assert pid is not None and (full_stack.config.logs / f"{name}.log").exists()
    # The query API reads the pending erasures as its own PostgreSQL role: a number, not
    # NaN (which it reports when the read fails, e.g. for a missing grant).
    metrics = httpx.get(f"{full_stack.config.query_url}/metrics", timeout=5).text
    [oldest] = [line for line in metrics.splitlines()
                if line.startswith("erasures_oldest_pending_seconds ")]
    assert oldest.split()[1] != "NaN", oldest
    status = full_stack.cli("status")
    assert "prometheus" in status.stdout and "alertmanager" in status.stdout


def test_a_stopped_processor_with_commands_waiting_mails_an_alert_then_its_resolution(
        full_stack: RunningStack) -> None:
    config = full_stack.config
    course = full_stack.create_course("alerts", 50, "Alerting", "Dr. Page")
    # Decided and committed before the stop: the lag then counts from the commit.
    wait_until(lambda: httpx.get(f"{config.query_url}/courses/{course}/stats", timeout=5,
                                 headers={"Authorization": f"Bearer {config.admin_token()}"}
                                 ).status_code == 200, 60, "the course projected")
    pid = read_pid(config, "processor")
    assert pid is not None
    promised = promised_seconds(full_stack, "1m", "30s")
    before = len(alert_subjects(config.mail_dir, "ProcessorNotDeciding"))
    os.kill(pid, signal.SIGSTOP)
    stopped = time.monotonic()
    try:
        for i in range(3):
            answer = httpx.post(f"{config.command_url}/courses/{course}/signups", timeout=30,
                                json={"email": f"waiting-{i}-{uuid.uuid4().hex[:6]}@example.org",
                                      "name": "Wai Ting", "date_of_birth": "2001-02-03"})
            assert answer.status_code == 202, answer.text
        try:
            fired = eventually(
                lambda: [s for s in alert_subjects(config.mail_dir, "ProcessorNotDeciding")
                         [before:] if s.startswith("[FIRING")] or None,
                promised + 15, "the ProcessorNotDeciding mail", interval=0.5)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n" + _diagnosis(
                full_stack, "kafka:consumergroup_lag:sum", "kafka_consumergroup_lag",
                "sum(increase(processor_commands_total[8s]))")) from None
        took = time.monotonic() - stopped
        print(f"ProcessorNotDeciding mailed {took:.1f}s after SIGSTOP (promised {promised:.0f}s)")
        assert took <= promised + 10, f"mailed after {took:.0f}s, promised {promised:.0f}s"
        assert fired[0].startswith("[FIRING:1] ProcessorNotDeciding course-signup")
    finally:
        os.kill(pid, signal.SIGCONT)
    resumed = time.monotonic()
    eventually(lambda: [s for s in alert_subjects(config.mail_dir, "ProcessorNotDeciding")[before:]
                        if s.startswith("[RESOLVED]")] or None,
               120, "the resolved ProcessorNotDeciding mail", interval=0.5)
    print(f"ProcessorNotDeciding resolved mail {time.monotonic() - resumed:.1f}s after SIGCONT")
    # A processor fenced while stopped may have stopped itself: `make up` is the restart.
    assert full_stack.cli("up").returncode == 0


def test_a_poison_command_mails_the_dead_letter_alert(full_stack: RunningStack) -> None:
    config = full_stack.config
    before = len(alert_subjects(config.mail_dir, "DeadLetterRecords"))
    # The rule compares the dead-letter topics' end offsets within its window: Prometheus
    # needs a sample of every partition from before the record (a record older than its
    # first scrape is history, not news).
    wait_until(lambda: _query(full_stack, 'min(count_over_time(kafka_log_log_logendoffset'
                                          '{topic="course-commands.dlq"}[1m])) >= 2')["result"],
               60, "two scrapes of the dead-letter topic's end offsets", interval=0.5)
    # An alert that fires while Prometheus knows no Alertmanager is dropped (and this one
    # lasts less than the minute after which Prometheus sends it again).
    def alertmanagers() -> object:
        found = _prometheus(full_stack, "/api/v1/alertmanagers")
        return found.get("activeAlertmanagers") if isinstance(found, dict) else None

    wait_until(alertmanagers, 30, "Prometheus sending to the Alertmanager", interval=0.5)
    producer = Producer(config.kafka_client_config())  # the operator's login
    delivered: list[object] = []
    producer.produce(topics.COMMANDS, key=b"poison", value=b"\xc3\x01 not a command",
                     on_delivery=lambda error, _: delivered.append(error))
    left = producer.flush(60)
    assert left == 0 and delivered == [None], (left, delivered)
    sent = time.monotonic()
    try:
        fired = eventually(
            lambda: [s for s in alert_subjects(config.mail_dir, "DeadLetterRecords")[before:]
                     if s.startswith("[FIRING")] or None,
            90, "the DeadLetterRecords mail", interval=0.5)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n" + _diagnosis(
            full_stack, 'kafka_log_log_logendoffset{topic="course-commands.dlq"}',
            "kafka:dlq_records:increase5m", "processor_dlq_total")) from None
    print(f"DeadLetterRecords mailed {time.monotonic() - sent:.1f}s after the poison command")
    assert f"{topics.COMMANDS_DLQ}" in fired[0]


def test_every_dashboard_metric_is_scraped_from_the_running_stack(
        full_stack: RunningStack) -> None:
    wanted = set(used_metrics())

    def missing() -> set[str]:
        names = _prometheus(full_stack, "/api/v1/label/__name__/values")
        assert isinstance(names, list)
        return wanted - set(names)

    try:
        wait_until(lambda: not missing(), 60, "every dashboard metric scraped")
    except AssertionError:
        raise AssertionError(f"the dashboard queries metrics Prometheus never scraped: "
                             f"{sorted(missing())}") from None
