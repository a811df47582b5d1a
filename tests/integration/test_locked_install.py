"""A lock line whose hash was altered fails the install; the line as locked installs.

pip fetches the file from PyPI (or its local cache), exactly as `make install` does, into
a throw-away target directory: nothing of the project's environment changes.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.unit.test_lock import entries

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


def _pip_install(lock: Path, target: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pip", "install", "--disable-pip-version-check",
         "--require-hashes", "--no-deps", "--target", str(target), "-r", str(lock)],
        capture_output=True, text=True, timeout=240)


def _entry() -> str:
    """A small pure-Python wheel of the lock (idna), its entry as `make lock` wrote it."""
    return entries()["idna"].split("\n    #")[0].rstrip() + "\n"


def test_the_locked_line_installs(tmp_path: Path) -> None:
    lock = tmp_path / "requirements.lock"
    lock.write_text(_entry())
    result = _pip_install(lock, tmp_path / "site")
    assert result.returncode == 0, result.stdout + result.stderr
    assert list((tmp_path / "site").glob("idna-*.dist-info"))


def test_an_altered_hash_fails_the_install(tmp_path: Path) -> None:
    # Every hash of the entry altered in its last digit: no file of that release matches.
    altered = re.sub(r"(--hash=sha256:[0-9a-f]{63})([0-9a-f])",
                     lambda m: m.group(1) + ("0" if m.group(2) != "0" else "1"), _entry())
    assert altered != _entry() and altered.split(" ")[0] == _entry().split(" ")[0]
    lock = tmp_path / "requirements.lock"
    lock.write_text(altered)
    result = _pip_install(lock, tmp_path / "site")
    assert result.returncode != 0
    assert "DO NOT MATCH THE HASHES" in result.stderr
    assert not list((tmp_path / "site").glob("idna-*.dist-info"))


def test_a_line_without_hash_fails_the_install(tmp_path: Path) -> None:
    lock = tmp_path / "requirements.lock"
    lock.write_text(_entry().split(" \\")[0] + "\n")
    result = _pip_install(lock, tmp_path / "site")
    assert result.returncode != 0
    assert "--hash" in result.stderr
