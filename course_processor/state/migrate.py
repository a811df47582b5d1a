"""Build the processor's tables from course-events: after an upgrade, or a lost changelog.

The event log holds every decision ever committed, so the tables follow from it:
`fold` gives, event by event, what the handler (deciding/handler.py) wrote when it
decided that event, encoded the same way: courses and their counters, a seat key per
student who ever held a place (a StudentSignedUp's or StudentWaitlisted's `seat_key`
since v3, else the keyed hash of its clear e-mail; "~" + the sign-up id once
withdrawn), the live places and waiting lists of a registration term, and the
decisions of the last MEMORY_DAYS days.

When. A partition's `decided_signups` holds `BUILT_KEY` once this version has built
it (the rebuild writes it; on a fresh deployment, the first assignment builds every
partition from the still empty log, which only writes the mark). After the restore,
every owned partition without it is built: one whose changelogs were never written
(an upgrade from the in-memory processor, or lost changelogs), one written by the
processor before the registration term (no `places` or `waiting`, so its enrolled
students could never withdraw), and one whose earlier rebuild crashed.

How. Each partition is written to its changelogs in ONE Kafka transaction that also
deletes every key its restored state holds and the rebuild does not (an expired
decision not yet forgotten, an earlier mark, anything a lost or older state had), and
that ends with the mark: the partition is then exactly the rebuild, or, after a crash,
untouched and built again at the next start. A crash leaves that transaction open
until its timeout, and an open transaction stops the restore (it waits for the
changelogs to settle); `fence_unfinished` therefore aborts a dangling rebuild of an
owned partition before the restore reads.
"""

from __future__ import annotations

import logging
import time
import zlib
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from functools import partial
from typing import Any

from confluent_kafka import Consumer, IsolationLevel, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from course_processor.deciding import values
from course_processor.deciding.domain import Course, Place, evolve
from course_processor.deciding.handler import (
    WITHDRAWN,
    place_from_value,
    place_key,
    place_to_value,
    waiting_key,
)
from course_processor.state.local import LocalState
from schemas.codec import DecodeError, decode
from schemas.messages import (
    CourseChanged,
    CourseChangeRejected,
    Event,
    StudentPromoted,
    StudentSignedUp,
    StudentWaitlisted,
    StudentWithdrew,
    WithdrawalRejected,
)
from schemas.pseudonyms import seat_key
from service_kit.topic_ends import end_offsets, read_to_end, settled_end_offsets

log = logging.getLogger(__name__)

# (table, key, value) -> the changelog record's key and value, as the table writes them.
Encoder = Callable[[str, object, object], tuple[bytes, bytes]]
BUILT_VALUE = "built from course-events, with the registration term"
# How long a transaction pending on an owned changelog may take to settle by itself
# before fence_unfinished takes it for a rebuild cut short.
SETTLE_SECONDS = 2.0


def utc_today() -> date:
    return datetime.now(UTC).date()


def command_partition(course_id: str, partitions: int) -> int:
    """The course-commands partition of a course: librdkafka's consistent partitioner
    (CRC-32 of the key), which the command API's producer uses."""
    return zlib.crc32(course_id.encode()) % partitions


@dataclass
class PartitionTables:
    """One partition's tables as the handler keeps them (handler.py says what each holds)."""

    courses: dict[str, Course] = field(default_factory=dict)
    seats: dict[str, str] = field(default_factory=dict)
    decided: dict[str, str] = field(default_factory=dict)
    places: dict[str, dict[str, Any]] = field(default_factory=dict)
    waiting: dict[str, str] = field(default_factory=dict)

    def rows(self) -> Iterable[tuple[str, str, object]]:
        """Every entry as (table, key, value), the value as the handler writes it."""
        yield from ((values.COURSES, cid, values.course_to_value(c))
                    for cid, c in self.courses.items())
        for table, entries in ((values.SEATS, self.seats), (values.DECIDED, self.decided),
                               (values.PLACES, self.places), (values.WAITING, self.waiting)):
            yield from ((table, k, v) for k, v in entries.items())


