"""Installs a missing system package with apt-get when we are root; otherwise names it."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

from stack.procs import StackError

_updated = False
# Debian's hook that maintainer scripts ask before starting a service: exit 101 means
# "not now". The stack runs its own PostgreSQL, Prometheus and Alertmanager with its own
# configuration; the packages' daemons on their default ports must never start.
POLICY_RC_D = Path("/usr/sbin/policy-rc.d")
DENY_ALL = ("#!/bin/sh\n# Written by course-signup's stack/packages.py during apt-get "
            "install.\nexit 101\n")


@contextlib.contextmanager
def no_service_starts(policy: Path = POLICY_RC_D) -> Iterator[None]:
    """Forbid service starts while packages install; an existing policy is left alone."""
    if policy.exists():
        yield
        return
    policy.write_text(DENY_ALL)
    policy.chmod(0o755)
    try:
        yield
    finally:
        policy.unlink(missing_ok=True)


def apt_install(*packages: str) -> None:
    global _updated
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise StackError(
            f"missing system package(s): {' '.join(packages)}; install them "
            f"(e.g. `sudo apt-get install {' '.join(packages)}`) and run again"
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    if not _updated:
        subprocess.run(["apt-get", "update", "-q"], check=False, env=env,
                       stdout=subprocess.DEVNULL)
        _updated = True
    print(f"installing {' '.join(packages)} with apt-get", flush=True)
    with no_service_starts():
        result = subprocess.run(["apt-get", "install", "-y", "-q", "--no-install-recommends",
                                 *packages], env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise StackError(f"apt-get install {' '.join(packages)} failed:\n{result.stderr[-2000:]}")


def ensure_command(command: str, package: str) -> None:
    if shutil.which(command) is None:
        apt_install(package)
    if shutil.which(command) is None:
        raise StackError(f"`{command}` is still missing after installing {package}")
