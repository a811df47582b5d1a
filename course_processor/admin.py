"""Start-up checks against the broker, with confluent-kafka's admin client."""

from __future__ import annotations

import logging
from typing import Any

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from course_processor.settings import Settings, SettingsError

log = logging.getLogger(__name__)


def check_topics(settings: Settings, timeout: float = 30.0) -> int:
    """The partition count of the command topic; SettingsError if a topic is missing.

    Topics are created by the launcher (stack/kafka.py); the processor only checks,
    since auto-creation is off and a typo must not create a stray topic.
    """
    admin = AdminClient({**settings.kafka_auth.confluent(),
                         "bootstrap.servers": settings.kafka_bootstrap_servers})
    found = admin.list_topics(timeout=timeout).topics
    wanted = (settings.commands_topic, settings.events_topic, settings.dlq_topic)
    missing = [name for name in wanted if name not in found]
    if missing:
        raise SettingsError(f"topics missing on {settings.kafka_bootstrap_servers}: {missing}")
    _report_replicas(settings, {n: found[n] for n in wanted})
    partitions = len(found[settings.commands_topic].partitions)
    if partitions != settings.partitions:
        log.warning("PARTITIONS=%d but %s has %d partitions; using %d",
                    settings.partitions, settings.commands_topic, partitions, partitions)
    return partitions


def ensure_changelogs(settings: Settings, names: list[str], timeout: float = 30.0) -> None:
    """Create the tables' changelog topics before faust starts, or check the existing ones.

    Faust would create them itself, but a worker that decides its first command
    before the new topic's metadata has reached it sees "0 partitions" and stops
    (PartitionsMismatch). A changelog with another partition count than the
    command topic cannot be co-partitioned with it: refuse to start.
    """
    admin = AdminClient({**settings.kafka_auth.confluent(),
                         "bootstrap.servers": settings.kafka_bootstrap_servers})
    found = admin.list_topics(timeout=timeout).topics
    wrong = {n: len(found[n].partitions) for n in names
             if n in found and len(found[n].partitions) != settings.partitions}
    if wrong:
        raise SettingsError(f"changelog topics with other than {settings.partitions} "
                            f"partitions: {wrong}")
    _report_replicas(settings, {n: found[n] for n in names if n in found})
    config = {"cleanup.policy": "compact",
              "min.insync.replicas": str(settings.min_insync_replicas)}
    missing = [NewTopic(n, settings.partitions, settings.replication_factor, config=config)
               for n in names if n not in found]
    for name, future in (admin.create_topics(missing).items() if missing else ()):
        try:
            future.result(timeout)
        except KafkaException as exc:
            if exc.args[0].code() == KafkaError.TOPIC_ALREADY_EXISTS:
                continue  # another worker of the group was quicker
            raise
        log.info("created changelog topic %s", name, extra={"topic": name})


def _report_replicas(settings: Settings, topics: dict[str, Any]) -> None:
    """Warn about a topic with fewer replicas than asked: Kafka never adds replicas to an
    existing topic, so using it silently would lose the broker-loss guarantee."""
    for name, meta in topics.items():
        have = min((len(p.replicas) for p in meta.partitions.values()), default=0)
        if have < settings.replication_factor:
            log.warning("topic %s has %d replica(s) per partition, fewer than the %d asked for",
                        name, have, settings.replication_factor,
                        extra={"topic": name, "replicas": have,
                               "asked": settings.replication_factor})
