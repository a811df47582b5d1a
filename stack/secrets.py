"""Secret files: created with mode 0600 from the first byte, and published atomically.

A secret is never written to a file that anyone else could open first: the bytes go
to a fresh temporary name opened with O_CREAT|O_EXCL and mode 0600 (so no window
exists where the file is readable with the umask's mode), then the name is moved into
place, so a reader sees either no file or the whole secret, never a partial one.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path


def _temporary(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
        try:
            fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        except FileExistsError:
            continue
        break
    try:
        with os.fdopen(fd, "w") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def write_secret(path: Path, text: str) -> None:
    """Write (or replace) a private file: 0600 from its creation, swapped in atomically."""
    tmp = _temporary(path, text)
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def generated_secret(path: Path, nbytes: int = 32) -> str:
    """The secret stored at `path`, generated once (URL-safe, so it fits into URLs and
    properties files unquoted). Two processes generating it at once agree: the file is
    published with link(), which never replaces an existing one, and the loser reads
    the winner's secret."""
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    tmp = _temporary(path, secrets.token_urlsafe(nbytes) + "\n")
    try:
        os.link(tmp, path)
    except FileExistsError:
        pass
    finally:
        tmp.unlink(missing_ok=True)
    return path.read_text().strip()