def fold(tables: PartitionTables, event: object, secret: bytes, today: date) -> None:
    """One event of course-events into the tables of its partition: what the handler
    wrote when it decided that event. A decision the handler could not have made (an
    older processor's redelivered sign-up) changes nothing."""
    if isinstance(event, StudentSignedUp | StudentWaitlisted):
        key = event.seat_key or seat_key(secret, event.course_id, event.email)
        if tables.seats.get(key) in (event.signup_id, WITHDRAWN + event.signup_id):
            return  # the handler answers a repeat of the place's sign-up with nothing
    course = tables.courses.get(event.course_id)  # type: ignore[attr-defined]
    evolved = evolve(course, event)  # type: ignore[arg-type]
    if evolved is not None:
        tables.courses[evolved.course_id] = evolved
    _places(tables, event, secret, evolved)
    remembered = _memory(event)  # type: ignore[arg-type]
    if remembered is not None:
        name, outcome = remembered
        key = values.memory_key(event.occurred_at.date(), name)  # type: ignore[attr-defined]
        if not values.expired(key, today):
            tables.decided.setdefault(key, outcome.encode())


def _places(tables: PartitionTables, event: object, secret: bytes,
            course: Course | None) -> None:
    """Seat keys, places and waiting entries after a sign-up, withdrawal or promotion."""
    if isinstance(event, StudentSignedUp | StudentWaitlisted) and course is not None:
        key = event.seat_key or seat_key(secret, event.course_id, event.email)
        # A waiting place's ticket: the course's tickets after this one was issued.
        ticket = course.tickets if isinstance(event, StudentWaitlisted) else None
        tables.seats[key] = event.signup_id
        tables.places[place_key(event.course_id, event.signup_id)] = place_to_value(
            Place(event.signup_id, key, event.date_of_birth, ticket))
        if ticket is not None:
            tables.waiting[waiting_key(event.course_id, ticket)] = event.signup_id
    elif isinstance(event, StudentWithdrew | StudentPromoted):
        where = place_key(event.course_id, event.signup_id)
        place = place_from_value(event.signup_id, tables.places.pop(where, None))
        if place is None:
            return
        if place.ticket is not None:
            tables.waiting.pop(waiting_key(event.course_id, place.ticket), None)
        if isinstance(event, StudentWithdrew):
            tables.seats[place.seat_key] = WITHDRAWN + event.signup_id
        else:
            tables.places[where] = place_to_value(
                Place(place.signup_id, place.seat_key, place.date_of_birth))


def _memory(event: Event) -> tuple[str, values.SignupOutcome] | None:
    """What the handler remembers of a decision: (sign-up id or command id, outcome)."""
    outcome = values.outcome_of(event)
    if outcome is not None:
        return event.signup_id, outcome  # type: ignore[union-attr]
    # A withdrawal's and a change's events carry their command's id as causation id.
    if isinstance(event, StudentWithdrew):
        return event.causation_id, values.SignupOutcome("withdrawn", event.from_)
    if isinstance(event, WithdrawalRejected | CourseChangeRejected):
        return event.causation_id, values.SignupOutcome("rejected", event.reason)
    if isinstance(event, CourseChanged):
        return event.causation_id, values.SignupOutcome("changed", str(event.capacity))
    return None


def unbuilt(state: LocalState, owned: set[int], encode: Encoder) -> set[int]:
    """Owned partitions whose restored state lacks the mark of a build by this version."""
    mark, _ = encode(values.DECIDED, values.BUILT_KEY, BUILT_VALUE)
    return {p for p in owned if state.get(p, values.DECIDED, mark) is None}


