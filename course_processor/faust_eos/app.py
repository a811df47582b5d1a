"""The faust app of the course processor: topics and tables, built by create_app().

The app is given the worker's StateRuntime (state/runtime.py) and metrics in its
constructor and hands them to the adapters faust builds from it: the tables' store
(tables.py), the transport's producer and transaction manager (transactions.py) and
the table recovery (recovery.py). The agent that decides is added by
agents.register(); bootstrap.py puts the two together.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from typing import Any

import faust
from faust.sensors.monitor import Monitor
from faust.transport.base import Transport
from faust.types import TP, EventT, Message, StreamT, TableT
from faust.web.drivers.aiohttp import Web as AiohttpWeb

from course_processor.deciding.values import COURSES, DECIDED, PLACES, SEATS, WAITING
from course_processor.faust_eos.failstop import fail_stop
from course_processor.faust_eos.recovery import LocalStateTableManager
from course_processor.faust_eos.tables import StagedTable
from course_processor.faust_eos.transactions import FencedTransport
from course_processor.metrics import Metrics
from course_processor.settings import Settings
from course_processor.state.runtime import StateRuntime
from service_kit.kafka_auth import KafkaAuth


class QuietMonitor(Monitor):
    """faust's Monitor without its bookkeeping per record (counters, timestamps and a
    dict per event, about 2% of a drain's time): nothing reads it, the processor's
    figures are its own (metrics.py). The rest (commits, assignments, end offsets,
    which faust's consumer reports to it) is kept."""

    def on_message_in(self, tp: TP, offset: int, message: Message) -> None:
        pass

    def on_stream_event_in(self, tp: TP, offset: int, stream: StreamT,
                           event: EventT) -> dict[str, Any] | None:
        return None

    def on_stream_event_out(self, tp: TP, offset: int, stream: StreamT, event: EventT,
                            state: dict[str, Any] | None = None) -> None:
        pass

    def on_message_out(self, tp: TP, offset: int, message: Message) -> None:
        pass


class ProcessorApp(faust.App):
    """A faust.App whose tables live in the StateRuntime's local state and whose writes
    stay in the transaction of their command (transactions.py)."""

    def __init__(self, id: str, *, runtime: StateRuntime, metrics: Metrics,
                 commit_floor: float, fetch_wait: float, **options: Any) -> None:
        # Set before faust's own __init__: the adapters it builds read them.
        self.runtime = runtime
        self.metrics = metrics
        # The least time between two commits (pacing.py); broker_commit_interval the most.
        self.commit_floor = commit_floor
        # The longest the broker holds the consumer's fetch (pacing.ShortPollThread).
        self.fetch_wait = fetch_wait
        super().__init__(id, monitor=QuietMonitor(), **options)

    def _new_web(self) -> AiohttpWeb:
        return OwnPagesWeb(self)

    def _new_transport(self) -> Transport:
        return FencedTransport(self.conf.broker_consumer, self, self.runtime)

    def _new_producer_transport(self) -> Transport:
        return FencedTransport(self.conf.broker_producer, self, self.runtime)

    def _crash(self, reason: BaseException) -> None:
        # mode marks every service above a crashed one as crashed (this app too), and
        # the worker then stops gracefully. That stop flushes the producer buffer, which
        # waits forever for table changes that a fenced or aborted transaction will not
        # take: a worker resumed after a pause past its session timeout hung like this,
        # answering /healthz and owning nothing. A crash ends the process instead, as
        # every other write failure does (failstop.py).
        fail_stop(f"a faust service crashed: {reason!r}", reason)


class OwnPagesWeb(AiohttpWeb):
    """faust's web server without faust's own pages: no /table (it would list every
    seat key and decision of the tables), no /router, no statistics and no index page.
    Only the routes the processor adds (web.py) are served."""

    default_blueprints = debug_blueprints = production_blueprints = optional_blueprints = ()


@dataclass(frozen=True)
class Processor:
    app: ProcessorApp
    settings: Settings
    runtime: StateRuntime
    metrics: Metrics
    commands: faust.TopicT
    events: faust.TopicT
    dead_letters: faust.TopicT
    # All three are co-partitioned with course-commands: every change is written in
    # the partition of the command being decided, so the worker owning a course's
    # partition is the only reader and writer of that course's entries.
    courses: TableT
    seats: TableT
    decided: TableT
    places: TableT
    waiting: TableT
    # Names this worker process in the "processor_id" header of what it writes.
    processor_id: str = field(default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}")

    @property
    def tables(self) -> dict[str, TableT]:
        return {COURSES: self.courses, SEATS: self.seats, DECIDED: self.decided,
                PLACES: self.places, WAITING: self.waiting}

    def changelog_topics(self) -> dict[str, str]:
        """Table name -> its changelog topic."""
        return {name: t.changelog_topic.get_topic_name() for name, t in self.tables.items()}


def create_app(settings: Settings, runtime: StateRuntime,
               metrics: Metrics | None = None) -> Processor:
    """Build the app, its topics and tables; nothing connects before the worker starts."""
    metrics = metrics or Metrics()
    app = ProcessorApp(settings.app_id, runtime=runtime, metrics=metrics,
                       commit_floor=settings.commit_min_interval,
                       fetch_wait=settings.fetch_max_wait, **faust_settings(settings))
    return Processor(
        app=app,
        settings=settings,
        runtime=runtime,
        metrics=metrics,
        commands=_raw_topic(app, settings.commands_topic),
        events=_raw_topic(app, settings.events_topic),
        dead_letters=_raw_topic(app, settings.dlq_topic),
        courses=_table(app, settings, COURSES),
        seats=_table(app, settings, SEATS, value_type=str),
        decided=_table(app, settings, DECIDED, value_type=str),
        places=_table(app, settings, PLACES),
        waiting=_table(app, settings, WAITING, value_type=str),
    )


def broker_credentials(auth: KafkaAuth) -> faust.SASLCredentials | None:
    """SASL/SCRAM for every client faust makes: the consumer, the producer, each
    transactional producer and its admin client (faust passes them all the same)."""
    if auth.username is None or auth.password is None:
        return None
    return faust.SASLCredentials(username=auth.username,
                                 password=auth.password.get_secret_value(),
                                 mechanism=auth.mechanism)


def faust_settings(settings: Settings) -> dict[str, Any]:
    return {
        "broker": settings.broker_url,
        # faust hands these to every client it makes: the consumer, the producer, each
        # transactional producer and its admin client.
        "broker_credentials": broker_credentials(settings.kafka_auth),
        "datadir": str(settings.data_dir),
        # Kafka transactions make table changes, decision events and the consumed
        # offsets one atomic write, and fence a paused worker (see transactions.py).
        "processing_guarantee": "exactly_once",
        "topic_partitions": settings.partitions,
        # Topics faust creates itself (the assignor's leader topic) are replicated like
        # the changelogs (admin.ensure_changelogs) and the project's own topics.
        "topic_replication_factor": settings.replication_factor,
        # A standby would write a partition's tables into the same directory as the
        # worker's own, which this version does not separate (see README, Scaling).
        "table_standby_replicas": 0,
        "broker_session_timeout": settings.session_timeout,
        "consumer_group_instance_id": settings.instance_id,
        "broker_heartbeat_interval": min(3.0, settings.session_timeout / 3),
        "broker_commit_interval": settings.commit_interval,
        "producer_acks": -1,
        # Batch records for a while: without it every record is its own produce request.
        "producer_linger": settings.linger,
        "consumer_auto_offset_reset": "earliest",
        "web_port": settings.port,
        # faust's table and router views would serve the tables' contents (OwnPagesWeb
        # removes every faust page; these say so where faust's settings are read).
        "web_router_enabled": False,
        "web_tables_enabled": False,
        "web_bind": settings.host,
        "Table": StagedTable,
        "TableManager": LocalStateTableManager,
        "autodiscover": False,
    }


def _raw_topic(app: faust.App, name: str) -> faust.TopicT:
    return app.topic(name, key_type=bytes, value_type=bytes,
                     key_serializer="raw", value_serializer="raw")


def _table(
    app: faust.App, settings: Settings, name: str, value_type: type | None = None
) -> TableT:
    # JSON keys and values: the changelog topics stay readable with any Kafka tool.
    return app.Table(name, default=None, partitions=settings.partitions,
                     key_type=str, value_type=value_type)
