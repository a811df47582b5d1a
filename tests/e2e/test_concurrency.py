"""Concurrent HTTP sign-ups through the whole stack never overbook a course."""

from __future__ import annotations

import asyncio
import random
import uuid
from functools import partial

import httpx

from proof.load import bounded, session, sign_up, students
from stack.waiting import eventually
from tests.e2e.conftest import RunningStack


def test_2000_concurrent_signups_from_1500_students_fill_50_seats(
    full_stack: RunningStack,
) -> None:
    course_id = full_stack.create_course("crowded", 50, "Popular", "Dr. P")
    rng = random.Random(7)
    pool = students(1500, rng, uuid.uuid4().hex[:6])
    # 1,500 distinct students, 500 of them twice (half of those in upper case).
    requests = [(s, None) for s in pool] + [
        (s, s.email.upper() if i % 2 else None) for i, s in enumerate(rng.sample(pool, 500))
    ]
    rng.shuffle(requests)

    async def fire() -> list:
        async with session(full_stack.config.command_url, 100) as client:
            return await bounded(
                [partial(sign_up, client, course_id, s, email=e) for s, e in requests],
                100, lambda _: None)

    outcomes = asyncio.run(fire())
    assert [o.status for o in outcomes].count(202) == 2000
    signup_ids = {o.signup_id for o in outcomes}
    assert len(signup_ids) == 2000

    def all_decided() -> dict | None:
        stats = httpx.get(f"{full_stack.config.query_url}/courses/{course_id}/stats",
                          headers=full_stack.analyst, timeout=10)
        if stats.status_code != 200 or stats.json()["enrolled"] < 50:
            return None
        return stats.json()

    stats = eventually(all_decided, 180, "50 enrolments")
    assert stats["enrolled"] == 50

    def decisions() -> list[dict] | None:
        found = []
        with httpx.Client(base_url=full_stack.config.query_url, timeout=10) as client:
            for signup_id in signup_ids:
                response = client.get(f"/signups/{signup_id}")
                if response.status_code != 200:
                    return None
                found.append(response.json())
        return found

    decided = eventually(decisions, 180, "a decision for each of the 2,000 sign-ups")
    accepted = [d for d in decided if d["status"] == "accepted"]
    assert len(accepted) == 50
    assert {d["reason"] for d in decided if d["status"] == "rejected"} <= {
        "course_full", "already_enrolled"}
