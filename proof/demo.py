"""The demo workload: `make demo` (after `make up`).

Run: python -m proof.demo   [DEMO_SIGNUPS=3000 DEMO_CONCURRENCY=64]

Creates several courses (some small enough to overfill, some with a waiting list),
fires a few thousand concurrent sign-ups with duplicates (the same student in other
letter case) and retries (the same Idempotency-Key twice), waits until every sign-up
is decided and projected; then a term goes by: some students withdraw with their
withdrawal tokens, a lecturer gets a bigger room, and the waiting students move up.
Prints per-course and global statistics, checks them against a recount of the
sign-ups' statuses, and counts the e-mails sent.
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

COURSES = [  # (slug, title, lecturer, capacity, waiting list)
    ("intro-python", "Introduction to Python", "Dr. Ada Lovelace", 40, 30),
    ("event-sourcing", "Event Sourcing in Practice", "Prof. Greg Young", 25, 15),
    ("stream-processing", "Stream Processing with Kafka", "Dr. Jay Kreps", 200, 0),
    ("databases", "Relational Databases", "Prof. Edgar Codd", 1200, 0),
    ("compilers", "Compilers", "Dr. Grace Hopper", 5, 10),
    ("distributed-systems", "Distributed Systems", "Prof. Leslie Lamport", 3000, 0),
]
WITHDRAW_SHARE = 0.2  # of the accepted and waiting sign-ups of courses with a waiting list
BIGGER_ROOM = ("compilers", 8)  # a raised capacity: waiting students move up


async def create_courses(client: aiohttp.ClientSession, token: str,
                         run: str) -> dict[str, dict]:
    created = {}
    for slug, title, lecturer, capacity, waiting in COURSES:
        course_id = f"{slug}-{run}"
        async with client.post("/courses", headers={"Authorization": f"Bearer {token}"},
                               json={"course_id": course_id, "title": title,
                                     "lecturer": lecturer, "capacity": capacity,
                                     "waitlist_capacity": waiting}) as response:
            response.raise_for_status()
        created[course_id] = {"title": title, "capacity": capacity, "waiting": waiting}
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


def mail_kinds(mail_dir: Path, signup_ids: set[str]) -> Counter[str]:
    """The e-mails about these sign-ups by kind (the subject before the course title)."""
    kinds: Counter[str] = Counter()
    for path in mail_dir.glob("*.eml"):
        with open(path, "rb") as handle:
            msg = email.message_from_bytes(handle.read(4096), policy=email.policy.default)
        if msg.get("X-Signup-Id") in signup_ids:
            kinds[str(msg.get("Subject", "")).split(":")[0]] += 1
    return kinds


async def wait_mails(mail_dir: Path, signup_ids: set[str], timeout: float,
                     expected: int) -> int:
    deadline = time.monotonic() + timeout
    count = mails_for(mail_dir, signup_ids)
    while count < expected and time.monotonic() < deadline:
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
        report(courses, decisions, unique, outcomes)
        print("\nAfter the sign-ups:")
        await print_stats(query, courses)
        withdrawn = await term(command, query, config.admin_token(), run, courses, decisions,
                               outcomes, rng)
        final = await wait_decided(query, list(unique), 60)
        expected_mails = len(unique) + withdrawn + promotions(decisions, final)
        mails = await wait_mails(config.mail_dir, unique, 300, expected_mails)
        print("\nAfter the withdrawals and the bigger room:")
        await print_stats(query, courses)
        equal = await recount(query, courses, final)
        kinds = mail_kinds(config.mail_dir, unique)
        print(f"\nE-mails sent: {mails}, one per decision about a student: "
              + ", ".join(f"{k}: {n}" for k, n in sorted(kinds.items()))
              + f" (at least {expected_mails}: {len(unique)} decisions, {withdrawn} "
              "withdrawals, and the promotions of students still enrolled)")
    print(urls(config))
    missing = len(unique) - len(decisions)
    return 0 if missing == 0 and mails >= expected_mails and equal else 1


async def term(command: aiohttp.ClientSession, query: aiohttp.ClientSession, token: str,
               run: str, courses: dict[str, dict], decisions: dict[str, dict],
               outcomes: list[Outcome], rng: random.Random) -> int:
    """Withdrawals with the sign-ups' own tokens, and a bigger room; waits until the
    withdrawals are decided. Returns how many withdrew."""
    tokens = {o.signup_id: o.withdrawal_token for o in outcomes if o.withdrawal_token}
    leaving = [s for s, d in decisions.items() if courses[d["course_id"]]["waiting"]
               and d["status"] in ("accepted", "waitlisted") and rng.random() < WITHDRAW_SHARE]
    for signup_id in leaving:
        course_id = decisions[signup_id]["course_id"]
        async with command.post(f"/courses/{course_id}/signups/{signup_id}/withdrawal",
                                json={"withdrawal_token": tokens[signup_id]}) as response:
            response.raise_for_status()
    slug, capacity = BIGGER_ROOM
    async with command.patch(f"/courses/{slug}-{run}", json={"capacity": capacity},
                             headers={"Authorization": f"Bearer {token}"}) as response:
        response.raise_for_status()
    print(f"\nA term goes by: {len(leaving)} students withdraw with their tokens; "
          f"{slug} moves to a room of {capacity} seats")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        now = await wait_decided(query, leaving, 10)
        if all(d["status"] == "withdrawn" for d in now.values()) and len(now) == len(leaving):
            break
        await asyncio.sleep(0.5)
    return len(leaving)


def promotions(before: dict[str, dict], after: dict[str, dict]) -> int:
    """Waiting students who hold a seat now."""
    return sum(1 for s, d in after.items()
               if d["status"] == "accepted" and before.get(s, {}).get("status") == "waitlisted")


async def recount(query: aiohttp.ClientSession, courses: dict[str, dict],
                  final: dict[str, dict]) -> bool:
    """Each course's enrolled and waiting figures against a count of its sign-ups'
    statuses, and the positions on each waiting list against 1..n."""
    equal = True
    for course_id in courses:
        mine = [d for d in final.values() if d["course_id"] == course_id]
        stats = await get_json(query, f"/courses/{course_id}/stats")
        counted = Counter(d["status"] for d in mine)
        positions = sorted(d["position"] for d in mine if d["status"] == "waitlisted")
        if (stats["enrolled"], stats["waitlisted"]) != (counted["accepted"],
                                                        counted["waitlisted"]) or \
                positions != list(range(1, len(positions) + 1)):
            equal = False
            print(f"  {course_id}: statistics {stats['enrolled']}/{stats['waitlisted']} but "
                  f"recount {counted['accepted']}/{counted['waitlisted']}, positions "
                  f"{positions[:10]}")
    print("\nRecount of every sign-up's status: " + ("equal to the statistics" if equal
                                                     else "DIFFERENT (see above)"))
    return equal


def report(courses: dict[str, dict], decisions: dict[str, dict], unique: set[str],
           outcomes: list[Outcome]) -> None:
    reasons = Counter(d["reason"] or d["status"] for d in decisions.values())
    print(f"\nDecisions: {len(decisions)} of {len(unique)} sign-ups; "
          + ", ".join(f"{k}: {v}" for k, v in sorted(reasons.items())))


async def get_json(client: aiohttp.ClientSession, path: str) -> dict:
    async with client.get(path) as response:
        response.raise_for_status()
        return dict(await response.json())


async def print_stats(query: aiohttp.ClientSession, courses: dict[str, dict]) -> None:
    rows = []
    for course_id in courses:
        s = await get_json(query, f"/courses/{course_id}/stats")
        rows.append([course_id, s["title"], s["capacity"], s["enrolled"],
                     f"{s['waitlisted']}/{s['waitlist_capacity']}", s["min_age"], s["max_age"],
                     s["average_age"]])
    print("Per course:")
    print(table(rows, ["course", "title", "capacity", "enrolled", "waiting/list", "min age",
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
