"""Session fixtures: real Kafka, PostgreSQL and SMTP for the tests that need them.

`infra` starts a broker, a database and an SMTP sink on free ports in a temporary
directory, with the same code as `make up`, and stops them at the end of the
session. With KAFKA_BOOTSTRAP_SERVERS and DATABASE_URL (and SMTP_HOST/SMTP_PORT)
set, the tests use those servers instead and start nothing.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from stack import kafka, postgres, smtp
from stack.config import StackConfig
from stack.procs import stop


@dataclass(frozen=True)
class Infra:
    kafka_bootstrap: str
    database_url: str
    smtp_host: str
    smtp_port: int
    mail_dir: Path | None  # None when an outside SMTP server is used
    config: StackConfig | None  # None when outside servers are used

    def env(self) -> dict[str, str]:
        return {
            "KAFKA_BOOTSTRAP_SERVERS": self.kafka_bootstrap,
            "DATABASE_URL": self.database_url,
            "SMTP_HOST": self.smtp_host,
            "SMTP_PORT": str(self.smtp_port),
            "SMTP_SECURITY": "none",
        }


def stack_config_for_tests(run_dir: Path) -> StackConfig:
    """A stack config on free ports under run_dir, for tests that start their own stack."""
    return StackConfig.on_free_ports(run_dir, admin_token="test-admin-token")


def _outside_infra() -> Infra | None:
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    database = os.environ.get("DATABASE_URL")
    if not (bootstrap and database):
        return None
    return Infra(bootstrap, database, os.environ.get("SMTP_HOST", "127.0.0.1"),
                 int(os.environ.get("SMTP_PORT", "25")), None, None)


@pytest.fixture(scope="session")
def infra() -> Iterator[Infra]:
    outside = _outside_infra()
    if outside is not None:
        yield outside
        return
    run_dir = Path(tempfile.mkdtemp(prefix="course-signup-test-"))
    config = stack_config_for_tests(run_dir)
    try:
        kafka.start(config)
        kafka.ensure_topics(config)
        postgres.start(config)
        postgres.migrate(config)
        smtp.start(config)
        yield Infra(config.kafka_bootstrap, config.database_url, "127.0.0.1",
                    config.smtp_port, config.mail_dir, config)
    finally:
        stop(config, smtp.NAME)
        postgres.stop_server(config)
        stop(config, kafka.NAME, timeout=60)
        if os.environ.get("KEEP_TEST_RUN_DIR") is None:
            shutil.rmtree(run_dir, ignore_errors=True)
