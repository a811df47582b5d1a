"""PostgreSQL at start-up: apply the migrations, waiting for the database as long as it takes.

Every service on PostgreSQL starts this way, so whichever starts first creates the
tables, and a service started before its database simply waits for it.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable

import psycopg

import migrations
from service_kit.backoff import Backoff

log = logging.getLogger("service_kit.postgres")


def migrate_when_up(conninfo: str, stop: threading.Event, *, initial: float = 0.5,
                    cap: float = 30.0, prepare: Callable[[str], None] | None = None,
                    retry_on: tuple[type[BaseException], ...] = (psycopg.OperationalError,),
                    on_retry: Callable[[BaseException], None] | None = None,
                    rand: Callable[[], float] = random.random) -> bool:
    """Apply the migrations (then `prepare`), retrying with backoff; False if stopped first.

    `on_retry` hears of each failure before the wait (to beat a heartbeat, say why not
    ready). Errors outside `retry_on` are not "the database is not there yet": they raise.
    """
    backoff = Backoff(initial, cap)
    attempt = 0
    while not stop.is_set():
        try:
            migrations.apply(conninfo)
            if prepare is not None:
                prepare(conninfo)
            return True
        except retry_on as exc:
            attempt += 1
            delay = backoff.delay(attempt, rand)
            log.warning("PostgreSQL unavailable at start; retrying", extra={
                "error": type(exc).__name__, "retry_in_s": round(delay, 3)})
            if on_retry is not None:
                on_retry(exc)
            stop.wait(delay)
    return False
