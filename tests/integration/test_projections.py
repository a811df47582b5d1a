"""The projector, the query API and replay against a real broker and database.

Synthetic events go to `course-events` with random course ids; other tests share the
topic and the database, so assertions look only at this module's courses and sign-ups,
and whole-table checks compare the live views with a replay of the same log.
"""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

from projections import readmodel, store
from projections.readmodel import published_ages
from projections.stats import AgeAggregate, age_histogram, age_stats, birth_dates, fold
from schemas import codec, topics
from schemas.messages import (
    CourseChanged,
    CourseCreated,
    Event,
    SignUpRejected,
    StudentPromoted,
    StudentSignedUp,
    StudentWaitlisted,
    StudentWithdrew,
)
from service_kit.kafka_auth import client_config
from stack import postgres
from stack.config import ROOT
from stack.ports import free_port
from stack.procs import kill_now, terminate
from stack.waiting import wait_until
from tests.infra import Infra
from tests.support import headers_of

pytestmark = pytest.mark.integration

NOW = datetime(2026, 11, 1, 9, tzinfo=UTC)


# ------------------------------------------------------------------ helpers


# The database or the API may not be up yet while a projection starts.
wait_for = partial(wait_until, not_yet=(psycopg.OperationalError, httpx.HTTPError))


def db() -> psycopg.Connection:
    return psycopg.connect(os.environ["DATABASE_URL"], autocommit=True, connect_timeout=3)


class Service:
    """A module of ours run as a subprocess, as `make up` runs it."""

    def __init__(self, module: str, env: dict[str, str], log: Path, url: str) -> None:
        self.module, self.env, self.log, self.url = module, env, log, url
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", self.module], cwd=ROOT, stdout=out, stderr=out,
                env={**os.environ, **self.env})

    def kill(self) -> None:
        kill_now(self.proc)

    def stop(self) -> None:
        terminate(self.proc, 15)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


def created(course_id: str, capacity: int = 10_000) -> CourseCreated:
    return CourseCreated(str(uuid.uuid4()), "CourseCreated", NOW, course_id, str(uuid.uuid4()),
                         str(uuid.uuid4()), f"Course {course_id[-4:]}", "Grace Hopper", capacity)


def accepted(course_id: str, dob: date) -> StudentSignedUp:
    return StudentSignedUp(str(uuid.uuid4()), "StudentSignedUp", NOW, course_id,
                           str(uuid.uuid4()), str(uuid.uuid4()), str(uuid.uuid4()),
                           "someone@example.org", "Some One", dob, 1, 10_000)


def rejected(course_id: str, reason: str = "course_full") -> SignUpRejected:
    return SignUpRejected(str(uuid.uuid4()), "SignUpRejected", NOW, course_id, str(uuid.uuid4()),
                          str(uuid.uuid4()), str(uuid.uuid4()), "other@example.org", "Other",
                          reason)


def new_course_id() -> str:
    return f"proj-{uuid.uuid4().hex[:12]}"


def random_load(rng: random.Random, courses: int, decisions: int, repeats: int) -> list[Event]:
    """Courses, then decisions (4 in 5 accepted), with some decisions repeated later."""
    ids = [new_course_id() for _ in range(courses)]
    events: list[Event] = [created(c) for c in ids]
    for _ in range(decisions):
        course = rng.choice(ids)
        dob = date(1950, 1, 1) + timedelta(days=rng.randint(0, 22_000))
        events.append(accepted(course, dob) if rng.random() < 0.8 else rejected(course))
    # A processor that crashed after writing a decision writes it again, same event id.
    for event in rng.sample(events[courses:], repeats):
        events.insert(rng.randint(events.index(event) + 1, len(events)), event)
    return events


@dataclass
class Log:
    """What this module wrote, and the last offset it got per partition."""

    producer: Producer
    events: list[Event] = field(default_factory=list)
    last: dict[int, int] = field(default_factory=dict)

    def write(self, events: Sequence[Event]) -> None:
        for event in events:
            self._produce(event.course_id.encode(), codec.encode(event))
        self.events.extend(events)
        self.flush()

    def write_raw(self, key: bytes, value: bytes) -> tuple[int, int]:
        spot: list[tuple[int, int]] = []
        self._produce(key, value, spot)
        self.flush()
        return spot[0]

    def _produce(self, key: bytes, value: bytes, spot: list[tuple[int, int]] | None = None,
                 ) -> None:
        def delivered(err: Any, msg: Any) -> None:
            assert err is None, err
            p, o = msg.partition(), msg.offset()
            self.last[p] = max(self.last.get(p, -1), o)
            if spot is not None:
                spot.append((p, o))

        self.producer.produce(topics.EVENTS, key=key, value=value, on_delivery=delivered)

    def flush(self) -> None:
        assert self.producer.flush(30) == 0


def stored_positions() -> dict[int, int]:
    with db() as conn:
        rows = conn.execute("SELECT partition, next_offset FROM projection_offsets"
                            " WHERE projection = 'views' AND topic = %s", (topics.EVENTS,))
        return dict(rows.fetchall())


def projected(log: Log) -> bool:
    """Every record this module wrote is behind the live projector's stored positions."""
    stored = stored_positions()
    return all(stored.get(p, 0) > last for p, last in log.last.items())


def wait_projected(log: Log, timeout: float = 60) -> None:
    wait_for(lambda: projected(log), timeout, "the projector to catch up")


def expected_decisions(events: list[Event]) -> dict[str, tuple[str, str | None]]:
    out: dict[str, tuple[str, str | None]] = {}
    for e in events:
        if isinstance(e, StudentSignedUp):
            out.setdefault(e.signup_id, ("accepted", None))
        elif isinstance(e, SignUpRejected):
            out.setdefault(e.signup_id, ("rejected", e.reason))
    return out


def assert_views_equal_the_events(events: list[Event]) -> None:
    """Per course and per sign-up, the live views hold exactly what the events say."""
    courses = sorted({e.course_id for e in events})
    aggregates = fold(events)
    decisions = expected_decisions(events)
    with db() as conn:
        rows = conn.execute(
            "SELECT course_id, enrolled, dob_sum_days, dob_min, dob_max FROM course_stats"
            " WHERE course_id = ANY(%s)", (courses,)).fetchall()
        stored = conn.execute(
            "SELECT signup_id, status, reason FROM signup_decisions WHERE course_id = ANY(%s)",
            (courses,)).fetchall()
        births = conn.execute(
            "SELECT course_id, dob, n FROM course_birth_dates WHERE course_id = ANY(%s)",
            (courses,)).fetchall()
    live = {c: AgeAggregate(n, s, lo, hi) for c, n, s, lo, hi in rows}
    assert live == {c: aggregates.get(c, AgeAggregate()) for c in courses}
    assert {s: (st, r) for s, st, r in stored} == decisions
    counted: dict[str, dict[date, int]] = {}
    for c, dob, n in births:
        counted.setdefault(c, {})[dob] = n
    assert counted == {c: dict(b) for c, b in birth_dates(events).items()}


_COMPARE = {
    "signup_decisions": "signup_id, course_id, status, reason, event_id, decided_at, ticket",
    "course_stats": "course_id, title, lecturer, capacity, enrolled, dob_sum_days, dob_min,"
                    " dob_max, waitlist_capacity, waitlisted",
    "global_stats": "courses, enrollments, dob_sum_days, dob_min, dob_max",
    "course_birth_dates": "course_id, dob, n",
    "global_birth_dates": "dob, n",
}


def assert_same_positions(conn: psycopg.Connection) -> None:
    """The replay's stored positions are the live projector's. A partition the live
    projector has not read an event from yet has no row (it starts at offset 0), while a
    replay writes a position for every partition it read: offset 0 counts as no row."""
    live, shadow = ({p: n for p, n in conn.execute(
        "SELECT partition, next_offset FROM projection_offsets WHERE projection = %s"
        " AND next_offset > 0", (name,)).fetchall()} for name in ("views", "views_shadow"))
    assert live == shadow


