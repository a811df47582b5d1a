"""The command API as a process, against the real Kafka broker at KAFKA_BOOTSTRAP_SERVERS."""

from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import AsyncExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from confluent_kafka import Consumer, KafkaError, Message, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from schemas import codec, topics
from schemas.messages import ChangeCourse, CreateCourse, SignUp, Withdraw
from schemas.personal import seat_key, signup_id_for, student_hash, unseal
from service_kit.kafka_auth import client_config
from stack.ports import free_port
from stack.procs import terminate
from stack.waiting import wait_until
from tests.support import headers_of, kafka_servers, value_of

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "integration-test-admin-token"
SECRET = "integration-test-pseudonym-secret"
SIGNUPS = 2_000
STUDENTS = 1_500
CONCURRENCY = 100


@pytest.fixture(scope="module")
def bootstrap() -> str:
    servers = kafka_servers()
    _ensure_topic(servers, topics.COMMANDS, int(os.environ.get("PARTITIONS", "4")))
    return servers


def _ensure_topic(servers: str, name: str, partitions: int) -> None:
    admin = AdminClient({**client_config(), "bootstrap.servers": servers})
    if name in admin.list_topics(timeout=10).topics:
        return
    future = admin.create_topics([NewTopic(name, partitions, 1)])[name]
    try:
        future.result(timeout=30)
    except Exception as exc:  # another test module may have created it meanwhile
        if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
            raise


def _answers(url: str, status: int) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == status
    except httpx.TransportError:
        return False


@contextmanager
def running_api(bootstrap: str, log_file: Path, **env: str) -> Iterator[str]:
    """`python -m command_api` on a free port, as `make up` starts it."""
    port = free_port()
    with log_file.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "command_api"],
            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
            env={**os.environ, "KAFKA_BOOTSTRAP_SERVERS": bootstrap, "ADMIN_TOKEN": TOKEN,
                 "PSEUDONYM_SECRET": SECRET, "COMMAND_API_PORT": str(port),
                 "WITHDRAWAL_SECRET": "integration-withdrawal-secret",
                 "HOST": "127.0.0.1", **env},
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: process.poll() is not None or _answers(f"{url}/healthz", 200), 30,
                    "the command API to start")
        if process.poll() is not None:
            pytest.fail(f"the command API exited:\n{log_file.read_text()}")
        yield url
    finally:
        if not terminate(process, 15):
            pytest.fail("the command API did not stop within 15 s of SIGTERM")


