"""The read side on its own: `python -m proof.bench_projections` (no test runs it).

Starts a private Kafka broker and PostgreSQL with the stack's own code, on free ports in
a temporary directory, so that no synthetic event ever lands in a real event log (it
is kept forever). Then:
1. writes --events synthetic events (courses, then decisions, 4 in 5 accepted);
2. reads them with a plain confluent-kafka consume-and-decode loop: the ceiling;
3. replays them (`projections.replay.rebuild`: shadow tables, then the swap);
4. writes more decisions, up to --signups in all, and times the live projector
   (`python -m projections.projector`) catching up on them;
5. measures the query API (`python -m projections.api`) client-side: p50/p99 latency
   of GET /signups/{id}, /courses/{id}/stats and /stats, one request at a time and
   with --concurrency requests in flight.
Results go to $RUN_DIR/bench/projections.json (RUN_DIR as for `make up`) and stdout.
Options: --events (200000), --signups (1000000), --requests (3000), --concurrency (4).
The client runs on the same machine as the server, PostgreSQL and Kafka; the concurrent
run is repeated against GET /healthz as a baseline of what HTTP alone costs there.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psycopg
from confluent_kafka import Producer

from projections.replay import rebuild
from projections.settings import ReplaySettings
from proof import bench_kafka as bk
from proof.bench_stack import results_dir
from schemas import codec, topics
from schemas.messages import CourseCreated, Event, SignUpRejected, StudentSignedUp
from service_kit.kafka_auth import client_config
from stack.config import ROOT, StackConfig
from stack.infra import dependencies
from stack.probes import http_ok
from stack.waiting import wait_until


@dataclass
class Workload:
    rng: random.Random
    courses: list[str]
    sample: list[str] = field(default_factory=list)  # some sign-up ids, for GET /signups
    decisions: int = 0

    def course_events(self) -> Iterator[Event]:
        now = datetime.now(UTC)
        for course in self.courses:
            yield CourseCreated(str(uuid.uuid4()), "CourseCreated", now, course, "bench",
                                "bench", "Benchmarking", "Bench", 1_000_000)

    def decision_events(self, n: int) -> Iterator[Event]:
        now = datetime.now(UTC)
        for _ in range(n):
            course, signup = self.rng.choice(self.courses), str(uuid.uuid4())
            self.decisions += 1
            if len(self.sample) < 5000:
                self.sample.append(signup)
            if self.rng.random() < 0.8:
                dob = date(1950, 1, 1) + timedelta(days=self.rng.randint(0, 22_000))
                yield StudentSignedUp(str(uuid.uuid4()), "StudentSignedUp", now, course,
                                      "bench", "bench", signup, "x@example.org", "X", dob, 1,
                                      1_000_000)
            else:
                yield SignUpRejected(str(uuid.uuid4()), "SignUpRejected", now, course, "bench",
                                     "bench", signup, "x@example.org", "X", "course_full")


def produce(bootstrap: str, events: Iterator[Event]) -> tuple[int, float]:
    producer = Producer({**client_config(), "bootstrap.servers": bootstrap, "linger.ms": 20,
                         "batch.size": 1_000_000, "compression.type": "lz4",
                         "queue.buffering.max.messages": 500_000})
    started, n = time.perf_counter(), 0
    for event in events:
        value = codec.encode(event)
        while True:
            try:
                producer.produce(topics.EVENTS, key=event.course_id.encode(), value=value)
                break
            except BufferError:
                producer.poll(0.05)
        n += 1
    if producer.flush(120) != 0:
        raise RuntimeError("events not acknowledged by the broker")
    return n, time.perf_counter() - started


def caught_up(database_url: str, ends: dict[int, int]) -> bool:
    with psycopg.connect(database_url) as conn:
        rows = conn.execute("SELECT partition, next_offset FROM projection_offsets"
                            " WHERE projection = 'views'").fetchall()
    stored: dict[int, int] = dict(rows)
    return all(stored.get(p, 0) >= end for p, end in ends.items())


def percentiles(latencies: list[float]) -> dict[str, float]:
    q = statistics.quantiles(latencies, n=100)
    return {"requests": len(latencies), "p50_ms": round(q[49] * 1000, 2),
            "p99_ms": round(q[98] * 1000, 2), "max_ms": round(max(latencies) * 1000, 2)}


def paths(work: Workload, n: int) -> list[str]:
    rng = random.Random(1)
    out = []
    for i in range(n):
        kind = i % 3
        out.append(f"/signups/{rng.choice(work.sample)}" if kind == 0 else
                   f"/courses/{rng.choice(work.courses)}/stats" if kind == 1 else "/stats")
    return out


def sequential(url: str, todo: list[str], headers: dict[str, str]) -> dict[str, float]:
    latencies = []
    with httpx.Client(base_url=url, headers=headers) as client:
        for path in todo:
            started = time.perf_counter()
            response = client.get(path)
            latencies.append(time.perf_counter() - started)
            if response.status_code != 200:
                raise RuntimeError(f"{path}: {response.status_code}")
    return percentiles(latencies)


async def concurrent(url: str, todo: list[str], in_flight: int,
                     headers: dict[str, str]) -> dict[str, float]:
    latencies: list[float] = []
    queue = list(reversed(todo))
    limits = httpx.Limits(max_connections=in_flight, max_keepalive_connections=in_flight)

    async def worker(client: httpx.AsyncClient) -> None:
        while queue:
            path = queue.pop()
            started = time.perf_counter()
            response = await client.get(path)
            latencies.append(time.perf_counter() - started)
            if response.status_code != 200:
                raise RuntimeError(f"{path}: {response.status_code}")

    started = time.perf_counter()
    async with httpx.AsyncClient(base_url=url, limits=limits, headers=headers) as client:
        await asyncio.gather(*(worker(client) for _ in range(in_flight)))
    seconds = time.perf_counter() - started
    return {**percentiles(latencies), "in_flight": in_flight,
            "requests_per_s": round(len(latencies) / seconds)}


def spawn(module: str, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", module], cwd=ROOT, stdout=out,
                                stderr=out, env={**os.environ, **env})


def run(args: argparse.Namespace, config: StackConfig) -> dict[str, Any]:
    bootstrap, database = config.kafka_bootstrap, config.database_url
    env = {"KAFKA_BOOTSTRAP_SERVERS": bootstrap, "DATABASE_URL": database,
           "PROJECTOR_PORT": str(config.projector_port),
           "QUERY_API_PORT": str(config.query_api_port), "LOG_LEVEL": "WARNING",
           "ADMIN_TOKEN": config.admin_token(), "ANALYST_TOKEN": config.analyst_token()}
    analyst = {"Authorization": f"Bearer {config.analyst_token()}"}
    work = Workload(random.Random(42), [f"bench-{i:05d}" for i in range(args.courses)])
    results: dict[str, Any] = {"cpus": os.cpu_count(), "partitions": config.partitions}

    print(f"writing {args.events:,} events ...", flush=True)
    n, seconds = produce(bootstrap, _chain(work.course_events(),
                                           work.decision_events(args.events - args.courses)))
    results["produce"] = {"events": n, "seconds": round(seconds, 2)}
    print("plain consume-and-decode loop ...", flush=True)
    results["plain_consume_decode"] = bk.consume_and_decode(bootstrap)
    print(json.dumps(results["plain_consume_decode"]), flush=True)
    print("replay ...", flush=True)
    replayed = rebuild(ReplaySettings(kafka_bootstrap_servers=bootstrap, database_url=database,
                                      log_level="WARNING"), swap=True, progress=True)
    results["replay"] = {"events": replayed.events, "seconds": round(replayed.seconds, 2),
                         "events_per_s": round(replayed.rate),
                         "includes": "migrations check, shadow tables, ANALYZE and swap"}
    print(json.dumps(results["replay"]), flush=True)

    more = max(0, args.signups - work.decisions)
    print(f"writing {more:,} more decisions, then the live projector catches up ...", flush=True)
    produce(bootstrap, work.decision_events(more))
    ends = bk.end_offsets(bootstrap, topics.EVENTS)
    processes = [spawn("projections.projector", env, config.run_dir / "projector.log")]
    started = time.perf_counter()
    wait_until(lambda: caught_up(database, ends), 1800, "the projector")
    seconds = time.perf_counter() - started
    results["projector_live"] = {"events": more, "seconds": round(seconds, 2),
                                 "events_per_s": round(more / seconds) if seconds else None,
                                 "includes": "process start and partition assignment"}
    print(json.dumps(results["projector_live"]), flush=True)

    processes.append(spawn("projections.api", env, config.run_dir / "api.log"))
    url = config.query_url
    try:
        wait_until(lambda: http_ok(url + "/readyz"), 60, "the query API")
        sequential(url, paths(work, 300), analyst)  # warm-up: connections, prepared statements
        with psycopg.connect(database) as conn:
            row = conn.execute("SELECT count(*) FROM signup_decisions").fetchone()
        results["query_api"] = {
            "signups_projected": row[0] if row else None,
            "sequential": sequential(url, paths(work, args.requests), analyst),
            "concurrent": asyncio.run(concurrent(url, paths(work, args.requests * 2),
                                                 args.concurrency, analyst)),
            # The same client against GET /healthz (no database): what HTTP alone costs
            # on this machine, client included.
            "concurrent_healthz_baseline": asyncio.run(concurrent(
                url, ["/healthz"] * args.requests * 2, args.concurrency, analyst)),
        }
        print(json.dumps(results["query_api"]), flush=True)
    finally:
        for proc in processes:
            proc.terminate()
            proc.wait(30)
    return results


def _chain(*parts: Iterator[Event]) -> Iterator[Event]:
    for part in parts:
        yield from part


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m proof.bench_projections")
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--signups", type=int, default=1_000_000)
    parser.add_argument("--courses", type=int, default=1_000)
    parser.add_argument("--requests", type=int, default=3_000)
    parser.add_argument("--concurrency", type=int, default=4)
    args = parser.parse_args()
    out_dir = results_dir()
    run_dir = Path(tempfile.mkdtemp(prefix="projections-bench-"))
    config = StackConfig.on_free_ports(run_dir, admin_token="bench-admin-token")
    try:
        with dependencies(config):
            results = run(args, config)
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
    results["measured_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "projections.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwritten to {out_dir / 'projections.json'}")


if __name__ == "__main__":
    main()
