"""The lock: every Python dependency pinned with hashes, and installed only from it.

(That pip refuses a file whose hash differs: tests/integration/test_locked_install.py.)
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LOCK = ROOT / "requirements.lock"


def requirement_name(spec: str) -> str:
    return re.split(r"[\[<>=!~; ]", spec, maxsplit=1)[0].lower().replace("_", "-")


def entries() -> dict[str, str]:
    """name -> the whole entry (pin, hashes, marker) of each requirement in the lock."""
    text = LOCK.read_text()
    found = {}
    for block in re.split(r"\n(?=[A-Za-z0-9])", text):
        if block.strip() and not block.startswith("#"):
            found[requirement_name(block)] = block
    return found


def test_every_entry_is_pinned_to_one_version_with_hashes() -> None:
    for name, block in entries().items():
        assert re.match(rf"{re.escape(name)}==[\w.+!-]+", block, re.IGNORECASE), block[:80]
        assert re.search(r"--hash=sha256:[0-9a-f]{64}", block), f"{name} has no hash"


def test_every_dependency_of_pyproject_is_locked() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = [*project["dependencies"], *project["optional-dependencies"]["dev"]]
    locked = entries()
    missing = [spec for spec in wanted if requirement_name(spec) not in locked]
    assert not missing, f"not in {LOCK.name}: {missing}; run `make lock`"


def test_make_install_and_the_image_install_exactly_the_lock() -> None:
    makefile = (ROOT / "Makefile").read_text()
    install = makefile.split("$(STAMP): pyproject.toml $(LOCK)")[1].split("\n\n")[0]
    assert "--require-hashes --no-deps -r $(LOCK)" in install
    assert "--no-deps --no-build-isolation -e ." in install
    assert not re.search(r"pip install(?!.*--no-deps)", install), "a pip install that resolves"
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "--require-hashes --no-deps -r requirements.lock" in dockerfile
    assert "--no-deps --no-build-isolation ." in dockerfile
