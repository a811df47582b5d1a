"""Build the processor's tables from course-events, for an upgrade or a lost changelog.

Processors before the on-disk state kept other tables (`seats` keyed by e-mail,
`decisions` holding whole events), whose changelogs this version does not read. The
event log holds every decision ever committed, so the new tables follow from it:
courses and their seats taken from CourseCreated and StudentSignedUp, seat keys from
each StudentSignedUp (its `seat_key` since v3, else the keyed hash of its clear
e-mail), and the decisions of the last MEMORY_DAYS days.

It runs on assignment, before the restore, for every owned partition whose
`decided_signups` changelog holds no record at all while course-events holds some.
Every table write of a partition goes into its changelog in ONE Kafka transaction
that also writes the `MIGRATED_KEY` mark: a crash leaves a partition either wholly
built or untouched, and an untouched one is built again at the next start.
"""

from __future__ import annotations

import logging
import time
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime

from confluent_kafka import Consumer, IsolationLevel, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from course_processor.deciding import values
from course_processor.deciding.domain import Course, evolve
from schemas.codec import DecodeError, decode
from schemas.messages import CourseCreated, StudentSignedUp
from schemas.pseudonyms import seat_key
from service_kit.topic_ends import end_offsets, read_to_end, settled_end_offsets

log = logging.getLogger(__name__)

# (table, key, value) -> the changelog record's key and value, as the table writes them.
Encoder = Callable[[str, object, object], tuple[bytes, bytes]]


def utc_today() -> date:
    return datetime.now(UTC).date()


def command_partition(course_id: str, partitions: int) -> int:
    """The course-commands partition of a course: librdkafka's consistent partitioner
    (CRC-32 of the key), which the command API's producer uses."""
    return zlib.crc32(course_id.encode()) % partitions


@dataclass
class PartitionTables:
    courses: dict[str, Course] = field(default_factory=dict)
    seats: dict[str, str] = field(default_factory=dict)
    decided: dict[str, str] = field(default_factory=dict)


def fold(tables: PartitionTables, event: object, secret: bytes, today: date) -> None:
    """One event of course-events into the tables of its partition."""
    if isinstance(event, CourseCreated | StudentSignedUp):
        course = tables.courses.get(event.course_id)
        evolved = evolve(course, event)
        if evolved is not None:
            tables.courses[event.course_id] = evolved
    if isinstance(event, StudentSignedUp):
        # v3 events carry their seat key (the address is sealed); older ones the address.
        key = event.seat_key or seat_key(secret, event.course_id, event.email)
        tables.seats[key] = event.signup_id
    outcome = values.outcome_of(event)  # type: ignore[arg-type]
    if outcome is not None:
        day = event.occurred_at.date()  # type: ignore[attr-defined]
        key = values.memory_key(day, event.signup_id)  # type: ignore[attr-defined]
        if not values.expired(key, today):
            tables.decided.setdefault(key, outcome.encode())


def partitions_to_build(admin: AdminClient, decided_changelog: str, events_topic: str,
                        owned: set[int]) -> set[int]:
    """Owned partitions whose decided_signups changelog was never written."""
    if not owned:
        return set()
    events_meta = admin.list_topics(events_topic, timeout=30).topics[events_topic]
    event_tps = [TopicPartition(events_topic, p) for p in events_meta.partitions]
    decided_tps = [TopicPartition(decided_changelog, p) for p in sorted(owned)]
    ends = end_offsets(admin, event_tps + decided_tps, IsolationLevel.READ_UNCOMMITTED)
    if not any(ends[(events_topic, tp.partition)] for tp in event_tps):
        return set()
    return {p for p in owned if ends[(decided_changelog, p)] == 0}


def build(kafka: Mapping[str, str], app_id: str, events_topic: str, partitions: set[int],
          total_partitions: int, changelogs: Mapping[str, str], encode: Encoder,
          secret: bytes, today: date) -> int:
    """Fold course-events into the tables of `partitions` and commit their changelogs."""
    started = time.monotonic()
    admin = AdminClient(dict(kafka))
    meta = admin.list_topics(events_topic, timeout=30).topics[events_topic]
    tps = [TopicPartition(events_topic, p) for p in meta.partitions]
    ends = settled_end_offsets(admin, tps)
    tables = {p: PartitionTables() for p in partitions}
    events = 0
    consumer = Consumer({**kafka, "group.id": f"{app_id}-migrate",
                         "enable.auto.commit": False, "isolation.level": "read_committed"})
    try:
        for messages in read_to_end(consumer, dict.fromkeys(ends, 0), ends):
            for msg in messages:
                value = msg.value()
                if value is None:
                    continue
                try:
                    event = decode(value)
                except DecodeError:
                    continue  # not ours to judge here; the projector dead-letters it
                course_id = getattr(event, "course_id", "")
                p = command_partition(course_id, total_partitions)
                if p in tables:
                    fold(tables[p], event, secret, today)
                    events += 1
    finally:
        consumer.close()
    for p, built in sorted(tables.items()):
        _commit_partition(kafka, app_id, p, built, changelogs, encode)
    log.info("tables built from course-events: %d events in %.1fs", events,
             time.monotonic() - started, extra={"kind": "migrate"})
    return events


def _commit_partition(kafka: Mapping[str, str], app_id: str, partition: int,
                      tables: PartitionTables, changelogs: Mapping[str, str],
                      encode: Encoder) -> None:
    producer = Producer({
        **kafka, "transactional.id": f"{app_id}-migrate-{partition}",
        "transaction.timeout.ms": 600_000, "linger.ms": 20, "acks": "all",
    })
    producer.init_transactions(60)
    producer.begin_transaction()
    rows: list[tuple[str, object, object]] = [
        *(("courses", cid, values.course_to_value(c)) for cid, c in tables.courses.items()),
        *(("seat_holders", k, v) for k, v in tables.seats.items()),
        *(("decided_signups", k, v) for k, v in tables.decided.items()),
        ("decided_signups", values.MIGRATED_KEY, "built from course-events"),
    ]
    for table, key, value in rows:
        while True:
            try:
                key_bytes, value_bytes = encode(table, key, value)
                producer.produce(changelogs[table], key=key_bytes, value=value_bytes,
                                 partition=partition)
                break
            except BufferError:
                producer.poll(0.1)
        producer.poll(0)
    producer.commit_transaction(600)
