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
    closers: list[Callable[[], None]] = []
    if consumer is None:
        consumer = Consumer(consumer_config(settings), logger=logging.getLogger("rdkafka"))
        closers.append(consumer.close)
    if mailer is None:
        smtp = SmtpMailer(settings)
        mailer = smtp
        closers.append(smtp.close)
    if dead_letters is None:
        producer = DeadLetterProducer(settings.kafka_bootstrap_servers, topics.NOTIFIER_DLQ)
        dead_letters = producer
        closers.append(producer.close)
    if store is None:
        postgres = PostgresStore(settings.database_url)
        store = postgres
        closers.append(postgres.close)
    metrics = metrics or Metrics()
    secret = settings.withdrawal_secret
    handler = Handler(store, mailer, dead_letters, metrics, settings.mail_from, now,
                      None if secret is None else secret.get_secret_value().encode())
    return Worker(consumer, handler, metrics, Policy.of(settings), closers=closers)
