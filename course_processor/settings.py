"""The course processor's settings, read once from the environment by the entry point."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from schemas import topics

N = TypeVar("N", int, float)
GUARANTEES = ("exactly_once", "at_least_once")


class SettingsError(ValueError):
    """The environment does not describe a runnable processor."""


@dataclass(frozen=True)
class Settings:
    kafka_bootstrap_servers: str
    partitions: int = 4
    port: int = 6066
    # Loopback unless told otherwise (docker compose sets HOST=0.0.0.0).
    host: str = "127.0.0.1"
    # exactly_once: Kafka transactions make table changes, decision events and the
    # consumed offsets one atomic write, and fence a paused worker (see transactions.py).
    processing_guarantee: str = "exactly_once"
    store: str = "memory://"
    data_dir: Path = Path(".run/processor")
    log_level: str = "INFO"
    app_id: str = "course-processor"
    # A dead worker's partitions move after this long; it also bounds a paused one.
    session_timeout: float = 10.0
    # In exactly_once a decision becomes visible to read_committed readers at the
    # next commit, so the interval is the floor of the decision latency.
    commit_interval: float = 0.1
    # How long the producer gathers records into one produce request. Every command
    # writes four records (the event and three table changes); at 5 ms a drain made
    # 730 commands/s, at 20 ms 1,060 (+45%), for about 10 ms more decision latency
    # at a trickle. Keep it well under the commit interval: the commit waits for it.
    linger: float = 0.02
    # Replicas and min.insync.replicas of the changelog topics the processor creates (and
    # of faust's own topics): min(3, brokers) and 2 from three brokers on (the stack
    # sets both; see README, "Scaling").
    replication_factor: int = 1
    min_insync_replicas: int = 1
    commands_topic: str = topics.COMMANDS
    events_topic: str = topics.EVENTS

    @property
    def dlq_topic(self) -> str:
        return topics.dlq_of(self.commands_topic)

    @property
    def broker_url(self) -> str:
        """Faust's broker URL list: kafka://host:port;kafka://host:port."""
        hosts = [h.strip() for h in self.kafka_bootstrap_servers.split(",") if h.strip()]
        return ";".join(f"kafka://{h}" for h in hosts)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        bootstrap = env.get("KAFKA_BOOTSTRAP_SERVERS", "").strip()
        if not bootstrap:
            raise SettingsError("KAFKA_BOOTSTRAP_SERVERS is not set (e.g. 127.0.0.1:9092)")
        guarantee = env.get("PROCESSING_GUARANTEE", cls.processing_guarantee)
        if guarantee not in GUARANTEES:
            raise SettingsError(f"PROCESSING_GUARANTEE must be one of {GUARANTEES}")
        return cls(
            kafka_bootstrap_servers=bootstrap,
            partitions=_number(env, "PARTITIONS", cls.partitions, int),
            port=_number(env, "PROCESSOR_PORT", cls.port, int),
            host=env.get("PROCESSOR_HOST") or env.get("HOST") or cls.host,
            processing_guarantee=guarantee,
            store=env.get("PROCESSOR_STORE") or cls.store,
            data_dir=Path(env.get("PROCESSOR_DATA_DIR") or cls.data_dir),
            log_level=(env.get("LOG_LEVEL") or cls.log_level).upper(),
            app_id=env.get("PROCESSOR_APP_ID") or cls.app_id,
            session_timeout=_number(env, "PROCESSOR_SESSION_TIMEOUT", cls.session_timeout, float),
            commit_interval=_number(env, "PROCESSOR_COMMIT_INTERVAL", cls.commit_interval, float),
            linger=_number(env, "PROCESSOR_LINGER", cls.linger, float),
            replication_factor=_number(env, "KAFKA_REPLICATION_FACTOR",
                                       cls.replication_factor, int),
            min_insync_replicas=_number(env, "KAFKA_MIN_INSYNC_REPLICAS",
                                        cls.min_insync_replicas, int),
            commands_topic=env.get("PROCESSOR_COMMANDS_TOPIC") or cls.commands_topic,
            events_topic=env.get("PROCESSOR_EVENTS_TOPIC") or cls.events_topic,
        )


def _number(env: Mapping[str, str], name: str, default: N, kind: type[N]) -> N:
    raw = env.get(name)
    if not raw:
        return default
    try:
        value = kind(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a number, got {raw!r}") from None
    if value <= 0:
        raise SettingsError(f"{name} must be positive, got {raw!r}")
    return value
