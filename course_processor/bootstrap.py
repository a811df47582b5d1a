"""The composition root: a runnable processor from its settings."""

from __future__ import annotations

from course_processor.faust_eos.agents import register
from course_processor.faust_eos.app import Processor, create_app
from course_processor.faust_eos.web import add_routes
from course_processor.metrics import Metrics
from course_processor.settings import Settings
from course_processor.state.runtime import StateConfig, StateRuntime


def bootstrap(settings: Settings, metrics: Metrics | None = None) -> Processor:
    """The state runtime, then the app with its tables, agent and HTTP endpoints."""
    processor = create_app(settings, StateRuntime(state_config(settings)), metrics)
    register(processor)
    add_routes(processor)
    return processor


def state_config(settings: Settings) -> StateConfig:
    return StateConfig(
        data_dir=settings.data_dir,
        app_id=settings.app_id,
        kafka={**settings.kafka_auth.confluent(),
               "bootstrap.servers": settings.kafka_bootstrap_servers},
        commands_topic=settings.commands_topic,
        events_topic=settings.events_topic,
        partitions=settings.partitions,
        secret=settings.secret,
        build_from_events=settings.build_from_events,
        memory_bytes=settings.state_memory_mb << 20,
    )
