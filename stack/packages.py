"""Installs a missing system package with apt-get when we are root; otherwise names it."""

from __future__ import annotations

import os
import shutil
import subprocess

from stack.procs import StackError

_updated = False


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
    result = subprocess.run(["apt-get", "install", "-y", "-q", "--no-install-recommends",
                             *packages], env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise StackError(f"apt-get install {' '.join(packages)} failed:\n{result.stderr[-2000:]}")


def ensure_command(command: str, package: str) -> None:
    if shutil.which(command) is None:
        apt_install(package)
    if shutil.which(command) is None:
        raise StackError(f"`{command}` is still missing after installing {package}")
