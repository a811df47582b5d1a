"""The notifier's composition root: its worker, built from its adapters.

`bootstrap` makes the real adapter for each one not given (PostgreSQL store, SMTP
mailer, dead-letter producer, Kafka consumer); the entry point gives none, the unit tests
give fakes. The worker closes what was made here when it stops; whoever passes an
adapter in closes it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime

from confluent_kafka import Consumer

from notifier.handler import DeadLetters, Handler, Mailer, Store, utc_now
from notifier.lanes import Lanes, LockedDeadLetters
from notifier.mailer import SmtpMailer
from notifier.observability import Metrics
from notifier.settings import Settings
from notifier.store import PostgresStore
from notifier.worker import Policy, Worker, consumer_config
from schemas import topics
from service_kit.deadletter import DeadLetterProducer


def bootstrap(settings: Settings, metrics: Metrics | None = None, *,
              store: Store | None = None, mailer: Mailer | None = None,
              dead_letters: DeadLetters | None = None, consumer: Consumer | None = None,
              now: Callable[[], datetime] = utc_now) -> Worker:
    """The worker; with NOTIFIER_SMTP_CONNECTIONS > 1 and no store or mailer given, one
    handler per connection, each with its own PostgreSQL session and SMTP connection."""
    closers: list[Callable[[], None]] = []
    if consumer is None:
        consumer = Consumer(consumer_config(settings), logger=logging.getLogger("rdkafka"))
        closers.append(consumer.close)
    if dead_letters is None:
        producer = DeadLetterProducer(settings.kafka_bootstrap_servers, topics.NOTIFIER_DLQ)
        dead_letters = producer
        closers.append(producer.close)
    metrics = metrics or Metrics()
    secret = settings.withdrawal_secret
    lanes = 1 if store is not None or mailer is not None else settings.notifier_smtp_connections
    if lanes > 1:
        dead_letters = LockedDeadLetters(dead_letters)

    def handler() -> Handler:
        own_store, own_mailer = store, mailer
        if own_mailer is None:
            smtp = SmtpMailer(settings)
            own_mailer = smtp
            closers.append(smtp.close)
        if own_store is None:
            postgres = PostgresStore(settings.database_url)
            own_store = postgres
            closers.append(postgres.close)
        assert dead_letters is not None
        return Handler(own_store, own_mailer, dead_letters, metrics, settings.mail_from, now,
                       None if secret is None else secret.get_secret_value().encode())

    handlers = [handler() for _ in range(lanes)]
    pool = Lanes(handlers) if lanes > 1 else None
    if pool is not None:
        # The lanes stop first (the worker waited for their jobs), then their adapters close.
        closers.insert(0, pool.close)
    return Worker(consumer, handlers[0], metrics, Policy.of(settings), closers=closers,
                  lanes=pool)
