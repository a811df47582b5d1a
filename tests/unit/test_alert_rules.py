"""The alerting rules of ops/rules/: promtool checks them and runs their unit tests over
synthetic series (every alert firing once and staying quiet once), and the stack's
rendering for short test alerts keeps them valid.

promtool comes with Debian's `prometheus` package, which `python -m stack prepare`
(the first step of `make test`) installs: without it these tests fail, they do not skip.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from stack import monitoring

RULES = monitoring.RULES / "course-signup.yml"
RULE_TESTS = monitoring.RULES / "course-signup_test.yml"
RUNBOOK = monitoring.ROOT / "docs" / "operations.md"
REQUIRED = {"ComponentDown", "ProcessorNotDeciding", "ConsumerLagGrowing", "DeadLetterRecords",
            "HighErrorRate", "ErasurePending", "UnderReplicatedPartitions", "OfflinePartitions",
            "NotifierRetryBacklog"}


def promtool(*args: str, cwd: Path = monitoring.RULES) -> subprocess.CompletedProcess[str]:
    tool = shutil.which("promtool")
    assert tool, "promtool is missing: run `python -m stack prepare` (Debian's prometheus)"
    return subprocess.run([tool, *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def alerts() -> list[str]:
    return re.findall(r"^\s+- alert: (\w+)$", RULES.read_text(), re.MULTILINE)


def test_the_rules_are_valid() -> None:
    result = promtool("check", "rules", RULES.name)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_passes_its_unit_tests() -> None:
    result = promtool("test", "rules", RULE_TESTS.name)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_the_issue_s_alerts_all_exist() -> None:
    assert set(alerts()) >= REQUIRED


def test_every_alert_is_tested_firing_and_quiet() -> None:
    text = RULE_TESTS.read_text()
    cases = re.findall(r"alertname: (\w+)\n\s+exp_alerts:(.*?)(?=\n\s+- eval_time|\n\n|\Z)",
                       text, re.DOTALL)
    for alert in alerts():
        outcomes = [body.strip() == "[]" for name, body in cases if name == alert]
        assert True in outcomes, f"{alert}: no case where it stays quiet"
        assert False in outcomes, f"{alert}: no case where it fires"


def test_every_alert_has_a_runbook_paragraph() -> None:
    runbook = RUNBOOK.read_text()
    for alert in alerts():
        assert f"docs/operations.md#{alert.lower()}" in RULES.read_text(), alert
        assert re.search(rf"^#### {alert}$", runbook, re.MULTILINE), (
            f"{alert}: no '#### {alert}' paragraph in docs/operations.md")


def test_short_test_alerts_scale_every_for_and_range() -> None:
    text = "    for: 1m\n    expr: increase(x[5m]) > 0 and y[30s:5s] - z offset 5m\n"
    rendered = monitoring.render_rules(text, 0.1, "1s")
    assert rendered == ("    for: 6s\n    expr: increase(x[30s]) > 0 and y[4s:5s] - z offset 30s\n")
    assert monitoring.render_rules(text, 1, "5s") == text


def test_the_scaled_rules_are_still_valid(tmp_path: Path) -> None:
    scaled = tmp_path / "rules.yml"
    scaled.write_text(monitoring.render_rules(RULES.read_text(), 0.1, "1s"))
    result = promtool("check", "rules", str(scaled), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(("duration", "seconds"), [("1m", 60), ("1h30m", 5400), ("500ms", 0.5)])
def test_prometheus_durations(duration: str, seconds: float) -> None:
    assert monitoring.seconds(duration) == seconds
