"""`python -m stack` as `make up` runs it: PID files, logs, restart of only what died, down."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from stack.procs import pid_alive
from stack.waiting import wait_until
from tests.infra import stack_config_for_tests

INFRA = ("kafka", "postgres", "smtp")


def _stack(command: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "stack", command], env=env, text=True,
                          capture_output=True, timeout=300)


def _env(run_dir: Path) -> dict[str, str]:
    # Only the infrastructure: the services have their own end-to-end tests.
    return {**stack_config_for_tests(run_dir).stack_env(), "STACK_ONLY": ",".join(INFRA)}


def _pids(run_dir: Path) -> dict[str, int]:
    return {p.stem: int(p.read_text()) for p in (run_dir / "pids").glob("*.pid")}


def test_up_restarts_only_what_died_and_down_stops_everything() -> None:
    run_dir = Path(tempfile.mkdtemp(prefix="course-signup-cli-"))
    env = _env(run_dir)
    try:
        first = _stack("up", env)
        assert first.returncode == 0, first.stderr
        assert "Admin token" in first.stdout
        before = _pids(run_dir)
        assert set(INFRA) <= set(before)
        assert all((run_dir / "logs" / f"{name}.log").exists() for name in INFRA)

        os.kill(before["smtp"], signal.SIGKILL)
        wait_until(lambda: not pid_alive(before["smtp"]), 10, "the killed SMTP sink to exit",
                   interval=0.05)

        again = _stack("up", env)
        assert again.returncode == 0, again.stderr
        after = _pids(run_dir)
        assert after["kafka"] == before["kafka"] and after["postgres"] == before["postgres"]
        assert after["smtp"] != before["smtp"] and pid_alive(after["smtp"])
        assert "kafka        already running" in again.stdout

        # A processor of an earlier, larger PROCESSORS (its pid file is all that is left
        # of that setting) is stopped too; init is its parent, as for a started service.
        stray = int(subprocess.run(["setsid", "sh", "-c", "sleep 600 >/dev/null 2>&1 & echo $!"],
                                   capture_output=True, text=True, check=True).stdout)
        (run_dir / "pids" / "processor-3.pid").write_text(str(stray))
        assert pid_alive(stray)

        down = _stack("down", env)
        assert down.returncode == 0, down.stderr
        assert not any(pid_alive(pid) for pid in after.values())
        assert not pid_alive(stray), down.stdout
        assert (run_dir / "kafka" / "data").exists(), "down keeps the data"
    finally:
        _stack("down", env)
