"""Run the notifier: `python -m notifier` (`make up` starts it this way, as `notifier`).

It reads course-events and sends one e-mail per sign-up decision over SMTP. Settings
come from the environment (see `notifier/settings.py`): KAFKA_BOOTSTRAP_SERVERS and
DATABASE_URL are required; SMTP_HOST, SMTP_PORT, SMTP_SECURITY (none|starttls|tls),
SMTP_USERNAME, SMTP_PASSWORD and MAIL_FROM choose the mail server and sender;
NOTIFIER_GROUP_ID (default "notifier") the consumer group; NOTIFIER_RETRY_* the
backoff. GET /healthz and GET /metrics answer on 127.0.0.1:$NOTIFIER_PORT (default
6068; NOTIFIER_HOST or HOST overrides the interface). Logs go to stderr as JSON lines.
SIGTERM or SIGINT stops it after the current e-mail, committing what is done.
"""

from __future__ import annotations

import logging
import random
import signal
import sys
import threading
import time

from confluent_kafka import Consumer
from pydantic import ValidationError

import migrations
from notifier.handler import Handler
from notifier.mailer import Mailer
from notifier.observability import Metrics
from notifier.retry import Backoff
from notifier.settings import Settings
from notifier.store import Store
from notifier.worker import Policy, Worker, consumer_config
from schemas import topics
from service_kit.deadletter import DeadLetterProducer
from service_kit.health import serve_health
from service_kit.logs import configure_logging

log = logging.getLogger("notifier")


def load_settings() -> Settings:
    try:
        return Settings()  # type: ignore[call-arg]  # the environment fills it in
    except ValidationError as exc:
        # Name the bad variables without echoing their values: one of them is a secret.
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])).upper()}: {e['msg']}"
                             for e in exc.errors())
        sys.exit(f"notifier: invalid settings: {problems}")


def migrate(settings: Settings, metrics: Metrics, stop: threading.Event) -> bool:
    """Apply the migrations, waiting for PostgreSQL as long as it takes; False if stopped."""
    backoff = Backoff(settings.notifier_retry_initial_seconds, settings.notifier_retry_max_seconds)
    attempt = 0
    while not stop.is_set():
        metrics.beat()
        try:
            migrations.apply(settings.database_url)
            return True
        except Exception as exc:  # noqa: BLE001 - any failure here means "not yet"
            attempt += 1
            metrics.unready = "database unavailable"
            delay = backoff.delay(attempt, random.random)
            log.warning("database unavailable", extra={"error": type(exc).__name__,
                                                       "retry_in": round(delay, 3)})
            stop.wait(delay)
    return False


def run(settings: Settings, metrics: Metrics, stop: threading.Event) -> None:
    store = Store(settings.database_url)
    mailer = Mailer(settings)
    dead_letters = DeadLetterProducer(settings.kafka_bootstrap_servers, topics.NOTIFIER_DLQ)
    consumer = Consumer(consumer_config(settings), logger=logging.getLogger("rdkafka"))
    handler = Handler(store, mailer, dead_letters, metrics, settings.mail_from)
    try:
        Worker(consumer, handler, metrics, Policy.of(settings)).run(stop)
    finally:
        consumer.close()
        mailer.close()
        dead_letters.close()
        store.close()


def main() -> None:
    settings = load_settings()
    configure_logging(settings.log_level, "notifier")
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    metrics = Metrics()
    server = serve_health(settings.notifier_host, settings.notifier_port, alive=metrics.alive,
                          ready=metrics.readiness, metrics=metrics.render, dead_status="stuck")
    started = time.monotonic()
    log.info("notifier starting", extra={"group": settings.notifier_group_id,
                                         "smtp": f"{settings.smtp_host}:{settings.smtp_port}",
                                         "port": settings.notifier_port})
    try:
        if migrate(settings, metrics, stop):
            run(settings, metrics, stop)
    finally:
        server.shutdown()
        log.info("notifier stopped", extra={"uptime_s": round(time.monotonic() - started, 1)})


if __name__ == "__main__":
    main()
