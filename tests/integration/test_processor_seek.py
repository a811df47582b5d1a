"""The processor's seek to committed offsets, against a real broker.

faust throws away records fetched while a rebalance stopped the flow and relies on a
seek to the committed offsets to fetch them again. aiokafka's seek_to_committed seeks
only partitions committed above offset 0: a partition committed at 0, or with no
commit, stayed where the dropped fetch had left it, and the worker read on from
there (course_processor/faust_eos/pacing.py, seek_to_committed).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.structs import OffsetAndMetadata
from confluent_kafka.admin import AdminClient, NewTopic

from course_processor.faust_eos.pacing import seek_to_committed
from service_kit.kafka_auth import KafkaAuth, client_config
from tests.support import kafka_servers

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

RECORDS = {0: 10, 1: 6, 2: 4}


def _topic(servers: str) -> str:
    name = f"test-seek-{uuid.uuid4().hex[:10]}"
    admin = AdminClient({**client_config(), "bootstrap.servers": servers})
    for future in admin.create_topics([NewTopic(name, len(RECORDS), 1)]).values():
        future.result(timeout=30)
    return name


async def _positions_after(servers: str, topic: str, reset: str, *, ours: bool
                           ) -> tuple[dict[int, int | None], dict[int, int]]:
    """A consumer of a group that committed partition 0 at 0 and partition 1 at 2
    fetches everything (positions at the ends), then seeks to the committed offsets,
    with the processor's seek (`ours`) or aiokafka's: the committed offsets and where
    each partition then is."""
    tps = [TopicPartition(topic, p) for p in RECORDS]
    async with _consumer(servers, tps, reset) as consumer:
        # Partition 2 gets no commit at all.
        await consumer.commit({tps[0]: OffsetAndMetadata(0, ""),
                               tps[1]: OffsetAndMetadata(2, "")})
        await consumer.seek_to_beginning(*tps)
        got = {p: 0 for p in RECORDS}
        while any(got[p] < n for p, n in RECORDS.items()):
            for tp, batch in (await consumer.getmany(timeout_ms=1000)).items():
                got[tp.partition] += len(batch)
        assert {p: await consumer.position(tp) for p, tp in enumerate(tps)} == RECORDS

        if ours:
            committed = await seek_to_committed(consumer, topic)
        else:
            committed = await consumer.seek_to_committed()
        return ({tp.partition: offset for tp, offset in committed.items()},
                {p: await consumer.position(tp) for p, tp in enumerate(tps)})


@asynccontextmanager
async def _consumer(servers: str, tps: list[TopicPartition], reset: str
                    ) -> AsyncIterator[AIOKafkaConsumer]:
    """A started consumer of a new group, assigned `tps`, committing nothing itself."""
    consumer = AIOKafkaConsumer(bootstrap_servers=servers,
                                group_id=f"test-seek-{uuid.uuid4().hex[:10]}",
                                enable_auto_commit=False, auto_offset_reset=reset,
                                **KafkaAuth.from_env().aiokafka())
    await consumer.start()
    try:
        consumer.assign(tps)
        yield consumer
    finally:
        await consumer.stop()


async def _produce(servers: str, topic: str) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=servers, acks="all",
                                **KafkaAuth.from_env().aiokafka())
    await producer.start()
    try:
        for partition, n in RECORDS.items():
            for i in range(n):
                await producer.send_and_wait(topic, b"r%d" % i, partition=partition)
    finally:
        await producer.stop()


@pytest.fixture
def topic() -> str:
    servers = kafka_servers()
    name = _topic(servers)
    asyncio.run(_produce(servers, name))
    return name


def test_aiokafka_alone_leaves_a_partition_committed_at_0_or_never_where_it_was(
        topic: str) -> None:
    # The premise: what the processor's seek repairs.
    committed, positions = asyncio.run(_positions_after(kafka_servers(), topic, "earliest",
                                                        ours=False))
    assert committed == {0: 0, 1: 2, 2: None}
    assert positions == {0: RECORDS[0], 1: 2, 2: RECORDS[2]}


def test_every_partition_goes_back_to_its_committed_offset_or_the_reset_policys(
        topic: str) -> None:
    committed, positions = asyncio.run(_positions_after(kafka_servers(), topic, "earliest",
                                                        ours=True))
    assert committed == {0: 0, 1: 2, 2: None}
    assert positions == {0: 0, 1: 2, 2: 0}


def test_with_latest_a_partition_never_committed_goes_to_its_end(topic: str) -> None:
    committed, positions = asyncio.run(_positions_after(kafka_servers(), topic, "latest",
                                                        ours=True))
    assert committed == {0: 0, 1: 2, 2: None}
    assert positions == {0: 0, 1: 2, 2: RECORDS[2]}


def test_only_the_named_topic_is_moved_beyond_what_aiokafka_does(topic: str) -> None:
    # The changelogs are assigned too, but paused and read by the restore: named
    # another topic, the processor's seek does what aiokafka's does.
    async def other() -> dict[int, int]:
        tps = [TopicPartition(topic, p) for p in RECORDS]
        async with _consumer(kafka_servers(), tps, "earliest") as consumer:
            await consumer.commit({tps[0]: OffsetAndMetadata(0, "")})
            for tp, n in zip(tps, RECORDS.values(), strict=True):
                consumer.seek(tp, n)
            await seek_to_committed(consumer, "some-other-topic")
            return {p: await consumer.position(tp) for p, tp in enumerate(tps)}
    assert asyncio.run(other()) == RECORDS
