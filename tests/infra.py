"""Where the tests' Kafka and PostgreSQL come from: servers named in the environment,
containers when a Docker engine answers, else the native stack of `make up`.

TEST_INFRA picks: `native`, `docker` or `auto` (the default: docker if an engine
answers within a second or two, else native). The SMTP sink is the project's own
in every case (stack/smtp_sink.py, native): the notifier's tests read its mail folder.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from stack import kafka, smtp
from stack.config import StackConfig
from stack.infra import dependencies
from stack.procs import stop

Backend = Literal["native", "docker"]
KAFKA_IMAGE = "confluentinc/cp-kafka:7.9.0"  # KRaft; testcontainers' Kafka module needs cp-kafka
POSTGRES_IMAGE = "postgres:17"


@dataclass(frozen=True)
class Infra:
    kafka_bootstrap: str
    database_url: str
    smtp_host: str
    smtp_port: int
    mail_dir: Path | None  # None when an outside SMTP server is used
    # The native stack, whose parts a test may stop and start; None when Kafka and
    # PostgreSQL are not ours to restart (outside servers, containers).
    config: StackConfig | None
    # KAFKA_SASL_USERNAME / KAFKA_SASL_PASSWORD of the operator (every right), or none
    # for a cluster without SASL.
    kafka_login: tuple[tuple[str, str], ...] = ()

    def env(self) -> dict[str, str]:
        return {
            **dict(self.kafka_login),
            "KAFKA_BOOTSTRAP_SERVERS": self.kafka_bootstrap,
            "DATABASE_URL": self.database_url,
            "SMTP_HOST": self.smtp_host,
            "SMTP_PORT": str(self.smtp_port),
            "SMTP_SECURITY": "none",
        }


def stack_config_for_tests(run_dir: Path) -> StackConfig:
    """A stack config on free ports under run_dir, for tests that start their own stack."""
    return StackConfig.on_free_ports(run_dir, admin_token="test-admin-token")


def choose_backend(setting: str | None, docker_answers: Callable[[], bool]) -> Backend:
    """TEST_INFRA's value to a backend; `auto` (or nothing) asks docker_answers."""
    choice = (setting or "auto").strip().lower()
    if choice in ("native", "docker"):
        return "docker" if choice == "docker" else "native"
    if choice != "auto":
        raise ValueError(f"TEST_INFRA must be native, docker or auto, got {setting!r}")
    return "docker" if docker_answers() else "native"


def docker_answers(timeout: float = 2) -> bool:
    """Whether a Docker engine answers a ping (DOCKER_HOST, else the default socket)."""
    import docker  # the Docker SDK, which testcontainers depends on

    try:
        docker.from_env(timeout=timeout).ping()
    except Exception:  # noqa: BLE001 - no engine, no socket, no permission: all "no"
        return False
    return True


def outside_infra(env: Mapping[str, str]) -> Infra | None:
    bootstrap = env.get("KAFKA_BOOTSTRAP_SERVERS")
    database = env.get("DATABASE_URL")
    if not (bootstrap and database):
        return None
    login = tuple((k, env[k]) for k in ("KAFKA_SASL_USERNAME", "KAFKA_SASL_PASSWORD")
                  if env.get(k))
    return Infra(bootstrap, database, env.get("SMTP_HOST", "127.0.0.1"),
                 int(env.get("SMTP_PORT", "25")), None, None, login)


@contextlib.contextmanager
def started_infra(env: Mapping[str, str] = os.environ) -> Iterator[Infra]:
    """Outside servers if named, else Kafka, PostgreSQL and the SMTP sink of our own,
    stopped on exit."""
    outside = outside_infra(env)
    if outside is not None:
        yield outside
        return
    run_dir = Path(tempfile.mkdtemp(prefix="course-signup-test-"))
    config = stack_config_for_tests(run_dir)
    start = _in_containers if choose_backend(env.get("TEST_INFRA"),
                                             docker_answers) == "docker" else _native
    try:
        with start(config) as infra:
            yield infra
    finally:
        if env.get("KEEP_TEST_RUN_DIR") is None:
            shutil.rmtree(run_dir, ignore_errors=True)


@contextlib.contextmanager
def _native(config: StackConfig) -> Iterator[Infra]:
    with dependencies(config, with_smtp=True):
        login = config.kafka_client_env()
        yield Infra(config.kafka_bootstrap, config.database_url, "127.0.0.1",
                    config.smtp_port, config.mail_dir, config,
                    tuple((k, login[k]) for k in ("KAFKA_SASL_USERNAME", "KAFKA_SASL_PASSWORD")))


@contextlib.contextmanager
def _in_containers(config: StackConfig) -> Iterator[Infra]:
    # Not exercised on our machines (no Docker engine there): see README, "Tests".
    from testcontainers.community.kafka import KafkaContainer
    from testcontainers.community.postgres import PostgresContainer

    import migrations

    postgres = PostgresContainer(POSTGRES_IMAGE, username="postgres", password="postgres",
                                 dbname="coursesignup", driver=None)
    with KafkaContainer(KAFKA_IMAGE).with_kraft() as broker, postgres:
        bootstrap = broker.get_bootstrap_server()
        database_url = postgres.get_connection_url(driver=None)
        kafka.report(kafka.ensure_topics(config, bootstrap, replicas=1, min_isr=1))
        migrations.apply(database_url)
        smtp.start(config)
        try:
            yield Infra(bootstrap, database_url, "127.0.0.1", config.smtp_port,
                        config.mail_dir, None)
        finally:
            stop(config, smtp.NAME)