def assert_live_equals_a_replay(batch_size: int | None = None) -> None:
    """A full replay of the log into shadow tables holds the same rows as the live views;
    `batch_size`: REPLAY_BATCH_SIZE (default: the setting's)."""
    env = {**os.environ, **({"REPLAY_BATCH_SIZE": str(batch_size)} if batch_size else {})}
    done = subprocess.run([sys.executable, "-m", "projections.replay", "--no-swap", "--quiet"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    with db() as conn:
        for table, columns in _COMPARE.items():
            rows = conn.execute(
                f"(SELECT 'live', {columns} FROM {table}"
                f" EXCEPT ALL SELECT 'live', {columns} FROM {table}_shadow) UNION ALL"
                f" (SELECT 'replay', {columns} FROM {table}_shadow"
                f" EXCEPT ALL SELECT 'replay', {columns} FROM {table}) LIMIT 6").fetchall()
            assert rows == [], f"{table} differs from its replay (rows only in one of them)"
        assert_same_positions(conn)
        for table in _COMPARE:
            conn.execute(f"DROP TABLE {table}_shadow")


def metric(service: Service, sample: str) -> float:
    """One sample of the projector's /metrics, e.g. 'projector_resyncs_total{reason="stale"}'."""
    for line in get(service.url + "/metrics").text.splitlines():
        if line.startswith(sample + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def generation() -> int:
    with db() as conn:
        row = conn.execute("SELECT generation FROM projection_generations"
                           " WHERE projection = 'views'").fetchone()
    assert row is not None
    return int(row[0])


# ------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("projections")


@pytest.fixture(scope="module")
def projector(infra: Infra, run_dir: Path) -> Iterator[Service]:
    port = free_port()
    service = Service("projections.projector", {"PROJECTOR_PORT": str(port),
                                                "PROJECTOR_BATCH_SIZE": "100"},
                      run_dir / "projector.log", f"http://127.0.0.1:{port}")
    service.start()
    wait_for(lambda: get(service.url + "/healthz").status_code == 200, 60,
             "the projector's /healthz")
    yield service
    service.stop()


QUERY_TOKENS = {"ADMIN_TOKEN": "test-admin-token", "ANALYST_TOKEN": "test-analyst-token"}
ANALYST = {"Authorization": f"Bearer {QUERY_TOKENS['ANALYST_TOKEN']}"}


def get(url: str, **kwargs: Any) -> httpx.Response:
    """A GET with the analyst token: the query API's statistics need it; the probes and
    the projector's endpoints ignore it."""
    return httpx.get(url, headers=ANALYST, **kwargs)


@pytest.fixture(scope="module")
def query_api(infra: Infra, run_dir: Path) -> Iterator[str]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    service = Service("projections.api", {"QUERY_API_PORT": str(port), **QUERY_TOKENS},
                      run_dir / "api.log", url)
    service.start()
    wait_for(lambda: get(url + "/readyz").status_code == 200, 60, "the query API")
    yield url
    service.stop()


@pytest.fixture
def log(infra: Infra) -> Log:
    return Log(Producer({**client_config(),
                         "bootstrap.servers": infra.kafka_bootstrap, "acks": "all",
                         "linger.ms": 5}))


# ------------------------------------------------------------------ tests


def test_kills_during_a_load_lose_nothing_and_count_nothing_twice(
    projector: Service, log: Log, query_api: str
) -> None:
    rng = random.Random(4)
    events = random_load(rng, courses=25, decisions=4000, repeats=400)
    bursts = [events[i:i + 1200] for i in range(0, len(events), 1200)]
    killed_mid_burst = 0

    def moved_from(before: dict[int, int]) -> bool:
        return stored_positions() != before

    for burst in bursts:
        wait_projected(log)  # the restarted projector is at work again
        before = stored_positions()
        log.write(burst)
        # Kill it once it has committed part of the burst, inside its next batches.
        wait_for(partial(moved_from, before), 30, "progress", interval=0.005)
        time.sleep(rng.uniform(0.0, 0.02))
        projector.kill()
        killed_mid_burst += not projected(log)
        projector.start()

    assert killed_mid_burst >= 2, "the kills all came after the work; nothing was tested"
    wait_projected(log)
    assert_views_equal_the_events(log.events)
    assert_live_equals_a_replay()
    # And the API says what the events say.
    as_of = date(2026, 6, 30)
    for course, agg in list(fold(log.events).items())[:5]:
        body = get(f"{query_api}/courses/{course}/stats",
                         params={"as_of": as_of.isoformat()}).json()
        stats = published_ages(agg, as_of)
        assert (body["enrolled"], body["min_age"], body["max_age"], body["average_age"]) == (
            agg.count, stats.min_age, stats.max_age, stats.average_age)


def readyz(service: Service) -> tuple[int, str]:
    answer = get(service.url + "/readyz")
    return answer.status_code, answer.json().get("reason", "")


def test_postgres_restarted_under_load_loses_nothing(
    infra: Infra, projector: Service, log: Log, query_api: str
) -> None:
    if infra.config is None:
        pytest.skip("outside servers: the test cannot restart PostgreSQL")
    events = random_load(random.Random(5), courses=10, decisions=3000, repeats=200)
    chunks = [events[i:i + 100] for i in range(0, len(events), 100)]
    wait_for(lambda: get(projector.url + "/healthz").status_code == 200, 30,
             "the projector")
    outages_seen = metric(projector, 'projector_resyncs_total{reason="database"}')
    some_course = events[0].course_id
    log.write(chunks.pop(0))  # the course exists before the outage
    wait_for(lambda: get(f"{query_api}/courses/{some_course}/stats").status_code == 200,
             30, "the course in the query API")
    # Several pooled connections.
    with httpx.Client(headers=ANALYST) as client, ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda _: client.get(f"{query_api}/stats").status_code, range(64)))
    held = chunks.pop()  # written while PostgreSQL is down, whatever the writer's pace

    def write_slowly() -> None:
        for chunk in chunks:
            log.write(chunk)
            time.sleep(0.05)

    writer = threading.Thread(target=write_slowly)
    writer.start()
    time.sleep(0.3)
    postgres.stop_server(infra.config)
    log.write(held)
    wait_for(lambda: readyz(projector) == (503, "PostgreSQL unavailable"), 20,
             "the projector's /readyz to say 503 in the outage")
    # No statistic from memory while the database is away: it may have missed a notice.
    for path in ("/stats", f"/courses/{some_course}/stats", "/courses"):
        answer = get(query_api + path)
        assert (answer.status_code, answer.headers.get("Retry-After")) == (503, "2"), path
    postgres.start(infra.config)
    writer.join(60)

    wait_projected(log, timeout=90)
    assert projector.alive()
    assert readyz(projector) == (200, "")
    assert metric(projector, 'projector_resyncs_total{reason="database"}') > outages_seen
    assert_views_equal_the_events(log.events)
    # The query API's pooled connections died with the server. Not one request fails for
    # that: the first query on a dead connection drops the dead ones and runs again.
    answers = [get(f"{query_api}/courses/{some_course}/stats").status_code
               for _ in range(5)]
    assert answers == [200] * 5
    assert get(query_api + "/readyz").status_code == 200
    # The cache is back (it re-read everything, since notices were lost meanwhile) and
    # follows the projector's commits again.
    wait_for(lambda: get(query_api + "/readyz").json()["cache"] is True, 10,
             "the statistics cache to reconnect")
    expected = fold(log.events)[some_course].count
    assert get(f"{query_api}/courses/{some_course}/stats").json()["enrolled"] == expected
    assert_a_commit_shows_within_a_second(log, query_api, some_course, expected)


def test_an_undecodable_event_goes_to_the_dlq_and_later_ones_are_projected(
    infra: Infra, projector: Service, log: Log
) -> None:
    course = new_course_id()
    partition, offset = log.write_raw(course.encode(), b"\xc3\x01 certainly not avro")
    log.write([created(course), accepted(course, date(2001, 2, 3))])

    wait_projected(log)
    assert_views_equal_the_events(log.events)
    consumer = Consumer({**client_config(),
                         "bootstrap.servers": infra.kafka_bootstrap, "group.id": "t",
                         "enable.auto.commit": False})
    consumer.assign([TopicPartition(topics.EVENTS_DLQ, p, OFFSET_BEGINNING)
                     for p in consumer.list_topics(topics.EVENTS_DLQ, timeout=10)
                     .topics[topics.EVENTS_DLQ].partitions])
    found: dict[str, bytes] = {}

    def dead_letter_found() -> bool:
        for msg in consumer.consume(500, 0.2):
            headers = headers_of(msg) if msg.error() is None else {}
            if (headers.get("dlq.source.partition"), headers.get("dlq.source.offset")) == (
                    str(partition).encode(), str(offset).encode()):
                found.update(headers)
        return bool(found)

    try:
        wait_for(dead_letter_found, 30, "the dead letter")
    finally:
        consumer.close()
    assert found["dlq.source.topic"] == topics.EVENTS.encode()
    assert found["dlq.reason"]
    datetime.fromisoformat(found["dlq.failed_at"].decode())
    metrics = get(projector.url + "/metrics").text
    for name in ("projector_events_total", "projector_batches_total", "projector_lag_events",
                 "projector_lag_seconds", "projector_dlq_total"):
        assert name in metrics


def test_replay_swaps_in_while_clients_read_without_an_error_or_an_empty_answer(
    projector: Service, log: Log, query_api: str
) -> None:
    course = new_course_id()
    ours = [created(course)] + [accepted(course, date(1990, 1, 1) + timedelta(days=i))
                                for i in range(50)] + [rejected(course)]
    log.write(ours)
    wait_projected(log)
    signups = [e.signup_id for e in ours if isinstance(e, StudentSignedUp | SignUpRejected)]
    before = generation()
    problems: list[str] = []
    answered = 0
    stop = threading.Event()

    def hammer() -> None:
        nonlocal answered
        with httpx.Client(base_url=query_api, timeout=10, headers=ANALYST) as client:
            while not stop.is_set():
                for path, good in (
                    (f"/signups/{signups[answered % len(signups)]}",
                     lambda b: b["status"] in ("accepted", "rejected")),
                    (f"/courses/{course}/stats", lambda b: b["enrolled"] == 50),
                    ("/stats", lambda b: b["enrollments"] >= 50 and b["courses"] >= 1),
                ):
                    response = client.get(path)
                    if response.status_code != 200 or not good(response.json()):
                        problems.append(f"{path}: {response.status_code} {response.text}")
                    answered += 1

    readers = [threading.Thread(target=hammer) for _ in range(2)]
    for reader in readers:
        reader.start()
    # The projector keeps projecting new events before, during and after the swap.
    other = new_course_id()
    log.write([created(other)])
    replayed = threading.Event()
    stale_before = metric(projector, 'projector_resyncs_total{reason="stale"}')

    def trickle() -> None:
        while not replayed.is_set():
            log.write([accepted(other, date(2000, 1, 1)) for _ in range(10)])
            time.sleep(0.05)
        log.write([accepted(other, date(2000, 1, 1)) for _ in range(10)])

    writer = threading.Thread(target=trickle)
    writer.start()
    try:
        done = subprocess.run([sys.executable, "-m", "projections.replay", "--quiet"],
                              cwd=ROOT, capture_output=True, text=True, timeout=120)
    finally:
        replayed.set()
        writer.join(60)
    wait_projected(log)
    seen = answered
    wait_for(lambda: answered > seen + 30, 10, "reads after the swap")
    stop.set()
    for reader in readers:
        reader.join(10)

    assert done.returncode == 0, done.stderr[-2000:]
    assert generation() == before + 1
    assert problems == []
    assert answered > 100
    # The copy keyed sign-ups in byte order while it was loaded, and the swapped-in view
    # has the old one's collation (a prepared statement would fail on another).
    assert collations("signup_decisions") == {}
    # After the swap the live projector noticed it and went on from the replay's positions.
    assert metric(projector, 'projector_resyncs_total{reason="stale"}') > stale_before
    assert_views_equal_the_events(log.events)
    assert_live_equals_a_replay()


def test_the_query_api_answers_as_the_contract_says(log: Log, query_api: str,
                                                    projector: Service) -> None:
    empty, leap = new_course_id(), new_course_id()
    born_on_leap_day = accepted(leap, date(2000, 2, 29))
    # Five students, the fewest whose age figures are published.
    older = [accepted(leap, born) for born in (date(1990, 6, 15), date(1985, 1, 10),
                                               date(1988, 5, 5), date(1992, 9, 9))]
    turned_away = rejected(leap, "already_enrolled")
    log.write([created(empty, capacity=12), created(leap), born_on_leap_day, *older,
               turned_away])
    wait_projected(log)

    def ask(path: str, **params: str) -> httpx.Response:
        return get(query_api + path, params=params)

    body = ask(f"/courses/{empty}/stats").json()
    assert body == {"course_id": empty, "title": f"Course {empty[-4:]}",
                    "lecturer": "Grace Hopper", "capacity": 12, "enrolled": 0,
                    "waitlist_capacity": 0, "waitlisted": 0, "min_age": None,
                    "max_age": None, "average_age": None, "age_histogram": {},
                    "as_of": datetime.now(UTC).date().isoformat()}

    for as_of, youngest in (("2024-02-28", 23), ("2024-02-29", 24), ("2023-02-28", 22),
                            ("2023-03-01", 23)):
        body = ask(f"/courses/{leap}/stats", as_of=as_of).json()
        agg = AgeAggregate().add(born_on_leap_day.date_of_birth)
        for other in older:
            agg = agg.add(other.date_of_birth)
        expected = age_stats(agg, date.fromisoformat(as_of))
        assert (body["enrolled"], body["min_age"], body["max_age"], body["average_age"],
                body["as_of"]) == (5, youngest, expected.max_age, expected.average_age, as_of)
        assert body["age_histogram"] == {str(a): n for a, n in age_histogram(
            [(born_on_leap_day.date_of_birth, 1), *((o.date_of_birth, 1) for o in older)],
            date.fromisoformat(as_of)).items()}

    assert ask(f"/signups/{born_on_leap_day.signup_id}").json() == {
        "signup_id": born_on_leap_day.signup_id, "course_id": leap, "status": "accepted",
        "position": None, "reason": None}
    assert ask(f"/signups/{turned_away.signup_id}").json()["reason"] == "already_enrolled"
    assert ask(f"/signups/{uuid.uuid4()}").status_code == 404
    assert ask(f"/courses/{new_course_id()}/stats").status_code == 404
    for bad in ("2024-02-30", "2024-2-1", "yesterday", "2024-02-29T00:00:00"):
        for path in (f"/courses/{leap}/stats", "/stats", "/courses"):
            response = ask(path, as_of=bad)
            assert response.status_code == 422, (path, bad)
            assert response.json()["detail"][0]["loc"] == ["query", "as_of"]
    overall = ask("/stats", as_of="2024-02-29").json()
    assert overall["courses"] >= 2 and overall["enrollments"] >= 5
    assert overall["as_of"] == "2024-02-29"
    assert set(overall) == {"courses", "enrollments", "min_age", "max_age", "average_age",
                            "age_histogram", "as_of"}
    assert sum(overall["age_histogram"].values()) == overall["enrollments"]
    assert ask("/healthz").status_code == 200
    assert "query_api_requests_total" in ask("/metrics").text


# ------------------------------------------------------------------ a registration term


def waitlisted(course_id: str, dob: date, position: int) -> StudentWaitlisted:
    return StudentWaitlisted(str(uuid.uuid4()), "StudentWaitlisted", NOW, course_id,
                             str(uuid.uuid4()), str(uuid.uuid4()), str(uuid.uuid4()), "", "",
                             dob, position)


def withdrew(signup: StudentSignedUp | StudentWaitlisted, seats: int,
             from_: str = "enrolled") -> StudentWithdrew:
    return StudentWithdrew(str(uuid.uuid4()), "StudentWithdrew", NOW, signup.course_id,
                           str(uuid.uuid4()), "corr", signup.signup_id, from_, seats,
                           signup.date_of_birth)


def promoted(signup: StudentWaitlisted, seats: int, cause: str) -> StudentPromoted:
    return StudentPromoted(str(uuid.uuid4()), "StudentPromoted", NOW, signup.course_id, cause,
                           "corr", signup.signup_id, seats, signup.date_of_birth)


def test_a_term_moves_statuses_positions_and_figures_and_a_replay_agrees(
    log: Log, query_api: str, projector: Service
) -> None:
    course = new_course_id()
    first, second = accepted(course, date(1980, 1, 1)), accepted(course, date(2001, 5, 5))
    # Four more seated students: ages are published from AGES_FROM_STUDENTS (5) on.
    others = [accepted(course, date(1985 + n, 7, 7)) for n in range(4)]
    queue = [waitlisted(course, date(1990 + n, 3, 3), n + 1) for n in range(3)]
    log.write([replace(created(course, capacity=6), waitlist_capacity=3), first, second,
               *others, *queue])
    wait_projected(log)

    def signup(event: StudentSignedUp | StudentWaitlisted) -> tuple[str, int | None]:
        body = get(f"{query_api}/signups/{event.signup_id}").json()
        return body["status"], body["position"]

    def stats() -> dict[str, Any]:
        return get(f"{query_api}/courses/{course}/stats", params={"as_of": "2026-01-01"}
                         ).json()

    assert [signup(e) for e in queue] == [("waitlisted", 1), ("waitlisted", 2),
                                          ("waitlisted", 3)]
    assert (stats()["enrolled"], stats()["waitlisted"], stats()["waitlist_capacity"]) == (6, 3, 3)

    # The second in line leaves the queue; the oldest student leaves the course and the
    # head of the queue takes the seat (repeated records, as after a crash, count once).
    leave_queue = withdrew(queue[1], 2, "waitlist")
    leave_course = withdrew(first, 1)
    promotion = promoted(queue[0], 2, leave_course.causation_id)
    log.write([leave_queue, leave_course, promotion, leave_course, promotion])
    wait_projected(log)
    assert [signup(first)] + [signup(e) for e in queue] == [
        ("withdrawn", None), ("accepted", None), ("withdrawn", None), ("waitlisted", 1)]
    body = stats()
    kept = AgeAggregate().add(second.date_of_birth).add(queue[0].date_of_birth)
    for other in others:
        kept = kept.add(other.date_of_birth)
    ages = age_stats(kept, date(2026, 1, 1))
    assert (body["enrolled"], body["waitlisted"], body["max_age"], body["min_age"],
            body["average_age"]) == (6, 1, ages.max_age, ages.min_age, ages.average_age)

    # A bigger room: the last one waiting is promoted in the same breath.
    change = CourseChanged(str(uuid.uuid4()), "CourseChanged", NOW, course, str(uuid.uuid4()),
                           "corr", "Bigger room", "Ada", 8, 1)
    log.write([change, promoted(queue[2], 3, change.causation_id)])
    wait_projected(log)
    body = stats()
    assert (body["title"], body["lecturer"], body["capacity"], body["waitlist_capacity"],
            body["enrolled"], body["waitlisted"]) == ("Bigger room", "Ada", 8, 1, 7, 0)
    assert sum(body["age_histogram"].values()) == 7
    assert signup(queue[2]) == ("accepted", None)
    assert_live_equals_a_replay()
    # Small batches: a term's events and the sign-ups they move in the same batch and in
    # different ones, every way round.
    assert_live_equals_a_replay(batch_size=64)


def test_a_replay_batch_appends_birth_dates_and_a_term_batch_merges_them_first(
    infra: Infra,
) -> None:
    """A replay's fast batches only append their birth dates (no per-course or per-birth-date
    upsert per batch); a later batch with a term's events, which reads and decrements those
    counts, merges its partitions' appended ones first (its own sign-ups' included: only
    the term's events go through the live fold, after the batch's decisions), and the
    final merge the rest."""
    from projections.staged import stage

    target = store.Target("views_p22test", "_p22test", False)
    tables = [*store.VIEWS, store.BIRTHS_PENDING]
    course, elsewhere = new_course_id(), new_course_id()
    first, second = accepted(course, date(1980, 1, 1)), accepted(course, date(2001, 5, 5))
    other = accepted(elsewhere, date(1999, 9, 9))

    def records(events: Sequence[Event], partition: int, start: int,
                ) -> list[tuple[int, int, bytes, bytes]]:
        return [(partition, start + i, e.course_id.encode(), codec.encode(e))
                for i, e in enumerate(events)]

    with db() as conn:
        conn.autocommit = True
        for name in tables:
            conn.execute(f"DROP TABLE IF EXISTS {name}_p22test")
        for name in store.VIEWS:
            conn.execute(f"CREATE TABLE {name}_p22test (LIKE {name} INCLUDING ALL)")
        conn.execute("INSERT INTO global_stats_p22test (id) VALUES (true)")
        conn.execute(f"CREATE TABLE {store.BIRTHS_PENDING}_p22test"
                     " (part int NOT NULL, course_id text NOT NULL, dob date NOT NULL)")
        try:
            store.prepare_staging(conn)
            with conn.transaction():
                store.apply_staged(conn, target, stage(records([created(course), first, second],
                                                               0, 0)), topic=topics.EVENTS)
                store.apply_staged(conn, target, stage(records([other], 1, 0)),
                                   topic=topics.EVENTS)
            assert conn.execute("SELECT count(*) FROM course_birth_dates_p22test").fetchone() \
                == (0,)
            assert conn.execute(f"SELECT part, course_id, dob FROM {store.BIRTHS_PENDING}_p22test"
                                " ORDER BY 1, 3").fetchall() == [
                (0, course, first.date_of_birth), (0, course, second.date_of_birth),
                (1, elsewhere, other.date_of_birth)]

            # One batch: a new sign-up, the first one's withdrawal, and a sign-up that
            # withdraws within the same batch.
            third, brief = accepted(course, date(1970, 3, 3)), accepted(course, date(1960, 6, 6))
            leave, leave_soon = withdrew(first, 1), withdrew(brief, 2)
            term = stage(records([third, leave, brief, leave_soon], 0, 3))
            # Only the term's events are folded as the live projector folds them.
            assert term.live is not None
            assert [r.offset for r in term.live] == [4, 6]
            assert [d[0] for d in term.decisions] == [third.signup_id, brief.signup_id]
            assert term.next_offsets == {0: 7}
            with conn.transaction():
                store.apply_staged(conn, target, term, topic=topics.EVENTS)
            # Partition 0's appended birth dates were merged before the withdrawals took
            # two away; partition 1's still wait for the final merge.
            kept = [second.date_of_birth, third.date_of_birth]
            assert conn.execute(
                "SELECT enrolled, dob_sum_days, dob_min, dob_max FROM course_stats_p22test"
                " WHERE course_id = %s", (course,)).fetchone() == (
                2, sum(d.toordinal() for d in kept), min(kept), max(kept))
            assert conn.execute("SELECT course_id, dob, n FROM course_birth_dates_p22test"
                                " ORDER BY 1, 2").fetchall() == [
                (course, d, 1) for d in sorted(kept)]
            assert dict(conn.execute(
                "SELECT signup_id, status FROM signup_decisions_p22test WHERE course_id = %s",
                (course,)).fetchall()) == {first.signup_id: "withdrawn",
                                           second.signup_id: "accepted",
                                           third.signup_id: "accepted",
                                           brief.signup_id: "withdrawn"}
            assert store.read_positions(conn, target.projection, topics.EVENTS) == {0: 7, 1: 1}
            with conn.transaction():
                store.fill_globals(conn, target)
            assert conn.execute(f"SELECT count(*) FROM {store.BIRTHS_PENDING}_p22test"
                                ).fetchone() == (0,)
            assert conn.execute("SELECT course_id, dob, n FROM course_birth_dates_p22test"
                                " ORDER BY 1, 2").fetchall() == sorted([
                *((course, d, 1) for d in kept), (elsewhere, other.date_of_birth, 1)])
            assert conn.execute("SELECT courses, enrollments, dob_min, dob_max"
                                " FROM global_stats_p22test").fetchone() == (
                1, 3, third.date_of_birth, second.date_of_birth)
        finally:
            for name in tables:
                conn.execute(f"DROP TABLE IF EXISTS {name}_p22test")
            conn.execute("DELETE FROM projection_offsets WHERE projection = %s",
                         (target.projection,))


# ------------------------------------------------------------------ the statistics cache


def enrolled(query_api: str, course: str) -> int:
    return int(get(f"{query_api}/courses/{course}/stats").json()["enrolled"])


def cache_metric(query_api: str, sample: str) -> float:
    for line in get(query_api + "/metrics").text.splitlines():
        if line.startswith(sample + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def assert_a_commit_shows_within_a_second(log: Log, query_api: str, course: str,
                                          before: int) -> None:
    """One more sign-up; from the moment the projector's commit is announced (this test
    LISTENs too: PostgreSQL delivers the notice at the commit), the API shows it within
    1 s. A bounded poll: it fails only if the new value is not there after 1 s."""
    with psycopg.connect(os.environ["DATABASE_URL"], autocommit=True) as listener:
        listener.execute("LISTEN course_stats_changed")
        log.write([accepted(course, date(2001, 1, 1))])
        committed_at = None
        for notice in listener.notifies(timeout=30):
            if course in notice.payload.split(","):
                committed_at = time.monotonic()
                break
        assert committed_at is not None, "no notice of the projector's commit within 30 s"
    while enrolled(query_api, course) != before + 1:
        assert time.monotonic() - committed_at <= 1.0, "not in the API 1 s after the commit"
        time.sleep(0.01)


def test_the_cache_shows_each_commit_within_a_second_and_never_an_older_value(
    log: Log, query_api: str, projector: Service
) -> None:
    course = new_course_id()
    log.write([created(course)])
    wait_projected(log)
    wait_for(lambda: get(query_api + "/readyz").json()["cache"] is True, 30,
             "the statistics cache")
    for n in range(3):
        assert_a_commit_shows_within_a_second(log, query_api, course, n)
    # Once the API has counted a commit's notice, no answer may predate that commit:
    # a request either waits for the refresh or gets the refreshed value.
    def told_more_than(notices: float) -> bool:
        return cache_metric(query_api, "query_api_cache_notices_total") > notices

    for n in range(3, 13):
        wait_projected(log)
        told = cache_metric(query_api, "query_api_cache_notices_total")
        log.write([accepted(course, date(1999, 12, 31))])
        wait_for(partial(told_more_than, told), 30, "the API to be told of the commit",
                 interval=0.002)
        assert enrolled(query_api, course) == n + 1
    assert cache_metric(query_api, "query_api_cache_live") == 1.0


def test_the_cache_reads_every_view_on_a_thread_not_on_the_event_loop(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """On connecting and after a replay's swap (a notice of every view), the query API
    reads every course again: about a second of decoding at a million events, which on
    the event loop held every request meanwhile, a sign-up's decision too. It runs on a
    thread, and gives what the loop's own read gives."""
    from prometheus_client import CollectorRegistry

    from projections import live

    threads: list[int] = []
    replace = readmodel.Snapshot.replace

    def recorded(self: readmodel.Snapshot, *args: Any) -> None:
        threads.append(threading.get_ident())
        replace(self, *args)

    monkeypatch.setattr(readmodel.Snapshot, "replace", recorded)
    url = os.environ["DATABASE_URL"]

    async def follow() -> tuple[int, set[str], set[str]]:
        registry = CollectorRegistry()
        stats = live.LiveStats(url, live.LiveMetrics(registry))

        def everything() -> float:
            return registry.get_sample_value("query_api_cache_refreshes_total",
                                             {"scope": "everything"}) or 0.0

        stats.start()
        try:
            while everything() < 1:
                await asyncio.sleep(0.01)
            async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
                await conn.execute("SELECT pg_notify(%s, %s)",
                                   (store.CHANGES_CHANNEL, store.EVERYTHING))
                while everything() < 2:
                    await asyncio.sleep(0.01)
                courses, _ = await store.fetch_everything(conn)
            return (threading.get_ident(), set(stats.data.courses),
                    {c.course_id for c in courses})
        finally:
            await stats.stop()

    loop_thread, cached, read = asyncio.run(asyncio.wait_for(follow(), 60))
    assert len(threads) == 2 and loop_thread not in threads
    assert cached == read


async def read_directly(after: str, course: str, day: date) -> tuple[bytes, bytes, bytes]:
    """A page, a course and the global figures as the API's PostgreSQL path renders them."""
    async with await psycopg.AsyncConnection.connect(os.environ["DATABASE_URL"],
                                                     autocommit=True) as conn:
        rows, next_after = await store.fetch_page(conn, after, 5)
        one = await store.fetch_course(conn, course)
        overall = await store.fetch_global(conn)
    assert one is not None
    return (readmodel.page_json((readmodel.dump(readmodel.course_body(r, day)) for r in rows),
                                next_after, day),
            readmodel.dump(readmodel.course_body(one, day)),
            readmodel.dump(readmodel.global_body(overall, day)))


def test_pages_walk_every_course_exactly_once_while_courses_are_added(
    log: Log, query_api: str, projector: Service
) -> None:
    ours = [new_course_id() for _ in range(40)]
    log.write([created(c) for c in ours] + [accepted(c, date(1995, 3, 1)) for c in ours[:5]])
    wait_projected(log)
    with db() as conn:
        before = {r[0] for r in conn.execute(
            "SELECT course_id FROM course_stats WHERE title IS NOT NULL")}
    adding = threading.Event()

    def add_courses() -> None:
        while not adding.is_set():
            log.write([created(new_course_id()) for _ in range(3)])
            time.sleep(0.02)

    writer = threading.Thread(target=add_courses)
    writer.start()
    walked: list[str] = []
    pages = 0
    try:
        after: str | None = None
        while True:
            params = {"limit": "7", **({"after": after} if after else {})}
            body = get(query_api + "/courses", params=params).json()
            assert len(body["courses"]) <= 7
            walked += [c["course_id"] for c in body["courses"]]
            pages += 1
            after = body["next"]
            if after is None:
                break
            time.sleep(0.005)  # let the writer's courses land between pages
    finally:
        adding.set()
        writer.join(30)
    assert pages > 5
    assert walked == sorted(walked) and len(walked) == len(set(walked))  # none twice
    assert before <= set(walked)  # every course there from the start, exactly once
    page = get(query_api + "/courses", params={"after": ours[0], "limit": "1",
                                                     "as_of": "2025-03-01"}).json()
    one = page["courses"][0]
    assert one == get(f"{query_api}/courses/{one['course_id']}/stats",
                            params={"as_of": "2025-03-01"}).json()
    assert page["as_of"] == "2025-03-01"
    # What the API reads from PostgreSQL while its cache is not connected says the same.
    wait_projected(log)
    day = date(2025, 3, 1)
    direct = asyncio.run(read_directly(ours[0], ours[1], day))
    for path, params, body in (
        ("/courses", {"after": ours[0], "limit": "5"}, direct[0]),
        (f"/courses/{ours[1]}/stats", {}, direct[1]), ("/stats", {}, direct[2]),
    ):
        assert get(query_api + path, params={**params, "as_of": day.isoformat()}
                         ).content == body, path
    for params, name in (({"limit": "0"}, "limit"), ({"limit": "1001"}, "limit"),
                         ({"limit": "ten"}, "limit"), ({"after": "NOT a course!"}, "after"),
                         ({"as_of": "2025-13-01"}, "as_of")):
        answer = get(query_api + "/courses", params=params)
        assert answer.status_code == 422, params
        assert [d["loc"] for d in answer.json()["detail"]] == [["query", name]], params


# ------------------------------------------------------------------ parallel and resumable replay


def replay_command(*args: str, batch_size: int = 50) -> subprocess.Popen[str]:
    """`python -m projections.replay` as `make replay` runs it, with small batches: many
    commits, so that a kill lands between batches as well as inside one."""
    return subprocess.Popen(
        [sys.executable, "-m", "projections.replay", "--quiet", *args], cwd=ROOT,
        env={**os.environ, "REPLAY_BATCH_SIZE": str(batch_size)}, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def finished(proc: subprocess.Popen[str]) -> str:
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, err[-2000:]
    return out


def shadow_done() -> int:
    """Offsets in the shadow copies (0 when there are none)."""
    with db() as conn:
        row = conn.execute("SELECT coalesce(sum(next_offset), 0) FROM projection_offsets"
                           " WHERE projection = 'views_shadow'").fetchone()
    return int(row[0]) if row else 0


def children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except FileNotFoundError:
        return []
    return [int(c) for c in text.split()]


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def reached(proc: subprocess.Popen[str], offsets: int) -> bool:
    return shadow_done() >= offsets or proc.poll() is not None


def all_dead(pids: list[int]) -> bool:
    return not any(alive(pid) for pid in pids)


def assert_shadow_equals_live() -> None:
    with db() as conn:
        for table, columns in _COMPARE.items():
            differ = conn.execute(
                f"SELECT count(*) FROM ((SELECT {columns} FROM {table}"
                f" EXCEPT ALL SELECT {columns} FROM {table}_shadow) UNION ALL"
                f" (SELECT {columns} FROM {table}_shadow"
                f" EXCEPT ALL SELECT {columns} FROM {table})) AS d").fetchone()
            assert differ == (0,), f"{table} differs from its replay"
        assert_same_positions(conn)


def drop_shadow_copies() -> None:
    with db() as conn:
        store.drop_shadow(conn, "views")


def test_a_replay_worker_lowers_its_own_postgresql_backends_priority() -> None:
    """The backend does most of a replay's work: it runs at the workers' niceness, so
    the query API's reads go first (this PostgreSQL runs here, as a user we may renice)."""
    from projections.replay import _lower_backend_priority

    with db() as conn, db() as other:
        pid = conn.info.backend_pid
        assert os.getpriority(os.PRIO_PROCESS, pid) == 0
        _lower_backend_priority(conn, 7)
        assert os.getpriority(os.PRIO_PROCESS, pid) == 7
        assert os.getpriority(os.PRIO_PROCESS, other.info.backend_pid) == 0  # only its own
        # Nor does its work move to parallel workers, which run at the postmaster's.
        assert [conn.execute(f"SHOW {name}").fetchone() for name in (
            "max_parallel_workers_per_gather", "max_parallel_maintenance_workers")] == [
            ("0",), ("0",)]


def test_a_backend_that_may_not_be_reniced_leaves_one_log_line_and_the_replay_goes_on(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """PostgreSQL under another user (or in a container whose pids are not ours): the
    renice is refused. That is one WARNING line per process, not an error: the replay
    goes on, its backends at their own priority, still without parallel workers."""
    from projections import replay

    def refused(*_args: Any) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(replay.os, "setpriority", refused)
    monkeypatch.setattr(replay, "_said_not_reniced", False)
    with db() as conn, db() as another, caplog.at_level("INFO", logger="projections.replay"):
        pid = conn.info.backend_pid
        replay._lower_backend_priority(conn, 7)
        assert os.getpriority(os.PRIO_PROCESS, pid) == 0
        assert conn.execute("SELECT 1").fetchone() == (1,)  # the connection still works
        assert conn.execute("SHOW max_parallel_workers_per_gather").fetchone() == ("0",)
        replay._lower_backend_priority(another, 7)  # the process's next: no second line
    lines = [r for r in caplog.records if r.name == "projections.replay"]
    assert [(r.levelname, r.getMessage()) for r in lines] == [
        ("WARNING", "replay backend not reniced: it keeps its priority")]
    assert lines[0].backend_pid == pid  # type: ignore[attr-defined]


def test_replay_workers_run_niced_from_their_start_and_every_thread_once(
        infra: Infra) -> None:
    """A worker is reniced as soon as it starts, so its interpreter's start-up and imports
    (about a second of CPU per worker, all at once) do not compete with the query API at
    niceness 0; its threads get the niceness once, not twice."""
    from projections.replay import Workers
    from projections.settings import ReplaySettings

    settings = ReplaySettings(kafka_bootstrap_servers=os.environ["KAFKA_BOOTSTRAP_SERVERS"],
                              database_url=os.environ["DATABASE_URL"], replay_nice=7)

    def niceness(pid: int) -> set[int]:
        # Field 19 of /proc/<pid>/task/<tid>/stat, counted after the command's ")".
        return {int((task / "stat").read_text().rsplit(")", 1)[1].split()[16])
                for task in Path(f"/proc/{pid}/task").iterdir()}

    # `go` is never set: the workers wait, their Kafka client's threads started.
    with Workers(settings, [[0], [1]], {0: 0, 1: 0}) as workers:
        pids = [p.pid for p in workers.processes if p.pid is not None]
        assert [niceness(pid) for pid in pids] == [{7}, {7}]  # before any import is done
        wait_for(lambda: all(len(list(Path(f"/proc/{pid}/task").iterdir())) > 2
                             for pid in pids), 60, "the workers' threads")
        assert [niceness(pid) for pid in pids] == [{7}, {7}]


def _cpu_cgroup_of(pid: int) -> str:
    """The cpu controller's cgroup of process `pid` (/proc/<pid>/cgroup; v1 or v2)."""
    lines = [line.split(":", 2) for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines()]
    for _, controllers, path in lines:
        if "cpu" in controllers.split(","):
            return path
    return next(path for _, controllers, path in lines if controllers == "")


def _writable_cpu_mount() -> Path | None:
    from projections.cpugroup import cpu_mount
    mount = cpu_mount(Path("/proc/self/mounts").read_text())
    return mount if mount is not None and os.access(mount, os.W_OK) else None


@pytest.mark.skipif(_writable_cpu_mount() is None,
                    reason="no cpu cgroup controller this user may write (not root, no "
                           "delegated cgroup): the replay runs niced only")
def test_replay_workers_and_their_backends_run_in_the_idle_cpu_group(infra: Infra) -> None:
    """Under autogroups a backend, however niced, takes a full session's CPU share against
    the query API: a replay's workers (from their start) and their backends go into an
    idle CPU cgroup, and the group is removed once they are gone."""
    from projections import cpugroup
    from projections.replay import Workers, _lower_backend_priority
    from projections.settings import ReplaySettings

    mount = _writable_cpu_mount()
    assert mount is not None
    group = cpugroup.prepare(str(mount / "course-signup-replay-test"))
    assert group is not None
    assert (group.path / "cpu.idle").read_text().strip() == "1"
    settings = ReplaySettings(kafka_bootstrap_servers=os.environ["KAFKA_BOOTSTRAP_SERVERS"],
                              database_url=os.environ["DATABASE_URL"], replay_nice=7)
    name = "/course-signup-replay-test"
    try:
        with Workers(settings, [[0], [1]], {0: 0, 1: 0}, group) as workers:
            pids = [p.pid for p in workers.processes if p.pid is not None]
            assert [_cpu_cgroup_of(pid) for pid in pids] == [name, name]
        with db() as conn, db() as other:
            _lower_backend_priority(conn, 7, group)
            assert _cpu_cgroup_of(conn.info.backend_pid) == name
            assert _cpu_cgroup_of(other.info.backend_pid) != name  # only its own
        wait_for(lambda: not (group.path / "cgroup.procs").read_text().strip(), 30,
                 "the backend's exit")
    finally:
        cpugroup.remove(group)
    assert not group.path.exists()


def collations(table: str) -> dict[str, str]:
    """The collation of each of `table`'s columns that has a non-default one, and of the
    columns of its indexes (an index keeps the collation it was built with)."""
    with db() as conn:
        rows = conn.execute(
            "SELECT a.attname, c.collname FROM pg_attribute a"
            " JOIN pg_collation c ON c.oid = a.attcollation"
            " WHERE a.attrelid = %s::regclass AND a.attnum > 0 AND NOT a.attisdropped"
            " AND c.collname <> 'default'"
            " UNION SELECT a.attname, c.collname FROM pg_index i"
            " CROSS JOIN LATERAL unnest(i.indkey, i.indcollation) AS k(attnum, coll)"
            " JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum"
            " JOIN pg_collation c ON c.oid = k.coll"
            " WHERE i.indrelid = %s::regclass AND c.collname <> 'default'",
            (table, table)).fetchall()
    return dict(rows)


def test_a_replay_batch_repeating_a_stored_decision_counts_it_once() -> None:
    """A replay batch whose decisions are all new is COPYed in as it is; one that repeats
    a decision already in the shadow copy (after a processor crash) falls back to the
    fold that keeps the first: the same counts either way."""
    from projections.staged import stage

    course = new_course_id()
    first, second, third = (accepted(course, date(2000, 1, d)) for d in (1, 2, 3))
    refused = rejected(course)

    def records(offset: int, *events: Event) -> list[tuple[int, int, bytes, bytes]]:
        return [(0, offset + i, course.encode(), codec.encode(e)) for i, e in enumerate(events)]

    with db() as conn:
        try:
            target = store.create_shadow(conn, "views")
            # Random UUIDs go into its primary key by memcmp, not strcoll; the repeats'
            # fold joins its staging table on the key, in the same collation.
            assert collations("signup_decisions_shadow") == {"signup_id": "C"}
            for batch in (records(0, created(course), first, second),
                          records(3, second, third, refused),  # `second` again
                          records(6, third, first)):  # repeats only
                with conn.transaction():
                    store.prepare_staging(conn)
                    store.apply_staged(conn, target, stage(batch), topic=topics.EVENTS)
            with conn.transaction():  # as the replay does once its batches are in
                store.merge_births(conn, target)
            store.set_logged(conn, "views")  # back to the view's collation
            assert collations("signup_decisions_shadow") == collations("signup_decisions")
            with conn.transaction():  # a repeat folded into the logged copy still counts once
                store.prepare_staging(conn)
                store.apply_staged(conn, target, stage(records(9, second)), topic=topics.EVENTS)
            row = conn.execute(
                "SELECT enrolled, dob_min, dob_max FROM course_stats_shadow"
                " WHERE course_id = %s", (course,)).fetchone()
            births = conn.execute(
                "SELECT dob, n FROM course_birth_dates_shadow WHERE course_id = %s ORDER BY dob",
                (course,)).fetchall()
            decisions = conn.execute(
                "SELECT status, count(*) FROM signup_decisions_shadow WHERE course_id = %s"
                " GROUP BY status ORDER BY status", (course,)).fetchall()
        finally:
            store.drop_shadow(conn, "views")
    assert row == (3, date(2000, 1, 1), date(2000, 1, 3))
    assert births == [(date(2000, 1, d), 1) for d in (1, 2, 3)]
    assert decisions == [("accepted", 3), ("rejected", 1)]


def test_a_merge_inserts_a_courses_first_counts_and_adds_to_counts_already_there() -> None:
    """A merge whose courses have no birth-date counts yet inserts them plainly; one with
    a course already counted adds to its counts (and inserts the new course's)."""
    from projections.staged import stage

    one, two = new_course_id(), new_course_id()
    d1, d2, d3 = date(1999, 1, 1), date(1999, 2, 2), date(1999, 3, 3)

    def batch(offset: int, *events: Event) -> list[tuple[int, int, bytes, bytes]]:
        return [(0, offset + i, b"k", codec.encode(e)) for i, e in enumerate(events)]

    with db() as conn:
        try:
            target = store.create_shadow(conn, "views", [0])
            for records in (batch(0, created(one), accepted(one, d1), accepted(one, d1),
                                  accepted(one, d2)),
                            batch(4, created(two), accepted(one, d1), accepted(one, d3),
                                  accepted(two, d1))):
                with conn.transaction():
                    store.prepare_staging(conn)
                    store.apply_staged(conn, target, stage(records), topic=topics.EVENTS)
                with conn.transaction():
                    store.merge_births(conn, target, [0])
            with conn.transaction():
                store.merge_births(conn, target)  # nothing left: nothing changes
            counts = conn.execute(
                "SELECT course_id, dob, n FROM course_birth_dates_shadow"
                " WHERE course_id = ANY(%s) ORDER BY 1, 2", ([one, two],)).fetchall()
            enrolled: dict[str, int] = dict(conn.execute(
                "SELECT course_id, enrolled FROM course_stats_shadow WHERE course_id = ANY(%s)",
                ([one, two],)).fetchall())
        finally:
            store.drop_shadow(conn, "views")
    assert counts == sorted([(one, d1, 3), (one, d2, 1), (one, d3, 1), (two, d1, 1)])
    assert enrolled == {one: 5, two: 1}


def test_a_workers_merge_empties_its_partitions_appended_birth_dates_and_no_others() -> None:
    """The appended birth dates have a table per partition: a worker's merge takes its
    partitions' rows (one with no table of its own too, from the default part), empties
    their tables by TRUNCATE (a new file) instead of deleting row by row, and leaves
    another worker's partition as it was."""
    from projections.staged import stage

    courses = [new_course_id() for _ in range(3)]
    dob = date(1990, 3, 4)
    pending = store.BIRTHS_PENDING + "_shadow"

    def batch(partition: int, course: str) -> list[tuple[int, int, bytes, bytes]]:
        events: list[Event] = [created(course), accepted(course, dob)]
        return [(partition, i, course.encode(), codec.encode(e)) for i, e in enumerate(events)]

    def filenode(table: str) -> int:
        row = conn.execute("SELECT relfilenode FROM pg_class WHERE relname = %s",
                           (table,)).fetchone()
        assert row is not None
        return int(row[0])

    with db() as conn:
        try:
            target = store.create_shadow(conn, "views", [0, 1])
            for partition, course in zip((0, 1, 7), courses, strict=True):
                with conn.transaction():
                    store.prepare_staging(conn)
                    store.apply_staged(conn, target, stage(batch(partition, course)),
                                       topic=topics.EVENTS)
            before = filenode(f"{pending}_p0")
            with conn.transaction():  # the merge of a worker owning partitions 0 and 7
                store.merge_births(conn, target, [0, 7])
            merged = conn.execute("SELECT course_id, enrolled FROM course_stats_shadow"
                                  " WHERE course_id = ANY(%s) AND enrolled > 0 ORDER BY 1",
                                  (courses,)).fetchall()
            left = conn.execute(f"SELECT tableoid::regclass::text, part FROM {pending}"
                                ).fetchall()
            truncated = filenode(f"{pending}_p0") != before
        finally:
            store.drop_shadow(conn, "views")
    assert merged == sorted([(courses[0], 1), (courses[2], 1)])
    assert left == [(f"{pending}_p1", 1)]
    assert truncated


def test_a_replay_killed_at_random_batches_resumes_to_the_views_of_an_uninterrupted_one(
    projector: Service, log: Log
) -> None:
    log.write(random_load(random.Random(22), courses=20, decisions=3000, repeats=150))
    wait_projected(log)
    drop_shadow_copies()
    rng = random.Random(2022)
    total = sum(last + 1 for last in log.last.values())  # the log's offsets, about
    kills: list[tuple[int, int]] = []  # (offsets in the shadow at the kill, after it)
    for run, workers in enumerate((1, 2, 4, 2)):
        proc = replay_command("--no-swap", f"--workers={workers}",
                              *(("--restart",) if run == 0 else ()), batch_size=20)
        done = shadow_done() if run else 0
        target = done + int((total - done) * rng.uniform(0.1, 0.4))
        wait_for(partial(reached, proc, target), 120, "the replay to move on",
                 interval=0.005)
        workers_of_run = children(proc.pid)
        at_kill = shadow_done()
        proc.kill()  # SIGKILL of the replay process: its workers die with it
        proc.wait(10)
        wait_for(partial(all_dead, workers_of_run), 10, "the workers to die with the replay")
        kills.append((at_kill, shadow_done()))
    out = finished(replay_command("--no-swap", "--workers=2"))
    # Nothing committed was lost, nothing went back, and each run went on from the last.
    assert all(after >= at for at, after in kills)
    assert [after for _, after in kills] == sorted(after for _, after in kills)
    assert sum(0 < after < total * 0.95 for _, after in kills) >= 3, kills
    assert f"continuing from {kills[-1][1]} offsets" in out
    assert_shadow_equals_live()  # the resumed replay equals the live views ...
    drop_shadow_copies()
    assert_live_equals_a_replay()  # ... which equal an uninterrupted replay


def test_each_worker_count_gives_the_same_views(projector: Service, log: Log) -> None:
    log.write(random_load(random.Random(23), courses=8, decisions=500, repeats=20))
    wait_projected(log)
    for workers in (1, 2, 4):
        out = finished(replay_command("--no-swap", "--restart", f"--workers={workers}",
                                      batch_size=500))
        assert f"{workers} workers" in out
        assert_shadow_equals_live()
        drop_shadow_copies()


def test_events_arriving_during_a_parallel_replay_are_in_the_views_after_the_swap(
    projector: Service, log: Log, query_api: str
) -> None:
    course = new_course_id()
    log.write([created(course)])
    wait_projected(log)
    before = generation()
    arriving: list[Event] = []
    replayed = threading.Event()

    def trickle() -> None:
        while not replayed.is_set():
            batch: list[Event] = [accepted(course, date(1995, 5, 5)) for _ in range(5)]
            batch += [rejected(course)]
            log.write(batch)
            arriving.extend(batch)
            time.sleep(0.02)

    writer = threading.Thread(target=trickle)
    writer.start()
    try:
        out = finished(replay_command("--workers=2", "--restart", batch_size=200))
    finally:
        replayed.set()
        writer.join(60)
    assert "2 workers" in out and "swapped in" in out
    assert generation() == before + 1
    assert len(arriving) > 0
    wait_projected(log)
    assert_views_equal_the_events(log.events)
    assert enrolled(query_api, course) == sum(isinstance(e, StudentSignedUp) for e in arriving)
    assert_live_equals_a_replay()


def test_the_projector_and_the_query_api_show_a_replay_running(
    projector: Service, query_api: str, log: Log
) -> None:
    log.write([created(new_course_id())])
    wait_projected(log)
    # Hold partition 0 the way a worker of a killed replay would: the new replay's worker
    # waits for it, while the replay process keeps its heartbeat in replay_runs.
    with db() as holder:
        holder.execute("SELECT pg_advisory_lock(hashtext('replay-partition:views'), 0)")
        proc = replay_command("--no-swap", "--restart", "--workers=1")
        try:
            wait_for(lambda: metric(projector, "projector_replay_running") == 1, 20,
                     "the projector's replay gauge")
            wait_for(lambda: cache_metric(query_api, "query_api_replay_running") == 1, 20,
                     "the query API's replay gauge")
        finally:
            holder.execute("SELECT pg_advisory_unlock_all()")
    finished(proc)
    drop_shadow_copies()
    wait_for(lambda: metric(projector, "projector_replay_running") == 0, 20,
             "the projector's replay gauge back at 0")
    wait_for(lambda: cache_metric(query_api, "query_api_replay_running") == 0, 20,
             "the query API's replay gauge back at 0")


def _reloptions(table: str) -> list[str] | None:
    """The storage parameters of `table` and, prefixed with "toast.", of its TOAST table;
    None while there is no such table."""
    with db() as conn:
        row = conn.execute("SELECT coalesce(c.reloptions, '{}'), coalesce(t.reloptions, '{}')"
                           " FROM pg_class c LEFT JOIN pg_class t ON t.oid = c.reltoastrelid"
                           " WHERE c.oid = to_regclass(%s)", (table,)).fetchone()
    return None if row is None else [*row[0], *("toast." + option for option in row[1])]


def _without_autovacuum(table: str) -> bool:
    options = _reloptions(table)
    return (options is not None and "autovacuum_enabled=false" in options
            and "toast.autovacuum_enabled=false" in options)


def test_a_swap_waits_for_a_vacuum_of_a_view_without_queueing_the_reads_behind_it(
    projector: Service, log: Log
) -> None:
    """Autovacuum holds SHARE UPDATE EXCLUSIVE on a table it works on, and PostgreSQL
    cancels it for a waiting lock only after deadlock_timeout (1 s): a swap that asked for
    its ACCESS EXCLUSIVE locks then would queue every read of the views behind that
    request. The shadow copies run without autovacuum (given back by the swap), and the
    swap first waits for any VACUUM or ANALYZE of a view, reads going on meanwhile. Here
    a session holds that lock on a view the way an autovacuum would (but is never
    cancelled), until the test has read the views while the replay waits to swap."""
    log.write([created(new_course_id())])
    wait_projected(log)
    before = generation()
    with db() as holder:
        holder.execute("BEGIN")
        holder.execute("LOCK TABLE course_stats IN SHARE UPDATE EXCLUSIVE MODE")
        replay = replay_command("--workers=1", "--restart")
        try:
            # The positions and the copies are read one after the other: the positions
            # a last replay left can still be there while --restart makes new copies.
            wait_for(lambda: shadow_done() > 0 and all(
                _without_autovacuum(f"{name}_shadow")
                for name in ("signup_decisions", "course_birth_dates")), 60,
                "the replay's shadow copies, without autovacuum")
            time.sleep(3)  # the replay has read everything by now and waits to swap
            assert replay.poll() is None
            assert generation() == before  # not swapped: its transaction is not begun
            with db() as reader:  # nothing queued ahead of a read of a view
                reader.execute("SET statement_timeout = '2s'")
                for name in store.VIEWS:
                    reader.execute(f"SELECT count(*) FROM {name}").fetchone()
        finally:
            holder.execute("COMMIT")
        out = finished(replay)
    assert "swapped in" in out
    assert generation() == before + 1
    for name in store.VIEWS:  # the swapped-in views are autovacuumed again
        options = _reloptions(name)
        assert options is not None, name
        assert not [o for o in options if "autovacuum" in o], name