@pytest.fixture(scope="module")
def api(bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with running_api(bootstrap, tmp_path_factory.mktemp("api") / "command-api.log") as url:
        wait_until(lambda: _answers(f"{url}/readyz", 200), 30, "the command API to be ready")
        yield url


def _end_offsets(bootstrap: str) -> list[TopicPartition]:
    consumer = Consumer({**client_config(),
                         "bootstrap.servers": bootstrap, "group.id": f"test-{uuid.uuid4()}"})
    try:
        partitions = consumer.list_topics(topics.COMMANDS, timeout=10).topics[topics.COMMANDS]
        return [
            TopicPartition(topics.COMMANDS, p,
                           consumer.get_watermark_offsets(
                               TopicPartition(topics.COMMANDS, p), timeout=10)[1])
            for p in partitions.partitions
        ]
    finally:
        consumer.close()


def _read_commands(
    bootstrap: str, start: list[TopicPartition], course_id: str, count: int, timeout: float = 60
) -> list[Message]:
    """The first `count` messages keyed `course_id` written after `start`."""
    consumer = Consumer({
        **client_config(),
        "bootstrap.servers": bootstrap, "group.id": f"test-{uuid.uuid4()}",
        "enable.auto.commit": False, "isolation.level": "read_committed",
    })
    consumer.assign(start)
    found: list[Message] = []
    deadline = time.monotonic() + timeout
    try:
        while len(found) < count and time.monotonic() < deadline:
            for message in consumer.consume(num_messages=500, timeout=0.5):
                assert message.error() is None, message.error()
                if message.key() == course_id.encode():
                    found.append(message)
    finally:
        consumer.close()
    assert len(found) >= count, f"only {len(found)} of {count} commands arrived in {timeout}s"
    return found


def _student(i: int) -> dict[str, Any]:
    return {"email": f"Student.{i}@Example.org", "name": f"Student {i}",
            "date_of_birth": f"{1960 + i % 40}-{1 + i % 12:02d}-{1 + i % 28:02d}"}


def _course_id() -> str:
    return f"it-{uuid.uuid4().hex[:12]}"


def test_an_accepted_sign_up_is_in_the_topic_keyed_by_course_with_its_headers(
    api: str, bootstrap: str
) -> None:
    course_id = _course_id()
    start = _end_offsets(bootstrap)

    created = httpx.post(f"{api}/courses", headers={"Authorization": f"Bearer {TOKEN}"},
                         json={"course_id": course_id, "title": "Kafka", "lecturer": "Jay",
                               "capacity": 50})
    signed = httpx.post(f"{api}/courses/{course_id}/signups", json=_student(7),
                        headers={"Idempotency-Key": "attempt-1", "X-Correlation-Id": "corr-7"})

    assert (created.status_code, signed.status_code) == (202, 202)
    signup_id = signed.json()["signup_id"]
    create_message, signup_message = _read_commands(bootstrap, start, course_id, 2)
    # One key, one partition: the processor sees a course's commands in order.
    assert create_message.partition() == signup_message.partition()
    create_course = codec.decode(value_of(create_message))
    assert isinstance(create_course, CreateCourse)
    assert create_course.command_id == created.json()["command_id"]
    assert headers_of(create_message)["command_type"] == b"CreateCourse"
    sign_up = codec.decode(value_of(signup_message))
    assert isinstance(sign_up, SignUp)
    assert (sign_up.signup_id, sign_up.command_id, sign_up.email, sign_up.correlation_id) == (
        signup_id, signup_id, "", "corr-7")
    # Sealed under the student's key, which is in PostgreSQL under the student's keyed hash.
    with psycopg.connect(os.environ["DATABASE_URL"]) as conn:
        row = conn.execute("SELECT key_id::text, key FROM student_keys WHERE student_hash = %s",
                           (student_hash(SECRET.encode(), "student.7@example.org"),)).fetchone()
        # The command carries this sign-up's own reference to that key.
        ref = conn.execute("SELECT key_id::text FROM signup_keys WHERE key_ref = %s",
                           (sign_up.key_id,)).fetchone()
    assert row is not None and ref == (row[0],) and sign_up.key_id != row[0]
    assert signup_id == signup_id_for(row[1], course_id, "attempt-1")
    assert sign_up.seat_key == seat_key(row[1], course_id)
    assert sign_up.email_sealed is not None and sign_up.name_sealed is not None
    # As given, the domain in lower case: the mail goes to the spelling the student chose.
    assert unseal(row[1], signup_id, "email", sign_up.email_sealed) == "Student.7@example.org"
    assert unseal(row[1], signup_id, "name", sign_up.name_sealed) == "Student 7"
    assert b"student.7" not in value_of(signup_message).lower()
    # Sent with its own X-Correlation-Id: traced, so the processor logs its decision at INFO.
    assert headers_of(signup_message) == {"correlation_id": b"corr-7", "command_type": b"SignUp",
                                          "traced": b"1"}


async def test_two_thousand_concurrent_sign_ups_are_all_accepted_and_all_in_the_topic(
    api: str, bootstrap: str, capsys: pytest.CaptureFixture[str]
) -> None:
    course_id = _course_id()
    start = _end_offsets(bootstrap)
    pending = iter(range(SIGNUPS))
    responses: list[httpx.Response] = []
    latencies: list[float] = []

    async def worker(client: httpx.AsyncClient) -> None:
        for i in pending:
            began = time.perf_counter()
            response = await client.post(f"/courses/{course_id}/signups",
                                         json=_student(i % STUDENTS))
            latencies.append(time.perf_counter() - began)
            responses.append(response)

    async with AsyncExitStack() as stack:
        # One client per connection: a single httpx client shared by 100 concurrent
        # requests spends more time in its connection pool than the server takes to answer.
        # They are built before the clock starts (each builds an SSL context).
        clients = [await stack.enter_async_context(httpx.AsyncClient(base_url=api, timeout=30))
                   for _ in range(CONCURRENCY)]
        began = time.perf_counter()
        await asyncio.gather(*(worker(client) for client in clients))
        elapsed = time.perf_counter() - began

    statuses = [r.status_code for r in responses]
    assert statuses.count(202) == SIGNUPS, {s: statuses.count(s) for s in set(statuses)}
    accepted = {r.json()["signup_id"] for r in responses}
    assert len(accepted) == SIGNUPS
    in_topic = {codec.decode(value_of(m)).signup_id  # type: ignore[union-attr]
                for m in _read_commands(bootstrap, start, course_id, SIGNUPS)}
    assert in_topic == accepted
    quantiles = statistics.quantiles(latencies, n=100)
    with capsys.disabled():
        print(f"\ncommand API: {SIGNUPS} sign-ups, concurrency {CONCURRENCY}: "
              f"{SIGNUPS / elapsed:.0f} accepted/s, p50 {quantiles[49] * 1000:.1f} ms, "
              f"p99 {quantiles[98] * 1000:.1f} ms")


async def test_with_kafka_unreachable_every_command_is_a_prompt_503_and_never_a_202(
    tmp_path: Path,
) -> None:
    nowhere = f"127.0.0.1:{free_port()}"  # nothing listens there
    produce_timeout = 2.0

    with running_api(nowhere, tmp_path / "command-api.log",
                     PRODUCE_TIMEOUT_SECONDS=str(produce_timeout)) as url:
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:

            async def timed(request: Any) -> tuple[httpx.Response, float]:
                began = time.perf_counter()
                response = await request
                return response, time.perf_counter() - began

            results = await asyncio.gather(
                timed(client.get("/readyz")),
                *(timed(client.post(f"/courses/c{i}/signups", json=_student(i)))
                  for i in range(20)),
                timed(client.post("/courses", headers={"Authorization": f"Bearer {TOKEN}"},
                                  json={"title": "T", "lecturer": "L", "capacity": 1})),
            )
            metrics = (await client.get("/metrics")).text

    (ready, ready_took), *commands = results
    assert ready.status_code == 503
    assert ready_took < 3
    for response, took in commands:
        assert response.status_code == 503
        assert int(response.headers["Retry-After"]) > 0
        assert took < produce_timeout + 3
    assert "command_api_publish_failures_total 21.0" in metrics


def test_a_keyed_sign_up_is_one_command_of_one_student_however_late_the_retry(
    api: str, bootstrap: str
) -> None:
    course_id = _course_id()
    start = _end_offsets(bootstrap)

    def post(i: int, key: str, **changes: str) -> httpx.Response:
        return httpx.post(f"{api}/courses/{course_id}/signups", json={**_student(i), **changes},
                          headers={"Idempotency-Key": key}, timeout=30)

    first, other = post(11, "shared-key"), post(12, "shared-key")
    assert (first.status_code, other.status_code) == (202, 202)
    ada_id = first.json()["signup_id"]
    # Another student's request with the same key is that student's own sign-up.
    assert other.json()["signup_id"] != ada_id
    with psycopg.connect(os.environ["DATABASE_URL"], autocommit=True) as conn:
        # A retry a month later, long past the processor's memory of decisions.
        aged = conn.execute("UPDATE signup_requests SET created_at = created_at - interval "
                            "'30 days', lease_until = lease_until - interval '30 days'"
                            " WHERE signup_id = %s", (ada_id,)).rowcount
        assert aged == 1
        late = post(11, "shared-key")
        changed = post(11, "shared-key", name="Somebody Else")
        marker = post(13, "marker")

        assert (late.status_code, late.json()["signup_id"]) == (202, ada_id)
        assert changed.status_code == 422
        assert [e["field"] for e in changed.json()["detail"]] == ["Idempotency-Key"]
        assert marker.status_code == 202
        # In the topic: Ada's one command, the other student's, then the marker, produced
        # last on the same partition: a repeat of Ada's would come before it.
        commands = _read_commands(bootstrap, start, course_id, 3)
        ids = [codec.decode(value_of(m)).signup_id for m in commands]  # type: ignore[union-attr]
        assert ids == [ada_id, other.json()["signup_id"], marker.json()["signup_id"]]

        # The record goes with the student's key: after the erasure nothing links to her.
        erased = httpx.post(f"{api}/erasures", json={"email": _student(11)["email"]},
                            headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)
        assert erased.status_code == 202
        wait_until(lambda: conn.execute(
            "SELECT status FROM erasures WHERE erasure_id = %s",
            (erased.json()["erasure_id"],)).fetchone() == ("done",), 30, "the erasure")
        assert conn.execute("SELECT count(*) FROM signup_requests WHERE signup_id = %s",
                            (ada_id,)).fetchone() == (0,)


def test_a_course_change_and_a_withdrawal_with_its_token_land_after_the_sign_up(
    api: str, bootstrap: str
) -> None:
    course_id = _course_id()
    start = _end_offsets(bootstrap)
    signed = httpx.post(f"{api}/courses/{course_id}/signups", json=_student(8))
    assert signed.status_code == 202
    signup_id, token = signed.json()["signup_id"], signed.json()["withdrawal_token"]
    url = f"{api}/courses/{course_id}/signups/{signup_id}/withdrawal"
    assert httpx.post(url, json={"withdrawal_token": "x" * 43}).status_code == 401
    withdrawn = httpx.post(url, json={"withdrawal_token": token})
    changed = httpx.patch(f"{api}/courses/{course_id}", json={"capacity": 9},
                          headers={"Authorization": f"Bearer {TOKEN}"})
    assert (withdrawn.status_code, changed.status_code) == (202, 202)
    commands = [codec.decode(value_of(m))
                for m in _read_commands(bootstrap, start, course_id, 3)]
    assert [type(c).__name__ for c in commands] == ["SignUp", "Withdraw", "ChangeCourse"]
    withdraw = commands[1]
    assert isinstance(withdraw, Withdraw) and withdraw.signup_id == signup_id
    assert withdraw.command_id == withdrawn.json()["command_id"]
    change = commands[2]
    assert isinstance(change, ChangeCourse) and (change.capacity, change.title) == (9, None)
