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
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from stack.config import StackConfig, operator_login
from tests.infra import stack_config_for_tests


@dataclass(frozen=True)
class RunningStack:
    config: StackConfig
    env: dict[str, str]

    def cli(self, command: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "stack", command], env=self.env,
                              text=True, capture_output=True, timeout=300)

    @property
    def analyst(self) -> dict[str, str]:
        """The header that opens the query API's statistics and dashboard."""
        return {"Authorization": f"Bearer {self.config.analyst_token()}"}

    @property
    def admin(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.config.admin_token()}"}

    def create_course(self, prefix: str, capacity: int, title: str, lecturer: str,
                      waitlist_capacity: int = 0) -> str:
        """POST /courses as the admin; the new course's id (accepted with a 202)."""
        course_id = f"{prefix}-{uuid.uuid4().hex[:10]}"
        response = httpx.post(f"{self.config.command_url}/courses",
                              headers={"Authorization": f"Bearer {self.config.admin_token()}"},
                              json={"course_id": course_id, "title": title,
                                    "lecturer": lecturer, "capacity": capacity,
                                    "waitlist_capacity": waitlist_capacity}, timeout=30)
        assert response.status_code == 202, response.text
        return course_id


@pytest.fixture(scope="session")
def full_stack() -> Iterator[RunningStack]:
    run_dir = Path(tempfile.mkdtemp(prefix="course-signup-e2e-"))
    config = stack_config_for_tests(run_dir)
    running = RunningStack(config, config.stack_env())
    try:
        started = running.cli("up")
        assert started.returncode == 0, f"stack up failed:\n{started.stdout}\n{started.stderr}"
        with operator_login(config):
            yield running
    finally:
        running.cli("down")
        if os.environ.get("KEEP_TEST_RUN_DIR") is None:
            shutil.rmtree(run_dir, ignore_errors=True)
