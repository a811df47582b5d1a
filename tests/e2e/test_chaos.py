"""The short fault-injection suite (`python -m proof.chaos --short`) on stacks of its own
(one broker, then three brokers for kill-leader-broker): every scenario's audit must
pass. This is how `make test` proves in CI that kills, pauses and outages, and the loss
of a broker from a cluster, break none of the guarantees."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from proof.chaos import SCENARIOS

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1200)]

ROOT = Path(__file__).resolve().parents[2]


def test_short_chaos_suite_passes_every_audit(tmp_path: Path) -> None:
    results = tmp_path / "results.json"
    # RUN_DIR only decides where the logs of a failed run are copied; the suite starts its
    # own stack on free ports in a temporary directory.
    env = {**os.environ, "RUN_DIR": str(tmp_path / "run")}
    done = subprocess.run(
        [sys.executable, "-m", "proof.chaos", "--short", "--results", str(results)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=1100)
    print(done.stdout[-30000:], done.stderr[-5000:])  # shown by pytest when the test fails
    assert results.exists(), f"no results written (exit {done.returncode}):\n{done.stderr}"
    report = json.loads(results.read_text())
    ran = [s["scenario"] for s in report["scenarios"]]
    assert ran == [name for name, s in SCENARIOS.items() if s.short]
    assert "kill-leader-broker" in ran
    assert [s["brokers"] for s in report["stacks"]] == [1, 3]
    failed = {s["scenario"]: s["error"] or [f"{c['name']}: {c['detail']}"
                                            for c in s["checks"] if not c["ok"]]
              for s in report["scenarios"] if not s["ok"]}
    assert not failed, f"chaos audits failed (evidence under {tmp_path}):\n" + "\n".join(
        f"{name}: {why}" for name, why in failed.items())
    assert done.returncode == 0
