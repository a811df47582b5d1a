"""Prometheus metrics and the small HTTP server for /healthz, /readyz and /metrics."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    generate_latest,
)

# The main loop beats at least every poll timeout; this much silence means it is stuck.
STUCK_AFTER_SECONDS = 120.0


class Metrics:
    """The notifier's metrics, in a registry of their own so each instance starts at zero."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.sent = Counter(
            "notifier_emails_sent_total", "E-mails the SMTP server accepted.",
            ["kind"], registry=self.registry,
        )
        self.retried = Counter(
            "notifier_emails_retried_total", "Failed send attempts that will be tried again.",
            registry=self.registry,
        )
        self.dead_lettered = Counter(
            "notifier_emails_dead_lettered_total",
            "Events sent to the notifier's dead-letter topic instead of by e-mail.",
            ["reason"], registry=self.registry,
        )
        self.skipped = Counter(
            "notifier_duplicates_skipped_total",
            "Decisions not sent because their event id was already handled.",
            registry=self.registry,
        )
        self.erased = Counter(
            "notifier_emails_erased_total",
            "Decisions not sent because their student was erased (the data key is gone).",
            registry=self.registry,
        )
        self.lag = Gauge(
            "notifier_consumer_lag",
            "Records of course-events not yet handled (end offset - committable offset).",
            ["partition"], registry=self.registry,
        )
        self.parked = Gauge(
            "notifier_emails_parked", "Decisions waiting for a retry.", registry=self.registry,
        )
        self.heartbeat = time.monotonic()
        # Why the notifier cannot send right now (None: it can); see readiness().
        self.unready: str | None = "starting"

    def beat(self) -> None:
        self.heartbeat = time.monotonic()

    def alive(self) -> bool:
        return time.monotonic() - self.heartbeat < STUCK_AFTER_SECONDS

    def readiness(self) -> tuple[bool, str]:
        """(ready, why not): the loop runs and nothing it needs is known to be down."""
        if not self.alive():
            return False, "stuck"
        return self.unready is None, self.unready or ""

    def render(self) -> bytes:
        return generate_latest(self.registry)


def serve_http(metrics: Metrics, host: str, port: int) -> ThreadingHTTPServer:
    """Answer GET /healthz, /readyz and /metrics from a daemon thread."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server hook name
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._answer(200, CONTENT_TYPE_LATEST, metrics.render())
            elif path == "/healthz":
                ok = metrics.alive()
                body = json.dumps({"status": "ok" if ok else "stuck"}).encode()
                self._answer(200 if ok else 503, "application/json", body)
            elif path == "/readyz":
                ready, why = metrics.readiness()
                body = json.dumps({"status": "ready"} if ready
                                  else {"status": "unavailable", "reason": why}).encode()
                self._answer(200 if ready else 503, "application/json", body)
            else:
                self._answer(404, "application/json", b'{"detail":"Not Found"}')

        def _answer(self, status: int, content_type: str, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            pass  # probes every few seconds would drown the log

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="http", daemon=True).start()
    return server
