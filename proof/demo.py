"""The demo workload: `make demo` (after `make up`).

Run: python -m proof.demo   [DEMO_SIGNUPS=3000 DEMO_CONCURRENCY=64]

Creates several courses (some small enough to overfill), fires a few thousand
concurrent sign-ups with duplicates (the same student in other letter case) and
retries (the same Idempotency-Key twice), waits until every sign-up is decided,
projected and e-mailed, then prints per-course and global statistics.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import os
import random
import sys
import time
import uuid
from collections import Counter
from functools import partial
from pathlib import Path

import aiohttp
from tqdm import tqdm

from proof.load import Outcome, Student, bounded, session, sign_up, students, wait_decided
from stack.config import StackConfig

# On a terminal the bar redraws in place; in a log (CI) it prints a line every few seconds.
BAR = {"mininterval": 0.2 if sys.stderr.isatty() else 5.0}

COURSES = [  # (slug, title, lecturer, capacity)
    ("intro-python", "Introduction to Python", "Dr. Ada Lovelace", 40),
    ("event-sourcing", "Event Sourcing in Practice", "Prof. Greg Young", 25),
    ("stream-processing", "Stream Processing with Kafka", "Dr. Jay Kreps", 200),
    ("databases", "Relational Databases", "Prof. Edgar Codd", 1200),
    ("compilers", "Compilers", "Dr. Grace Hopper", 5),
    ("distributed-systems", "Distributed Systems", "Prof. Leslie Lamport", 3000),
]


async def create_courses(client: aiohttp.ClientSession, token: str,
                         run: str) -> dict[str, dict]:
    created = {}
    for slug, title, lecturer, capacity in COURSES:
        course_id = f"{slug}-{run}"
        async with client.post("/courses", headers={"Authorization": f"Bearer {token}"},
                               json={"course_id": course_id, "title": title,
                                     "lecturer": lecturer, "capacity": capacity}) as response:
            response.raise_for_status()
        created[course_id] = {"title": title, "capacity": capacity}
    return created


Request = tuple[str, Student, str | None, str | None]  # course, student, key, e-mail override


def plan(course_ids: list[str], total: int, rng: random.Random, run: str) -> list[Request]:
    """(course, student, idempotency key, e-mail override) per request: popular courses
    overfill, some students retry with the same key, some sign up twice in other case."""
    pool = students(max(total // 2, 10), rng, run)
    weights = [4, 3, 3, 2, 2, 1][: len(course_ids)]
    requests: list[Request] = []
    for i in range(total):
        course = rng.choices(course_ids, weights)[0]
        student = rng.choice(pool)
        key = f"{run}-{i}"
        requests.append((course, student, key, None))
        if i % 25 == 0:
            requests.append((course, student, key, None))  # a client retry: same key
        elif i % 25 == 1:
            requests.append((course, student, None, student.email.upper()))  # other case
    rng.shuffle(requests)
    return requests


def mails_for(mail_dir: Path, signup_ids: set[str]) -> int:
    count = 0
    for path in mail_dir.glob("*.eml"):
        with open(path, "rb") as handle:
            head = handle.read(4096)
        msg = email.message_from_bytes(head, policy=email.policy.default)
        if msg.get("X-Signup-Id") in signup_ids:
            count += 1
    return count


async def wait_mails(mail_dir: Path, signup_ids: set[str], timeout: float) -> int:
    deadline = time.monotonic() + timeout
    count = mails_for(mail_dir, signup_ids)
    while count < len(signup_ids) and time.monotonic() < deadline:
        await asyncio.sleep(1)
        count = mails_for(mail_dir, signup_ids)
    return count


def table(rows: list[list[object]], header: list[str]) -> str:
    cells = [header, *[[("-" if v is None else str(v)) for v in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


async def main() -> int:
    config = StackConfig.from_env()
    total = int(os.environ.get("DEMO_SIGNUPS", "3000"))
    concurrency = int(os.environ.get("DEMO_CONCURRENCY", "64"))
    run = uuid.uuid4().hex[:6]
    rng = random.Random(run)
    command = session(config.command_url, concurrency)
    query = session(config.query_url, 32, config.analyst_token())
    async with command, query:
        courses = await create_courses(command, config.admin_token(), run)
        requests = plan(list(courses), total, rng, run)
        print(f"\nDemo run {run}: {len(courses)} courses, {len(requests)} sign-up requests "
              f"({concurrency} concurrent)")
        began = time.monotonic()
        with tqdm(total=len(requests), unit="req", desc="signing up", **BAR) as bar:
            outcomes = await bounded(
                [partial(sign_up, command, *r) for r in requests],
                concurrency, lambda _: bar.update(1))
        sent = time.monotonic() - began
        signup_ids = [o.signup_id for o in outcomes if o.signup_id]
        statuses = Counter(o.status for o in outcomes)
        unique = set(signup_ids)
        print(f"  HTTP answers: {dict(statuses)} in {sent:.1f}s "
              f"({len(requests) / sent:.0f} req/s); {len(unique)} distinct sign-ups")

        with tqdm(total=len(unique), unit="signup", desc="decided+projected", **BAR) as bar:
            decisions = await wait_decided(query, list(unique), 300, bar.update)
        mails = await wait_mails(config.mail_dir, unique, 300)
        report(courses, decisions, unique, mails, outcomes)
        await print_stats(query, courses)
    print(urls(config))
    missing = len(unique) - len(decisions)
    return 0 if missing == 0 and mails >= len(unique) else 1


def report(courses: dict[str, dict], decisions: dict[str, dict], unique: set[str],
           mails: int, outcomes: list[Outcome]) -> None:
    reasons = Counter(d["reason"] or "accepted" for d in decisions.values())
    print(f"\nDecisions: {len(decisions)} of {len(unique)} sign-ups; "
          + ", ".join(f"{k}: {v}" for k, v in sorted(reasons.items())))
    print(f"E-mails sent: {mails} (one per decision expected: {len(unique)})")


async def get_json(client: aiohttp.ClientSession, path: str) -> dict:
    async with client.get(path) as response:
        response.raise_for_status()
        return dict(await response.json())


async def print_stats(query: aiohttp.ClientSession, courses: dict[str, dict]) -> None:
    rows = []
    for course_id in courses:
        s = await get_json(query, f"/courses/{course_id}/stats")
        rows.append([course_id, s["title"], s["lecturer"], s["capacity"], s["enrolled"],
                     s["min_age"], s["max_age"], s["average_age"]])
    print("\nPer course:")
    print(table(rows, ["course", "title", "lecturer", "capacity", "enrolled", "min age",
                       "max age", "avg age"]))
    g = await get_json(query, "/stats")
    print(f"\nAll courses ({g['courses']} courses, {g['enrollments']} enrollments, as of "
          f"{g['as_of']}): min age {g['min_age']}, max age {g['max_age']}, "
          f"average age {g['average_age']}")


def urls(config: StackConfig) -> str:
    token = config.analyst_token()
    with_login = config.query_url.replace("http://", f"http://analyst:{token}@")
    return (f"\nExplore (the statistics and the dashboard need the analyst token):\n"
            f"  analyst token  {token}"
            + ("" if config.analyst_token_override else
               f"  (also in {config.run_dir / 'analyst-token'})") + "\n"
            f"  dashboard      {with_login}/  (any user name, the token as password)\n"
            f"  stats          curl -H 'Authorization: Bearer {token}' "
            f"{config.query_url}/stats\n"
            f"  command API    {config.command_url}/docs\n"
            f"  query API      {config.query_url}/docs\n"
            f"  e-mails        {config.mail_dir}\n")


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
