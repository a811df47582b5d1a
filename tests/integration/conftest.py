"""Integration tests talk to a real broker, database and SMTP server (see tests/conftest.py).

The environment variables are set for the whole session, so that services the
tests start as subprocesses find the same servers.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.infra import Infra


@pytest.fixture(scope="session", autouse=True)
def infra_env(infra: Infra) -> Iterator[Infra]:
    saved = {key: os.environ.get(key) for key in infra.env()}
    os.environ.update(infra.env())
    yield infra
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
