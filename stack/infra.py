"""Kafka with the project's topics, a migrated PostgreSQL and, if asked, the SMTP sink:
the dependencies alone, for the tests and benchmarks that start the services themselves."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from stack import kafka, postgres, smtp
from stack.config import StackConfig, operator_login
from stack.procs import stop


@contextlib.contextmanager
def dependencies(config: StackConfig, with_smtp: bool = False) -> Iterator[StackConfig]:
    """Started with the code of `make up`, stopped on exit (also after a failed start)."""
    try:
        kafka.start(config)
        kafka.ensure_topics(config)
        kafka.ensure_access(config)
        postgres.start(config)
        postgres.migrate(config)
        if with_smtp:
            smtp.start(config)
        with operator_login(config):
            yield config
    finally:
        if with_smtp:
            stop(config, smtp.NAME)
        postgres.stop_server(config)
        stop(config, kafka.NAME, timeout=60)
