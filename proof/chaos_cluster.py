"""What the chaos suite asks a Kafka cluster: who leads the project's partitions, and
whether a restarted broker is back in every in-sync replica set it belongs to."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Iterable
from typing import Any

from confluent_kafka.admin import AdminClient

from schemas import topics
from service_kit.kafka_auth import client_config


def _metadata(bootstrap: str) -> Any:
    # log_level 0: a broker the suite just killed refuses connections; that is the point.
    admin = AdminClient({**client_config(), "bootstrap.servers": bootstrap, "log_level": 0})
    return admin.list_topics(timeout=10)


def leaders(bootstrap: str, names: Iterable[str] = (topics.COMMANDS, topics.EVENTS)
            ) -> Counter[int]:
    """Partitions led per broker id, over the given topics."""
    found = _metadata(bootstrap).topics
    return Counter(p.leader for name in names if name in found
                   for p in found[name].partitions.values() if p.leader >= 0)


def busiest_leader(bootstrap: str) -> tuple[int, int, int]:
    """(broker id, partitions it leads, partitions in all) over course-commands and
    course-events: the broker whose loss moves the most of the system's traffic."""
    counts = leaders(bootstrap)
    node, led = max(sorted(counts.items()), key=lambda item: item[1])
    return node, led, sum(counts.values())


def out_of_isr(bootstrap: str, node_id: int) -> list[str]:
    """topic/partition of every partition that has node_id as a replica but not in its ISR."""
    found = _metadata(bootstrap).topics
    return [f"{name}/{pid}" for name, meta in sorted(found.items())
            for pid, p in sorted(meta.partitions.items())
            if node_id in p.replicas and node_id not in p.isrs]


async def wait_in_isr(bootstrap: str, node_id: int,
                      timeout: float) -> tuple[float | None, list[str]]:
    """Seconds until node_id is in the ISR of every partition it replicates (None: not
    within timeout), and the partitions it was still missing from at the end."""
    began = time.monotonic()
    missing: list[str] = ["(no answer yet)"]
    while time.monotonic() - began < timeout:
        try:
            missing = await asyncio.to_thread(out_of_isr, bootstrap, node_id)
        except Exception as exc:  # noqa: BLE001 - a cluster in motion: ask again
            missing = [f"(metadata: {exc})"]
        if not missing:
            return time.monotonic() - began, []
        await asyncio.sleep(0.5)
    return None, missing


def incomplete_isrs(bootstrap: str) -> list[str]:
    """topic/partition of every partition whose ISR lacks one of its replicas."""
    found = _metadata(bootstrap).topics
    return [f"{name}/{pid}" for name, meta in sorted(found.items())
            for pid, p in sorted(meta.partitions.items()) if set(p.isrs) != set(p.replicas)]


def elect_preferred_leaders(bootstrap: str) -> None:
    """What Kafka's own leader rebalancing does within its check interval (300 s): give
    each partition back to its preferred replica. Partitions already led by it answer
    ELECTION_NOT_NEEDED, which is no error here."""
    from confluent_kafka import ElectionType

    admin = AdminClient({**client_config(), "bootstrap.servers": bootstrap, "log_level": 0})
    admin.elect_leaders(ElectionType.PREFERRED, None).result(timeout=30)


async def healthy(bootstrap: str, timeout: float) -> float:
    """Wait until every replica is in sync, then hand leadership back to the preferred
    replicas: the cluster a scenario starts from, not the leftovers of the last one.
    Seconds it took; TimeoutError when the replicas are not in sync within timeout."""
    began = time.monotonic()
    while True:
        try:
            lagging = await asyncio.to_thread(incomplete_isrs, bootstrap)
        except Exception as exc:  # noqa: BLE001 - a cluster in motion: ask again
            lagging = [f"(metadata: {exc})"]
        if not lagging:
            break
        if time.monotonic() - began > timeout:
            raise TimeoutError(f"replicas still out of sync after {timeout:.0f}s: {lagging[:5]}")
        await asyncio.sleep(0.5)
    # Best effort: the scenario still runs on a cluster whose leadership stays uneven.
    with contextlib.suppress(Exception):
        await asyncio.to_thread(elect_preferred_leaders, bootstrap)
    return time.monotonic() - began
