"""The notifier's Prometheus metrics and what its /healthz and /readyz answer."""

from __future__ import annotations

import time

from prometheus_client import Counter, Gauge

from service_kit.metrics import ServiceMetrics

# The main loop beats at least every poll timeout; this much silence means it is stuck.
STUCK_AFTER_SECONDS = 120.0


class Metrics(ServiceMetrics):
    """The notifier's metrics, and its heartbeat and readiness (for /healthz and /readyz)."""

    def __init__(self) -> None:
        super().__init__()
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
        # The notifier's own reasons exist at 0 from the start, so that the first dead
        # letter is an increase that rate() and the dashboard see (SMTP refusals are
        # named by the server's answer and appear with their first occurrence).
        for reason in ("undecodable", "unexpected_message", "render_failed",
                       "retries_exhausted"):
            self.dead_lettered.labels(reason)
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
