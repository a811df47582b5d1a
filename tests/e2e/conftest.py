"""The whole native stack, started with `python -m stack up` as `make up` does.

One stack per session on free ports in a temporary directory; the tests drive it
over HTTP and wait for eventual consistency with bounded polls.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from stack.config import StackConfig
from tests.conftest import stack_config_for_tests


@dataclass(frozen=True)
class RunningStack:
    config: StackConfig
    env: dict[str, str]

    def cli(self, command: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "stack", command], env=self.env,
                              text=True, capture_output=True, timeout=300)


@pytest.fixture(scope="session")
def full_stack() -> Iterator[RunningStack]:
    run_dir = Path(tempfile.mkdtemp(prefix="course-signup-e2e-"))
    config = stack_config_for_tests(run_dir)
    running = RunningStack(config, config.stack_env())
    try:
        started = running.cli("up")
        assert started.returncode == 0, f"stack up failed:\n{started.stdout}\n{started.stderr}"
        yield running
    finally:
        running.cli("down")
        if os.environ.get("KEEP_TEST_RUN_DIR") is None:
            shutil.rmtree(run_dir, ignore_errors=True)
