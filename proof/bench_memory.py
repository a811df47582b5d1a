"""The processor's resident memory while it decides, with 16 partitions owned.

    KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:9092 .venv/bin/python -m proof.bench_memory \
        [--sizes 100000,1000000] [--live 50000] [--out $RUN_DIR/bench/fig11_memory.json]

On private topics of 16 partitions (proof.bench_state's Run), for each size N:

1. History: N - live sign-ups decided ahead of time by the processor's own Decider,
   their events and table changes written where the processor would write them
   (proof.bench_state.grow; no processor in the loop, so it is fast).
2. `live` sign-up commands for the history courses go to the command topic.
3. A processor starts on an empty disk: it restores the history (all 16 partitions)
   and then decides the live commands, reading and writing tables of N sign-ups. Its
   VmRSS is sampled every 0.25 s while it decides (between its first and its last
   live decision); the figure is the peak of those samples, next to the median, and
   next to what its shared RocksDB cache held (processor_state_memory_bytes), the part
   the memory budget bounds.

So after the run the processor's state holds N decisions. Goal: <= 250 MB at 1 M, and
within 1.2x of the figure at 0.1 M. Not run by the tests.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import tempfile
import threading
import time
import urllib.request
import uuid
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from confluent_kafka import Producer

from proof.bench_stack import broker_from_env, loadavg, results_dir
from proof.bench_state import SIGNUPS_PER_COURSE, Processor, Run, grow, log
from schemas.codec import encode
from schemas.messages import SignUp
from service_kit.kafka_auth import client_config
from stack.waiting import wait_until

PARTITIONS = 16
LIVE = 10_000


def send_live(run: Run, count: int, tag: str) -> None:
    """`count` new sign-ups for the history courses (each has seats left), spread over
    every course and so over every partition."""
    courses = list(run.courses)
    rng = random.Random(tag)
    producer = Producer({**client_config(), "bootstrap.servers": run.servers, "acks": "all",
                         "linger.ms": 50,
                         "batch.size": 1_000_000, "partitioner": "consistent_random",
                         "queue.buffering.max.messages": 1_000_000})
    now = datetime.now(UTC)
    for i in range(count):
        course = rng.choice(courses)
        sid = str(uuid.uuid4())
        value = encode(SignUp(sid, sid, course, f"{tag}-{i}@example.org", "Live Student",
                              date(1995, 1, 1), now, sid))
        while True:
            try:
                producer.produce(run.commands, key=course.encode(), value=value)
                break
            except BufferError:
                producer.poll(0.1)
        if i % 10_000 == 0:
            producer.poll(0)
    if producer.flush(120) != 0:
        raise RuntimeError("live commands not acknowledged")


def _metrics(processor: Processor) -> str:
    """The processor's /metrics text; empty before its web server answers."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{processor.port}/metrics",
                                    timeout=5) as r:
            return r.read().decode()
    except OSError:
        return ""


def _sum(metrics: str, prefix: str) -> float:
    """The sum of the samples whose line starts with `prefix`."""
    return sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
               if line.startswith(prefix))


def decided(processor: Processor, metrics: str | None = None) -> float:
    """Sign-ups this processor has decided so far (its processor_decisions_total), from
    `metrics` if given, else from a fresh read; 0 before its web server answers."""
    text = _metrics(processor) if metrics is None else metrics
    return _sum(text, "processor_decisions_total{")


def rocksdb_mb(metrics: str) -> float:
    """What the worker's shared RocksDB cache holds, memtables included
    (processor_state_memory_bytes: blocks, indexes, filters), in MB: the part of its
    RSS the memory budget (PROCESSOR_STATE_MEMORY_MB) bounds."""
    return round(_sum(metrics, "processor_state_memory_bytes") / 2**20, 1)


def measure(run: Run, size: int, live: int, decided_before: int) -> dict[str, Any]:
    """`decided_before`: live sign-ups of earlier sizes, in the state already."""
    history = max(size - live - decided_before, run.signups)
    log(f"memory while deciding: {history + decided_before:,} sign-ups in the state, "
        f"then {live:,} live")
    written = grow(run, history)
    send_live(run, live, f"live-{size}")
    processor = Processor(run, f"mem-{size}")
    began = time.monotonic()
    processor.start()
    samples: list[float] = []
    in_rocksdb: list[float] = []
    stop = threading.Event()
    first: list[float] = []

    def sample() -> None:
        # Only while it decides: from its first live decision until it has decided all.
        while not stop.is_set():
            metrics = _metrics(processor)
            if decided(processor, metrics) > 0:
                first[:1] = first[:1] or [time.monotonic()]
                samples.append(processor.memory()["rss_mb"])
                in_rocksdb.append(rocksdb_mb(metrics))
            stop.wait(0.25)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        wait_until(lambda: decided(processor) >= live, 1800, f"{live:,} live decisions")
        drained = time.monotonic()
        stop.set()
        sampler.join(5)
        end = processor.memory()
    finally:
        stop.set()
        processor.stop()
    restores = processor.restores()
    seconds = drained - (first[0] if first else began)
    result = {
        "signups": history + decided_before + live, "history": history + decided_before,
        "live": live, "partitions": run.partitions,
        "history_written_s": round(written, 1),
        "restored_records": restores[0][0] if restores else None,
        "restore_s": restores[0][1] if restores else None,
        "deciding_s": round(seconds, 1),
        "decisions_per_s": round(live / seconds) if seconds > 0 else None,
        "rss_while_deciding_mb": {"peak": max(samples, default=None),
                                  "median": statistics.median(samples) if samples else None,
                                  "samples": len(samples)},
        "rocksdb_cache_while_deciding_mb": {
            "peak": max(in_rocksdb, default=None),
            "median": statistics.median(in_rocksdb) if in_rocksdb else None},
        "after": end, "loadavg": loadavg(),
    }
    log(f"  {result}")
    return result


def run_memory_bench(servers: str, sizes: list[int], out: Path,
                     live: int = LIVE) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="bench-memory-"))
    run = Run(servers, PARTITIONS, work)
    run.create_topics()
    points: list[dict[str, Any]] = []
    report: dict[str, Any] = {"measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
                              "partitions": PARTITIONS, "signups_per_course": SIGNUPS_PER_COURSE,
                              "points": points}
    try:
        for i, size in enumerate(sizes):
            points.append(measure(run, size, live, decided_before=i * live))
    finally:
        run.delete_topics()
        shutil.rmtree(work, ignore_errors=True)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2) + "\n")
    return report


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m proof.bench_memory")
    parser.add_argument("--sizes", default="100000,1000000")
    parser.add_argument("--live", type=int, default=LIVE)
    parser.add_argument("--out", type=Path, default=results_dir() / "fig11_memory.json")
    args = parser.parse_args()
    report = run_memory_bench(broker_from_env(), [int(s) for s in args.sizes.split(",")],
                              args.out, args.live)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
