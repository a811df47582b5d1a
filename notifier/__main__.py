"""Run the notifier: `python -m notifier` (`make up` starts it this way, as `notifier`).

It reads course-events and sends one e-mail per sign-up decision over SMTP. Settings
come from the environment (see `notifier/settings.py`): KAFKA_BOOTSTRAP_SERVERS and
DATABASE_URL are required; SMTP_HOST, SMTP_PORT, SMTP_SECURITY (none|starttls|tls),
SMTP_USERNAME, SMTP_PASSWORD and MAIL_FROM choose the mail server and sender;
NOTIFIER_GROUP_ID (default "notifier") the consumer group; NOTIFIER_RETRY_* the
backoff. GET /healthz, /readyz and /metrics answer on 127.0.0.1:$NOTIFIER_PORT (default
6068; NOTIFIER_HOST or HOST overrides the interface). Logs go to stderr as JSON lines.
SIGTERM or SIGINT stops it after the e-mails in flight (one per lane,
NOTIFIER_SMTP_CONNECTIONS), committing what is done.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable

from notifier.bootstrap import bootstrap
from notifier.observability import Metrics
from notifier.settings import Settings
from service_kit.health import serve_health
from service_kit.logs import configure_logging
from service_kit.postgres import migrate_when_up
from service_kit.settings import load_settings

log = logging.getLogger("notifier")


def _waiting_for_database(metrics: Metrics) -> Callable[[BaseException], None]:
    def on_retry(_exc: BaseException) -> None:
        metrics.beat()
        metrics.unready = "database unavailable"
    return on_retry


def main() -> None:
    settings = load_settings(Settings, "notifier")
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
        if migrate_when_up(settings.database_url, stop,
                           initial=settings.notifier_retry_initial_seconds,
                           cap=settings.notifier_retry_max_seconds,
                           # Any failure here means "not yet".
                           retry_on=(Exception,), on_retry=_waiting_for_database(metrics)):
            bootstrap(settings, metrics).run(stop)
    finally:
        server.shutdown()
        log.info("notifier stopped", extra={"uptime_s": round(time.monotonic() - started, 1)})


if __name__ == "__main__":
    main()
