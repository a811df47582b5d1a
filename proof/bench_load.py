"""The benchmark's HTTP load generator, run as its own process so it can be pinned to a
core (`taskset`) and its CPU measured apart from the system under test.

Run: python -m proof.bench_load --url URL --out FILE (--signups COURSE,... | --paths FILE)
                                [--concurrency 64 | --rate R] [--seconds 60] [--max N]

Closed loop (default): --concurrency requests always in flight, for --seconds or --max
requests. Open loop (--rate): request i is due at start + i/rate whatever the answers,
so a slow server cannot slow the offered load down (no coordinated omission); each
request is timed from when it was due. Sign-ups go through `proof.load.sign_up`, the
client of the demo. The output JSON holds one row per request,
[due or sent, done, status, signup_id], on CLOCK_MONOTONIC (shared by every process
of this machine), and the generator's own CPU time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import time
from collections.abc import Awaitable, Callable
from datetime import date, timedelta
from pathlib import Path

import aiohttp

from proof.load import Student, session, sign_up

Row = list[object]  # [started, done, status, signup_id]


def clock() -> float:
    return time.clock_gettime(time.CLOCK_MONOTONIC)


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def signup_job(client: aiohttp.ClientSession, courses: list[str], tag: str,
               students: int = 0) -> Callable[[int], Awaitable[tuple[int, str | None]]]:
    """Sign-ups of a new student each (students=0), or of `students` students in turn."""
    born = date(1970, 1, 1)

    async def one(i: int) -> tuple[int, str | None]:
        who = i % students if students else i
        student = Student(f"g{who}.{tag}@example.org", "Load Student",
                          born + timedelta(days=i % 12_000))
        outcome = await sign_up(client, courses[i % len(courses)], student)
        return outcome.status, outcome.signup_id

    return one


def get_job(client: aiohttp.ClientSession,
            paths: list[str]) -> Callable[[int], Awaitable[tuple[int, str | None]]]:
    # The query API's statistics need a token: QUERY_TOKEN from the environment (not
    # an argument, which every user of the machine could read in the process list).
    token = os.environ.get("QUERY_TOKEN")
    headers = {"Authorization": f"Bearer {token}"} if token else {}

    async def one(i: int) -> tuple[int, str | None]:
        try:
            async with client.get(paths[i % len(paths)], headers=headers) as response:
                await response.read()
                return response.status, None
        except (aiohttp.ClientError, TimeoutError):
            return 0, None

    return one


async def closed_loop(job: Callable[[int], Awaitable[tuple[int, str | None]]],
                      concurrency: int, seconds: float, limit: int) -> list[Row]:
    rows: list[Row] = []
    deadline = clock() + seconds
    counter = iter(range(limit))

    async def worker() -> None:
        while clock() < deadline:
            i = next(counter, None)
            if i is None:
                return
            began = clock()
            status, signup_id = await job(i)
            rows.append([began, clock(), status, signup_id])

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return rows


async def open_loop(job: Callable[[int], Awaitable[tuple[int, str | None]]], rate: float,
                    seconds: float, limit: int) -> list[Row]:
    rows: list[Row] = []
    total = min(limit, int(rate * seconds))
    tasks = []

    async def timed(i: int, due: float) -> None:
        status, signup_id = await job(i)
        rows.append([due, clock(), status, signup_id])

    start = clock() + 0.05
    for i in range(total):
        due = start + i / rate
        delay = due - clock()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(timed(i, due)))
    # Bounded: a request that is still out 30 s after the last was due counts as lost.
    done, pending = await asyncio.wait(tasks, timeout=30) if tasks else (set(), set())
    for task in pending:
        task.cancel()
    return rows


async def run(args: argparse.Namespace) -> dict[str, object]:
    in_flight = args.concurrency if args.rate is None else 1024
    async with session(args.url, in_flight) as client:
        if args.signups:
            job = signup_job(client, args.signups.split(","), args.tag, args.students)
        else:
            job = get_job(client, Path(args.paths).read_text().split())
        await job(0)  # one request first: the connection pool and the server's first hit
        cpu0, wall0 = cpu_seconds(), clock()
        if args.rate is None:
            rows = await closed_loop(job, args.concurrency, args.seconds, args.max)
        else:
            rows = await open_loop(job, args.rate, args.seconds, args.max)
        cpu, wall = cpu_seconds() - cpu0, clock() - wall0
    return {"mode": "closed" if args.rate is None else "open", "concurrency": args.concurrency,
            "rate": args.rate, "started": wall0, "seconds": round(wall, 3),
            "cpu_seconds": round(cpu, 3), "cpu_percent_of_one_core": round(100 * cpu / wall, 1),
            "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m proof.bench_load")
    parser.add_argument("--url", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--signups", help="comma-separated course ids to sign up for")
    parser.add_argument("--paths", help="a file of GET paths, one per line")
    parser.add_argument("--tag", default="load")
    parser.add_argument("--students", type=int, default=0,
                        help="cycle through this many students (0: a new one per request)")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--rate", type=float, default=None)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--max", type=int, default=10**9)
    args = parser.parse_args()
    if not (args.signups or args.paths):
        parser.error("--signups or --paths is required")
    result = asyncio.run(run(args))
    Path(args.out).write_text(json.dumps(result))


if __name__ == "__main__":
    main()
