"""The chaos suite's client: sign-ups at a steady rate with bounded concurrency, each
retried with its Idempotency-Key until it gets a 202, every attempt recorded; a share
of the accepted sign-ups is then withdrawn with its withdrawal token (retried the same
way: every withdrawal of one sign-up is the same command)."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import aiohttp

from proof.chaos_stack import ChaosError
from proof.load import Student, students

# 0: no answer (refused, reset, timed out); 409: an earlier attempt with the same key is
# still in flight, or died holding its lease (command_api.keys.LEASE_SECONDS).
RETRYABLE = {0, 409, 502, 503, 504}


def now() -> float:
    return time.time()


@dataclass(frozen=True)
class CourseSpec:
    course_id: str
    capacity: int
    weight: float
    waitlist_capacity: int = 0


@dataclass
class Attempt:
    started: float
    finished: float
    status: int
    retry_after: str | None


@dataclass
class Request:
    key: str
    course_id: str
    student: Student
    email: str | None  # an override: the same student in other letter case
    signup_id: str | None = None
    resent: bool = False  # sent once more with the same key after its 202
    withdrawal_token: str | None = None
    withdrawing: bool = False  # a withdrawal of it was started
    withdrawn: bool = False  # its withdrawal got a 202
    attempts: list[Attempt] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)


class Plan:
    """Which request comes next: popular courses overfill; 15 % of the requests come from a
    student who already tried this course, in other letter case."""

    def __init__(self, courses: list[CourseSpec], rng: random.Random, tag: str) -> None:
        self.courses, self.rng, self.tag = courses, rng, tag
        self.pool = students(5000, rng, tag)
        self.used: dict[str, list[Student]] = {c.course_id: [] for c in courses}
        self.count = 0

    def next(self) -> Request:
        course = self.rng.choices(self.courses, [c.weight for c in self.courses])[0]
        key = f"{self.tag}-{self.count}"
        self.count += 1
        seen = self.used[course.course_id]
        if seen and self.rng.random() < 0.15:
            student = self.rng.choice(seen)
            return Request(key, course.course_id, student, student.email.upper())
        student = self.pool[self.count % len(self.pool)]
        seen.append(student)
        return Request(key, course.course_id, student, None)


class Load:
    """Sign-ups at a steady rate with bounded concurrency, each retried until a 202."""

    def __init__(self, client: aiohttp.ClientSession, plan: Plan, rate: float,
                 concurrency: int, give_up: float, withdraw_share: float = 0.0) -> None:
        self.client, self.plan = client, plan
        self.rate, self.concurrency, self.give_up = rate, concurrency, give_up
        self.withdraw_share = withdraw_share
        self.requests: list[Request] = []
        self.tasks: set[asyncio.Task[None]] = set()
        self.resent = 0  # requests repeated with the same key after their 202
        self.started_at = self.stopped_at = 0.0
        self._stopping = asyncio.Event()
        self._runner: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.started_at = now()
        self._runner = asyncio.create_task(self._run())

    async def _run(self) -> None:
        gate = asyncio.Semaphore(self.concurrency)
        interval = 1.0 / self.rate
        while not self._stopping.is_set():
            await gate.acquire()
            if self._stopping.is_set():
                gate.release()
                break
            self._spawn(self.plan.next(), gate.release)
            await asyncio.sleep(interval)

    async def burst(self, n: int) -> None:
        """n requests at once, on top of the steady load."""
        for _ in range(n):
            self._spawn(self.plan.next(), lambda: None)
        await asyncio.sleep(0)  # let them start

    def _spawn(self, request: Request, done: Callable[[], None]) -> None:
        self.requests.append(request)
        task = asyncio.create_task(self._submit(request))
        self.tasks.add(task)

        def finished(t: asyncio.Task[None]) -> None:
            self.tasks.discard(t)
            done()

        task.add_done_callback(finished)

    async def stop(self) -> None:
        """Start no new requests; wait for those in flight (each bounded by give_up)."""
        self._stopping.set()
        if self._runner is not None:
            await self._runner
        if self.tasks:
            await asyncio.wait(set(self.tasks), timeout=self.give_up + 30)
        self.stopped_at = now()

    async def _submit(self, request: Request) -> None:
        deadline = time.monotonic() + self.give_up
        delay = 0.2
        while time.monotonic() < deadline:
            attempt, signup_id = await self._attempt(request)
            request.attempts.append(attempt)
            if attempt.status == 202:
                self._accepted(request, signup_id)
                break
            if attempt.status not in RETRYABLE:
                request.unexpected.append(f"HTTP {attempt.status}")
                if attempt.status < 500:
                    return
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)
        if request.signup_id is not None and self.plan.rng.random() < 0.05:
            # A client that lost the answer and sends again: same key, same sign-up.
            self.resent += 1
            request.resent = True
            again, signup_id = await self._attempt(request)
            request.attempts.append(again)
            if again.status == 202 and signup_id != request.signup_id:
                request.unexpected.append(f"resent key got {signup_id}, not {request.signup_id}")
        if request.signup_id is not None and self.plan.rng.random() < self.withdraw_share:
            # A student who signed up earlier drops the course (or its waiting list) now,
            # while others wait: their freed seats are what the waiting list is for.
            earlier = [r for r in self.requests if r.course_id == request.course_id
                       and r.withdrawal_token and not r.withdrawing]
            if earlier:
                leaving = self.plan.rng.choice(earlier)
                leaving.withdrawing = True
                await self._withdraw(leaving, deadline)

    async def _withdraw(self, request: Request, deadline: float) -> None:
        url = f"/courses/{request.course_id}/signups/{request.signup_id}/withdrawal"
        while time.monotonic() < deadline + self.give_up:
            began = now()
            try:
                async with self.client.post(url, json={
                        "withdrawal_token": request.withdrawal_token}) as response:
                    status = response.status
                    retry_after = response.headers.get("Retry-After")
                    await response.read()
            except (aiohttp.ClientError, TimeoutError):
                status, retry_after = 0, None
            request.attempts.append(Attempt(began, now(), status, retry_after))
            if status == 202:
                request.withdrawn = True
                return
            if status not in RETRYABLE:
                request.unexpected.append(f"withdrawal: HTTP {status}")
                return
            await asyncio.sleep(0.5)

    def _accepted(self, request: Request, signup_id: str | None) -> None:
        # The id derives from the student's own key (unknown here): a retry of the same
        # request must get the same one, which _submit checks.
        request.signup_id = signup_id
        if signup_id is None:
            request.unexpected.append("202 without a sign-up id")

    async def _attempt(self, request: Request) -> tuple[Attempt, str | None]:
        body = request.student.body() | ({"email": request.email} if request.email else {})
        began = now()
        signup_id = None
        try:
            async with self.client.post(f"/courses/{request.course_id}/signups", json=body,
                                        headers={"Idempotency-Key": request.key}) as response:
                status, retry_after = response.status, response.headers.get("Retry-After")
                if status == 202:
                    answer = await response.json(content_type=None)
                    signup_id = answer.get("signup_id")
                    request.withdrawal_token = answer.get("withdrawal_token")
                else:
                    await response.read()
        except (aiohttp.ClientError, TimeoutError, ValueError):
            status, retry_after = 0, None
        return Attempt(began, now(), status, retry_after), signup_id

    def accepted(self) -> dict[str, str]:
        return {r.signup_id: r.course_id for r in self.requests if r.signup_id}

    def withdrawn(self) -> dict[str, str]:
        """The sign-ups whose withdrawal got a 202, and their courses."""
        return {r.signup_id: r.course_id for r in self.requests
                if r.signup_id and r.withdrawn}

    def attempts(self) -> list[Attempt]:
        return [a for r in self.requests for a in r.attempts]


async def create_courses(client: aiohttp.ClientSession, query: aiohttp.ClientSession,
                         token: str, specs: list[CourseSpec], timeout: float = 90) -> None:
    """POST each course (retried until a 202), then wait until the query API knows them."""
    deadline = time.monotonic() + timeout
    for spec in specs:
        while True:
            body = {"course_id": spec.course_id, "title": f"Chaos {spec.course_id}",
                    "lecturer": "Dr. Chaos Monkey", "capacity": spec.capacity,
                    "waitlist_capacity": spec.waitlist_capacity}
            try:
                async with client.post("/courses", json=body,
                                       headers={"Authorization": f"Bearer {token}"}) as r:
                    if r.status == 202:
                        break
            except (aiohttp.ClientError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                raise ChaosError(f"could not create course {spec.course_id}")
            await asyncio.sleep(0.5)
    pending = [s.course_id for s in specs]
    while pending:
        if time.monotonic() > deadline:
            raise ChaosError(f"courses {pending} were not projected within {timeout:.0f}s")
        still = []
        for course_id in pending:
            try:
                async with query.get(f"/courses/{course_id}/stats") as r:
                    if r.status != 200:
                        still.append(course_id)
            except (aiohttp.ClientError, TimeoutError):
                still.append(course_id)
        pending = still
        if pending:
            await asyncio.sleep(0.25)

