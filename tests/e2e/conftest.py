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
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pytest

from stack.config import StackConfig
from tests.conftest import stack_config_for_tests

T = TypeVar("T")


@dataclass(frozen=True)
class RunningStack:
    config: StackConfig
    env: dict[str, str]

    def cli(self, command: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "stack", command], env=self.env,
                              text=True, capture_output=True, timeout=300)


def stack_env(config: StackConfig) -> dict[str, str]:
    return config.stack_env()


@pytest.fixture(scope="session")
def full_stack() -> Iterator[RunningStack]:
    run_dir = Path(tempfile.mkdtemp(prefix="course-signup-e2e-"))
    config = stack_config_for_tests(run_dir)
    running = RunningStack(config, stack_env(config))
    try:
        started = running.cli("up")
        assert started.returncode == 0, f"stack up failed:\n{started.stdout}\n{started.stderr}"
        yield running
    finally:
        running.cli("down")
        if os.environ.get("KEEP_TEST_RUN_DIR") is None:
            shutil.rmtree(run_dir, ignore_errors=True)


def eventually(probe: Callable[[], T | None], timeout: float, what: str) -> T:
    """Poll until probe returns something other than None, or fail naming what was awaited."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = probe()
        if result is not None:
            return result
        time.sleep(0.25)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")
