"""Secret files are private from their first byte and appear whole or not at all."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import pytest

from stack import secrets as secret_files


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_generated_secret_is_0600_and_stable(tmp_path: Path) -> None:
    path = tmp_path / "run" / "analyst-token"
    first = secret_files.generated_secret(path)
    assert len(first) >= 40 and mode(path) == 0o600
    assert secret_files.generated_secret(path) == first
    assert [p.name for p in path.parent.iterdir()] == ["analyst-token"]  # no temp left


def test_written_secret_is_0600_even_with_a_permissive_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        secret_files.write_secret(tmp_path / "kafka-admin.properties", "sasl.password=x\n")
    finally:
        os.umask(old)
    assert mode(tmp_path / "kafka-admin.properties") == 0o600


def test_the_file_is_never_created_with_another_mode(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Write-then-chmod leaves a window where the secret is readable: every file this
    module creates is opened with mode 0600 and O_EXCL, and never chmod-ed afterwards."""
    opened: list[tuple[int, int]] = []
    real_open = os.open

    def spy_open(path: object, flags: int, mode: int = 0o777, *a: object) -> int:
        opened.append((flags, mode))
        return real_open(path, flags, mode)  # type: ignore[arg-type]

    def no_chmod(*_: object, **__: object) -> None:
        raise AssertionError("a secret file must not be chmod-ed after its creation")

    monkeypatch.setattr(os, "open", spy_open)
    monkeypatch.setattr(os, "chmod", no_chmod)
    monkeypatch.setattr(Path, "chmod", no_chmod)
    monkeypatch.setattr(Path, "write_text", no_chmod)
    secret_files.generated_secret(tmp_path / "admin-token")
    secret_files.write_secret(tmp_path / "postgres-admin.url", "postgresql://...")
    assert opened and all(m == 0o600 and f & os.O_EXCL and f & os.O_CREAT
                          for f, m in opened)


def test_a_replaced_secret_is_swapped_in_whole(tmp_path: Path) -> None:
    path = tmp_path / "p"
    secret_files.write_secret(path, "old")
    inode = path.stat().st_ino
    secret_files.write_secret(path, "new")
    assert path.read_text() == "new" and path.stat().st_ino != inode  # renamed, not rewritten


def test_concurrent_generation_agrees_on_one_secret(tmp_path: Path) -> None:
    path = tmp_path / "pseudonym-secret"
    seen: list[str] = []
    threads = [threading.Thread(target=lambda: seen.append(secret_files.generated_secret(path)))
               for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(seen)) == 1 and mode(path) == 0o600
