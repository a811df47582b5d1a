"""Synthetic students and an HTTP client for the command and query APIs (demo, bench, chaos)."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import date, timedelta

import aiohttp

FIRST = ["Ann", "Bob", "Chloé", "Dmitri", "Eve", "Farah", "Göran", "Hana", "Ikaika", "Jun",
         "Kemal", "Lena", "Maëlle", "Nia", "Oskar", "Priya", "Quinn", "Rosa", "Søren", "Tariq",
         "Uma", "Vikram", "Wen", "Xóchitl", "Yusuf", "Zoë"]
LAST = ["Ångström", "Bauer", "Costa", "Dubois", "Eriksen", "Fischer", "García", "Horvat",
        "Ito", "Jansen", "Kowalski", "López", "Müller", "Nakamura", "O'Neil", "Petrov",
        "Quispe", "Rossi", "Silva", "Tanaka", "Ulloa", "Varga", "Weiß", "Xu", "Yilmaz", "Zhou"]


@dataclass(frozen=True)
class Student:
    email: str
    name: str
    date_of_birth: date

    def body(self) -> dict[str, str]:
        return {"email": self.email, "name": self.name,
                "date_of_birth": self.date_of_birth.isoformat()}


def students(count: int, rng: random.Random, tag: str) -> list[Student]:
    today = date.today()
    result = []
    for i in range(count):
        first, last = rng.choice(FIRST), rng.choice(LAST)
        age_days = rng.randint(17 * 365, 65 * 365)
        result.append(Student(f"student{i}.{tag}@example.org", f"{first} {last}",
                              today - timedelta(days=age_days)))
    return result


@dataclass
class Outcome:
    status: int
    signup_id: str | None
    seconds: float
    withdrawal_token: str | None = None


def session(base_url: str, concurrency: int, token: str | None = None) -> aiohttp.ClientSession:
    """One pooled client (with `token` as Bearer on every request, if given); aiohttp
    costs far less CPU per request than httpx, which matters when the generator shares
    two cores with the system under test."""
    headers = {"Authorization": f"Bearer {token}"} if token else None
    return aiohttp.ClientSession(base_url, timeout=aiohttp.ClientTimeout(total=60),
                                 connector=aiohttp.TCPConnector(limit=concurrency),
                                 headers=headers)


async def sign_up(client: aiohttp.ClientSession, course_id: str, student: Student,
                  idempotency_key: str | None = None, email: str | None = None) -> Outcome:
    headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
    body = student.body() | ({"email": email} if email else {})
    began = time.perf_counter()
    try:
        async with client.post(f"/courses/{course_id}/signups", json=body,
                               headers=headers) as response:
            payload = await response.json(content_type=None)
            status = response.status
    except (aiohttp.ClientError, TimeoutError):
        return Outcome(0, None, time.perf_counter() - began)
    if status != 202:
        return Outcome(status, None, time.perf_counter() - began)
    return Outcome(status, payload.get("signup_id"), time.perf_counter() - began,
                   payload.get("withdrawal_token"))


async def bounded(jobs: Iterable[Callable[[], Awaitable[Outcome]]], concurrency: int,
                  on_done: Callable[[Outcome], None]) -> list[Outcome]:
    """Run jobs with at most `concurrency` in flight, reporting each as it finishes."""
    gate = asyncio.Semaphore(concurrency)

    async def run(job: Callable[[], Awaitable[Outcome]]) -> Outcome:
        async with gate:
            outcome = await job()
        on_done(outcome)
        return outcome

    return list(await asyncio.gather(*(run(job) for job in jobs)))


async def wait_decided(client: aiohttp.ClientSession, signup_ids: list[str], timeout: float,
                       on_progress: Callable[[int], None] | None = None) -> dict[str, dict]:
    """Poll the query API until every sign-up has its decision (bounded by timeout)."""
    decided: dict[str, dict] = {}
    pending = list(dict.fromkeys(signup_ids))
    deadline = time.monotonic() + timeout
    gate = asyncio.Semaphore(32)

    async def probe(signup_id: str) -> None:
        async with gate, client.get(f"/signups/{signup_id}") as response:
            if response.status == 200:
                decided[signup_id] = await response.json()

    while pending and time.monotonic() < deadline:
        before = len(decided)
        await asyncio.gather(*(probe(s) for s in pending))
        pending = [s for s in pending if s not in decided]
        if on_progress:
            on_progress(len(decided) - before)
        if pending:
            await asyncio.sleep(0.5)
    return decided
