"""Headless Chromium for the dashboard's end-to-end test: Debian's `chromium` package,
installed with apt-get when missing, like PostgreSQL (`python -m stack prepare`)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from stack import packages
from stack.procs import StackError

PACKAGE = "chromium"


def chromium() -> str:
    """The browser's path; installs Debian's package when there is none."""
    packages.ensure_command("chromium", PACKAGE)
    found = shutil.which("chromium")
    if found is None:  # ensure_command raised already; for the type checker
        raise StackError("chromium is missing")
    return found


def _run(url: str, *flags: str, timeout: float = 90) -> str:
    with tempfile.TemporaryDirectory(prefix="chromium-") as profile:
        argv = [chromium(), "--headless", "--disable-gpu", "--no-first-run",
                # Nothing but the page: no updates, sync or other calls home.
                "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--disable-default-apps", "--hide-scrollbars",
                f"--user-data-dir={profile}", "--virtual-time-budget=5000", *flags, url]
        if os.geteuid() == 0:
            argv.insert(1, "--no-sandbox")  # Chromium's sandbox refuses to run as root
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise StackError(f"chromium failed on {url}: {done.stderr[-1500:]}")
    return done.stdout


def dom(url: str) -> str:
    """The page's DOM after its scripts ran, as the browser serialises it."""
    return _run(url, "--dump-dom")


def screenshot(url: str, path: Path, width: int = 1280, height: int = 1100) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    _run(url, f"--window-size={width},{height}", f"--screenshot={path}")
    if not path.exists() or path.stat().st_size == 0:
        raise StackError(f"chromium wrote no screenshot to {path}")
    return path
