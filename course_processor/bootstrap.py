"""The composition root: a runnable processor from its settings."""

from __future__ import annotations

from collections.abc import Callable

from confluent_kafka.admin import AdminClient

from course_processor import migrate, restore
from course_processor.agents import register
from course_processor.app import DECIDED, Processor, create_app
from course_processor.failstop import fail_stop
from course_processor.metrics import Metrics
from course_processor.settings import Settings
from course_processor.web import add_routes
from service_kit.kafka_auth import client_config


def bootstrap(settings: Settings, metrics: Metrics | None = None) -> Processor:
    """The app with its tables, agent, restore step and HTTP endpoints."""
    processor = create_app(settings, metrics)
    processor.app.commands_topic = settings.commands_topic
    processor.app.restorer = restorer(processor)
    register(processor)
    add_routes(processor)
    return processor


def restorer(p: Processor) -> Callable[[set[int]], None]:
    """What runs on every assignment before the owned partitions decide anything."""
    settings = p.settings
    changelogs = p.changelog_topics()

    def encode(table: str, key: object, value: object) -> tuple[bytes, bytes]:
        store = p.tables[table].data
        return store._encode_key(key), store._encode_value(value)  # type: ignore[attr-defined]  # noqa: SLF001

    def run(owned: set[int]) -> None:
        try:
            bring_up_to_date(owned)
        except Exception as exc:
            # Deciding from a state not brought up to date could overbook a course;
            # a restart tries again from the disk and the committed changelogs.
            fail_stop("the local state could not be brought up to date", exc)

    def bring_up_to_date(owned: set[int]) -> None:
        servers = settings.kafka_bootstrap_servers
        if settings.build_from_events and owned:
            admin = AdminClient({**client_config(), "bootstrap.servers": servers})
            todo = migrate.partitions_to_build(admin, changelogs[DECIDED],
                                               settings.events_topic, owned)
            if todo:
                migrate.build(servers, settings.app_id, settings.events_topic, todo,
                              settings.partitions, changelogs, encode, settings.secret,
                              migrate.utc_today())
        stats = restore.restore(p.app.local_state, servers, changelogs, owned)
        p.metrics.restored.inc(stats.records)

    return run
