"""The faust app of the course processor: topics, tables and agent, built by create_app()."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from typing import Any

import faust
from faust.transport.base import Transport
from faust.types import TableT

from course_processor.metrics import Metrics
from course_processor.recovery import SeekFirstTableManager
from course_processor.settings import Settings
from course_processor.transactions import FencedTransport


class ProcessorApp(faust.App):
    """A faust.App whose Kafka transport keeps every write in the transaction (transactions.py)."""

    def _new_transport(self) -> Transport:
        return FencedTransport(self.conf.broker_consumer, self)

    def _new_producer_transport(self) -> Transport:
        return FencedTransport(self.conf.broker_producer, self)


@dataclass(frozen=True)
class Processor:
    app: faust.App
    settings: Settings
    metrics: Metrics
    commands: faust.TopicT
    events: faust.TopicT
    dead_letters: faust.TopicT
    # All three are co-partitioned with course-commands (key = course id, or a key
    # that starts with it), so the worker owning a course's partition is the only
    # reader and writer of that course's entries.
    courses: TableT   # course_id -> Course as a dict
    seats: TableT     # enrollment_key(course_id, email) -> signup_id holding the seat
    decisions: TableT  # signup_id -> Avro bytes of the decision event, re-sent on repeats
    # Names this worker process in the "processor_id" header of what it writes.
    processor_id: str = field(default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}")

    def changelog_topics(self) -> list[str]:
        return [t.changelog_topic.get_topic_name() for t in (self.courses, self.seats,
                                                              self.decisions)]


def create_app(settings: Settings, metrics: Metrics | None = None) -> Processor:
    """Build the app, its topics, tables and agent; nothing connects before the worker starts."""
    app = ProcessorApp(settings.app_id, **faust_settings(settings))
    processor = Processor(
        app=app,
        settings=settings,
        metrics=metrics or Metrics(),
        commands=_raw_topic(app, settings.commands_topic),
        events=_raw_topic(app, settings.events_topic),
        dead_letters=_raw_topic(app, settings.dlq_topic),
        courses=_table(app, settings, "courses"),
        seats=_table(app, settings, "seats"),
        decisions=_table(app, settings, "decisions", value_type=bytes),
    )
    # Imported here: agents.py needs the tables above to exist.
    from course_processor.agents import register

    register(processor)
    return processor


def faust_settings(settings: Settings) -> dict[str, Any]:
    return {
        "broker": settings.broker_url,
        "store": settings.store,
        "datadir": str(settings.data_dir),
        "processing_guarantee": settings.processing_guarantee,
        "topic_partitions": settings.partitions,
        # Topics faust creates itself (the assignor's leader topic) are replicated like
        # the changelogs (admin.ensure_changelogs) and the project's own topics.
        "topic_replication_factor": settings.replication_factor,
        # A standby copy buys nothing with the in-memory store: a new owner
        # replays the changelog from its start either way.
        "table_standby_replicas": 0,
        "broker_session_timeout": settings.session_timeout,
        "broker_heartbeat_interval": min(3.0, settings.session_timeout / 3),
        "broker_commit_interval": settings.commit_interval,
        "producer_acks": -1,
        # Batch records for a while: without it every record is its own produce request.
        "producer_linger": settings.linger,
        "consumer_auto_offset_reset": "earliest",
        "web_port": settings.port,
        "web_bind": settings.host,
        "TableManager": SeekFirstTableManager,
        "autodiscover": False,
    }


def _raw_topic(app: faust.App, name: str) -> faust.TopicT:
    return app.topic(name, key_type=bytes, value_type=bytes,
                     key_serializer="raw", value_serializer="raw")


def _table(
    app: faust.App, settings: Settings, name: str, value_type: type | None = None
) -> TableT:
    # Faust picks the changelog serializer from the types: raw for bytes, else JSON.
    return app.Table(name, default=None, partitions=settings.partitions,
                     key_type=str, value_type=value_type)
