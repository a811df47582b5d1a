"""One-off migration: copy an event log written before sealing into a topic where every
e-mail address and name is sealed under its student's key.

Run (with the processor stopped, so nothing is written to the source meanwhile):
    python -m command_api.reseal --source course-events --target course-events.sealed
Environment: KAFKA_BOOTSTRAP_SERVERS, DATABASE_URL (the key store), PSEUDONYM_SECRET.

Each record is copied to the same partition of the target, in order, with its key and
headers. A `StudentSignedUp` or `SignUpRejected` that still carries a clear `email`
becomes the current schema version: `email` and `name` empty, both sealed under the
student's key (created in `student_keys` as the command API would), with its seat key.
Everything else is copied byte for byte. The target is written in Kafka transactions
and must not exist or be empty (a crashed copy: delete the target, run again). It
prints what it copied as JSON. The rest of the procedure (swapping the readers over and
deleting the clear topic) is in the README, "Personal data and erasure".
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from collections.abc import Callable

import psycopg
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from command_api.keys import DataKey, key_for_sync
from schemas.codec import DecodeError, decode, encode
from schemas.messages import SignUpRejected, StudentSignedUp
from schemas.personal import seal, student_hash
from schemas.pseudonyms import seat_key
from service_kit.kafka_auth import client_config
from service_kit.topic_ends import end_offsets, read_to_end

COMMIT_EVERY = 5_000
# Give up when no record came for this long while partitions still lack their end.
IDLE_LIMIT_SECONDS = 60.0

KeyFor = Callable[[str], DataKey]


def resealed(value: bytes, secret: bytes, key_for: KeyFor) -> bytes | None:
    """The record's value with its personal data sealed; None to copy it unchanged."""
    try:
        event = decode(value)
    except DecodeError:
        return None  # not ours to judge: copied as it is (a DLQ's business)
    if not isinstance(event, StudentSignedUp | SignUpRejected) or not event.email \
            or event.key_id is not None:
        return None
    key = key_for(student_hash(secret, event.email))
    return encode(dataclasses.replace(
        event, email="", name="", key_id=key.key_id,
        email_sealed=seal(key.key, event.signup_id, "email", event.email),
        name_sealed=seal(key.key, event.signup_id, "name", event.name),
        seat_key=event.seat_key or seat_key(secret, event.course_id, event.email)))


def copy(servers: str, database_url: str, secret: bytes, source: str, target: str) -> dict:
    admin = AdminClient({**client_config(), "bootstrap.servers": servers})
    partitions = sorted(admin.list_topics(source, timeout=30).topics[source].partitions)
    _create_target(admin, target, len(partitions))
    consumer = Consumer({**client_config(),
                         "bootstrap.servers": servers, "group.id": f"reseal-{target}",
                         "isolation.level": "read_committed", "enable.auto.commit": False})
    # The source has no writer now (the processor is stopped), so its high watermarks
    # are where it ends.
    ends = end_offsets(admin, [TopicPartition(source, p) for p in partitions])
    producer = Producer({**client_config(),
                         "bootstrap.servers": servers, "transactional.id": f"reseal-{target}",
                         "acks": "all", "linger.ms": 20})
    producer.init_transactions(60)
    counts = {"copied": 0, "sealed": 0}
    started = time.monotonic()
    with psycopg.connect(database_url, autocommit=True) as conn:
        def key_for(student: str) -> DataKey:
            return key_for_sync(conn, student)

        producer.begin_transaction()
        for messages in read_to_end(consumer, dict.fromkeys(ends, 0), ends, 1000, 1.0,
                                    idle_limit=IDLE_LIMIT_SECONDS):
            for msg in messages:
                value = msg.value()
                new = resealed(value, secret, key_for) if value else None
                counts["sealed"] += new is not None
                producer.produce(target, key=msg.key(), value=new if new is not None else value,
                                 partition=msg.partition() or 0, headers=msg.headers())
                counts["copied"] += 1
                if counts["copied"] % COMMIT_EVERY == 0:
                    producer.commit_transaction(120)
                    producer.begin_transaction()
        producer.commit_transaction(120)
    consumer.close()
    return {**counts, "source": source, "target": target,
            "seconds": round(time.monotonic() - started, 1)}


def _create_target(admin: AdminClient, target: str, partitions: int) -> None:
    existing = admin.list_topics(timeout=30).topics
    if target in existing:
        consumer = Consumer({**client_config(), "bootstrap.servers": admin_servers(admin),
                             "group.id": "reseal"})
        try:
            ends = [consumer.get_watermark_offsets(TopicPartition(target, p), timeout=30)[1]
                    for p in existing[target].partitions]
        finally:
            consumer.close()
        if any(ends):
            raise SystemExit(f"{target} is not empty: delete it and run again")
        return
    brokers = len(admin.list_topics(timeout=30).brokers)
    topic = NewTopic(target, partitions, min(3, brokers),
                     config={"retention.ms": "-1", "retention.bytes": "-1"})
    admin.create_topics([topic])[target].result(60)


def admin_servers(admin: AdminClient) -> str:
    meta = admin.list_topics(timeout=30)
    return ",".join(f"{b.host}:{b.port}" for b in meta.brokers.values())


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m command_api.reseal")
    parser.add_argument("--source", required=True)
    parser.add_argument("--target", required=True)
    args = parser.parse_args()
    try:
        servers, database_url = os.environ["KAFKA_BOOTSTRAP_SERVERS"], os.environ["DATABASE_URL"]
        secret = os.environ["PSEUDONYM_SECRET"].encode()
    except KeyError as exc:
        sys.exit(f"reseal: {exc.args[0]} is not set")
    print(json.dumps(copy(servers, database_url, secret, args.source, args.target)))


if __name__ == "__main__":
    main()
