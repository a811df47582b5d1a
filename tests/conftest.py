"""Session fixtures: real Kafka, PostgreSQL and SMTP for the tests that need them.

`infra` starts a broker, a database and an SMTP sink for the session and stops them
at its end: in containers when a Docker engine answers, else natively on free ports
in a temporary directory with the same code as `make up` (tests/infra.py; TEST_INFRA
forces either). With KAFKA_BOOTSTRAP_SERVERS and DATABASE_URL (and SMTP_HOST/SMTP_PORT)
set, the tests use those servers instead and start nothing.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.infra import Infra, started_infra


@pytest.fixture(scope="session")
def infra() -> Iterator[Infra]:
    with started_infra() as running:
        yield running