def fence_unfinished(kafka: Mapping[str, str], app_id: str, changelogs: Iterable[str],
                     owned: set[int]) -> set[int]:
    """Abort the open rebuild transaction of every owned partition whose changelogs have
    one pending, so that the restore need not wait for it to time out (10 minutes).

    A transaction pending there is either the previous owner's, which the new
    assignment's producers have fenced already and which therefore settles within
    moments, or a rebuild that crashed or lost the partition. What is still pending
    after SETTLE_SECONDS is fenced: a producer started with the rebuild's
    transactional.id aborts it. Returns the partitions fenced.
    """
    if not owned:
        return set()
    admin = AdminClient(dict(kafka))
    tps = [TopicPartition(topic, p) for topic in changelogs for p in sorted(owned)]
    deadline = time.monotonic() + SETTLE_SECONDS
    while True:
        stable = end_offsets(admin, tps, IsolationLevel.READ_COMMITTED)
        high = end_offsets(admin, tps, IsolationLevel.READ_UNCOMMITTED)
        tps = [tp for tp in tps if stable[(tp.topic, tp.partition)]
               < high[(tp.topic, tp.partition)]]
        if not tps or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    pending = {tp.partition for tp in tps}
    for partition in sorted(pending):
        _producer(kafka, app_id, partition)  # initialising it is the fencing
    if pending:
        log.warning("a rebuild from course-events may have been cut short: fenced it",
                    extra={"kind": "migrate", "partitions": sorted(pending)})
    return pending


def build(kafka: Mapping[str, str], app_id: str, events_topic: str, partitions: set[int],
          total_partitions: int, changelogs: Mapping[str, str], encode: Encoder,
          secret: bytes, today: date,
          existing: Callable[[int, str], Iterable[bytes]] = lambda p, t: ()) -> int:
    """Fold course-events into the tables of `partitions` and commit their changelogs.

    `existing(partition, table)` gives the keys the table holds now (the restored local
    state, which is the committed changelog): those the rebuild does not write are
    deleted in the same transaction.
    """
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
    records = {p: changelog_records(built, encode, partial(existing, p))
               for p, built in tables.items()}
    # One transaction per partition, side by side: each waits mostly on the broker.
    with ThreadPoolExecutor(min(8, len(records) or 1)) as pool:
        for done in [pool.submit(_commit_partition, kafka, app_id, p, rows, changelogs)
                     for p, rows in sorted(records.items())]:
            done.result()
    log.info("tables built from course-events: %d events for %d partitions in %.1fs",
             events, len(partitions), time.monotonic() - started, extra={"kind": "migrate"})
    return events


def _producer(kafka: Mapping[str, str], app_id: str, partition: int) -> Producer:
    """The rebuild's producer of one partition, its transactions initialised: a rebuild
    of the same partition still open elsewhere is aborted and fenced."""
    producer = Producer({
        **kafka, "transactional.id": f"{app_id}-migrate-{partition}",
        "transaction.timeout.ms": 600_000, "linger.ms": 20, "acks": "all",
    })
    producer.init_transactions(60)
    return producer


def changelog_records(tables: PartitionTables, encode: Encoder,
                      existing: Callable[[str], Iterable[bytes]]
                      ) -> list[tuple[str, bytes, bytes | None]]:
    """A rebuilt partition's changelog records, (table, key, value): a deletion of every
    key `existing(table)` holds that the rebuild does not write, every entry of the
    rebuild, and the mark last, the one record that says the partition is whole."""
    rows: list[tuple[str, bytes, bytes | None]] = [
        (table, *encode(table, key, value)) for table, key, value in tables.rows()]
    written = {(table, key) for table, key, _ in rows}
    gone: list[tuple[str, bytes, bytes | None]] = [
        (table, key, None) for table in values.TABLES
        for key in existing(table) if (table, key) not in written]
    return [*gone, *rows, (values.DECIDED, *encode(values.DECIDED, values.BUILT_KEY,
                                                    BUILT_VALUE))]


def _commit_partition(kafka: Mapping[str, str], app_id: str, partition: int,
                      records: list[tuple[str, bytes, bytes | None]],
                      changelogs: Mapping[str, str]) -> None:
    producer = _producer(kafka, app_id, partition)
    producer.begin_transaction()
    for table, key, value in records:
        while True:
            try:
                producer.produce(changelogs[table], key=key, value=value, partition=partition)
                break
            except BufferError:
                producer.poll(0.1)
        producer.poll(0)
    producer.commit_transaction(600)
