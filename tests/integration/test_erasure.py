"""Erasure and the key store: the command API as a process against real Kafka and PostgreSQL.

An accepted erasure is in PostgreSQL before the 202; a SIGKILL in the middle of the
erasure's transaction leaves it pending with the key still there (never half done),
and the restarted API finishes it. Without PostgreSQL the API answers 503 promptly.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime
from pathlib import Path

import httpx
import psycopg
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import Envelope

from command_api.keys import DataKey, key_for_sync
from notifier.batch import advance_batch
from notifier.handler import Done, Handler, Job
from notifier.mailer import SmtpMailer
from notifier.observability import Metrics
from notifier.settings import Settings as NotifierSettings
from notifier.store import PostgresStore
from schemas import topics
from schemas.codec import encode
from schemas.messages import StudentSignedUp
from schemas.personal import seal, seat_key, student_hash
from service_kit.records import Headers, SourceRecord
from stack.ports import free_port
from stack.waiting import wait_until

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "integration-test-admin-token"
SECRET = "integration-test-pseudonym-secret"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}


def _status(url: str) -> int:
    try:
        return httpx.get(url, timeout=3).status_code
    except httpx.TransportError:
        return 0


@contextmanager
def command_api(log_file: Path, **env: str) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    port = free_port()
    with log_file.open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "command_api"], cwd=ROOT, stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "ADMIN_TOKEN": TOKEN, "PSEUDONYM_SECRET": SECRET,
                 "WITHDRAWAL_SECRET": "integration-withdrawal-secret",
                 "COMMAND_API_PORT": str(port), "HOST": "127.0.0.1",
                 "KEY_STORE_TIMEOUT_SECONDS": "1", **env})
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: process.poll() is not None or _status(f"{url}/healthz") == 200, 30,
                    "the command API to start")
        assert process.poll() is None, log_file.read_text()
        yield url, process
    finally:
        if process.poll() is None:
            process.terminate()
            process.wait(timeout=15)


def _student(email: str) -> dict[str, str]:
    return {"email": email, "name": "Erin Erased", "date_of_birth": "1999-09-09"}


def _erasure(conn: psycopg.Connection, erasure_id: str) -> tuple[str, object, object]:
    row = conn.execute("SELECT status, student_hash, completed_at FROM erasures"
                       " WHERE erasure_id = %s", (erasure_id,)).fetchone()
    assert row is not None, "the accepted erasure is not in PostgreSQL"
    return row[0], row[1], row[2]


def _has_key(conn: psycopg.Connection, email: str) -> bool:
    row = conn.execute("SELECT 1 FROM student_keys WHERE student_hash = %s",
                       (student_hash(SECRET.encode(), email),)).fetchone()
    return row is not None


def test_an_erasure_deletes_the_key_and_is_done_even_after_a_sigkill_in_its_transaction(
    tmp_path: Path,
) -> None:
    email = f"erin.{uuid.uuid4().hex[:8]}@example.org"
    other = f"olga.{uuid.uuid4().hex[:8]}@example.org"
    log = tmp_path / "command-api.log"
    with psycopg.connect(os.environ["DATABASE_URL"], autocommit=True) as conn:
        with command_api(log) as (url, process):
            wait_until(lambda: _status(f"{url}/readyz") == 200, 30, "ready")
            for who in (email, other):
                signed = httpx.post(f"{url}/courses/erasure-it/signups", json=_student(who))
                assert signed.status_code == 202
            assert _has_key(conn, email) and _has_key(conn, other)

            # Hold the student's key row, so the erasure's DELETE waits inside its
            # transaction: the API is then killed in the middle of the erasure.
            blocker = psycopg.connect(os.environ["DATABASE_URL"])
            blocker.execute("SELECT 1 FROM student_keys WHERE student_hash = %s FOR UPDATE",
                            (student_hash(SECRET.encode(), email),))
            accepted = httpx.post(f"{url}/erasures", json={"email": email.upper()},
                                  headers=ADMIN)
            assert accepted.status_code == 202
            erasure_id = accepted.json()["erasure_id"]
            assert accepted.json()["status"] == "pending"
            wait_until(lambda: conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                " AND query LIKE 'DELETE FROM student_keys%'").fetchone() == (1,), 15,
                "the erasure to wait inside its transaction")
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=10)
        blocker.rollback()
        blocker.close()
        # The killed API's transaction is rolled back once PostgreSQL sees the client gone.
        wait_until(lambda: conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'DELETE FROM student_keys%'"
            " AND state <> 'idle'").fetchone() == (0,), 15, "the killed transaction to end")
        status, hashed, completed = _erasure(conn, erasure_id)
        assert (status, completed) == ("pending", None) and hashed is not None
        assert _has_key(conn, email), "half done: the key is gone but the erasure is pending"

        with command_api(log) as (url, _):  # the restart finishes it
            wait_until(lambda: _erasure(conn, erasure_id)[0] == "done", 15, "the erasure")
            status, hashed, completed = _erasure(conn, erasure_id)
            assert hashed is None and completed is not None
            assert not _has_key(conn, email)
            assert _has_key(conn, other)
            # The erased student may sign up again: that is new data under a new key.
            again = httpx.post(f"{url}/courses/erasure-it/signups", json=_student(email))
            assert again.status_code == 202 and _has_key(conn, email)


def test_without_the_key_store_sign_ups_and_erasures_are_prompt_503s(tmp_path: Path) -> None:
    nowhere = f"postgresql://postgres@127.0.0.1:{free_port()}/coursesignup"
    with command_api(tmp_path / "command-api.log", DATABASE_URL=nowhere) as (url, _):
        wait_until(lambda: _status(f"{url}/healthz") == 200, 10, "the API")
        for method, path, body, headers in (
            ("POST", "/courses/c/signups", _student("ann@example.org"), {}),
            ("POST", "/erasures", {"email": "ann@example.org"}, ADMIN),
            ("GET", "/readyz", None, {}),
        ):
            began = time.monotonic()
            response = httpx.request(method, url + path, json=body, headers=headers, timeout=30)
            assert response.status_code == 503, (path, response.text)
            assert int(response.headers["Retry-After"]) > 0
            assert time.monotonic() - began < 5, f"{path} took too long"


class StallingSink:
    """A real SMTP server (aiosmtpd) that holds its answer to DATA until released."""

    def __init__(self) -> None:
        self.receiving = threading.Event()
        self.release = threading.Event()
        self.answered_at: datetime | None = None
        self.recipients: list[str] = []

    async def handle_DATA(  # noqa: N802 - aiosmtpd hook name
        self, server: object, session: object, envelope: Envelope
    ) -> str:
        self.receiving.set()
        await asyncio.to_thread(self.release.wait, 30)
        self.recipients += envelope.rcpt_tos
        self.answered_at = datetime.now(UTC)
        return "250 OK"


def _one(handler: Handler, job: Job) -> object:
    return handler.advance(job)


def _in_a_batch(handler: Handler, job: Job) -> object:
    # As a lane runs it: the key locked with the batch's reads, released by the record.
    [(_, outcome)] = advance_batch(handler, [job])
    return outcome


@pytest.mark.parametrize("advance", [_one, _in_a_batch])
def test_an_erasure_is_done_only_after_a_send_to_that_student_has_finished(
    tmp_path: Path, advance: Callable[[Handler, Job], object],
) -> None:
    email = f"stella.{uuid.uuid4().hex[:8]}@example.org"
    database_url = os.environ["DATABASE_URL"]
    sink = StallingSink()
    controller = Controller(sink, hostname="127.0.0.1", port=free_port())
    controller.start()
    settings = NotifierSettings(kafka_bootstrap_servers="unused:9092",  # type: ignore[call-arg]
                                database_url=database_url, smtp_host="127.0.0.1",
                                smtp_port=controller.port, smtp_timeout_seconds=60)
    store, mailer = PostgresStore(database_url), SmtpMailer(settings)
    handler = Handler(store, mailer, NoDeadLetters(), Metrics(), settings.mail_from)
    try:
        with psycopg.connect(database_url, autocommit=True) as conn, \
                command_api(tmp_path / "command-api.log") as (url, _):
            wait_until(lambda: _status(f"{url}/readyz") == 200, 30, "ready")
            key = key_for_sync(conn, student_hash(SECRET.encode(), email))
            outcomes: list[object] = []
            sending = threading.Thread(
                target=lambda: outcomes.append(advance(handler, _decision_for(email, key))))
            sending.start()
            assert sink.receiving.wait(30), "the notifier never reached DATA"

            # The notifier read the key and is sending; now the student is erased.
            accepted = httpx.post(f"{url}/erasures", json={"email": email}, headers=ADMIN)
            assert accepted.status_code == 202
            erasure_id = accepted.json()["erasure_id"]
            wait_until(lambda: conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                " AND query LIKE 'SELECT pg_advisory_xact_lock(%'").fetchone() == (1,), 15,
                "the erasure to wait for the send")
            time.sleep(1)
            assert _erasure(conn, erasure_id)[0] == "pending", "done while a mail may go out"
            assert _has_key(conn, email)

            sink.release.set()
            sending.join(30)
            wait_until(lambda: _erasure(conn, erasure_id)[0] == "done", 30, "the erasure")
            completed = _erasure(conn, erasure_id)[2]
            assert outcomes == [Done("sent")] and sink.recipients == [email]
            assert isinstance(completed, datetime) and sink.answered_at is not None
            assert completed >= sink.answered_at
            # Once done, a decision still in flight finds no key and sends nothing.
            assert advance(handler, _decision_for(email, key)) == Done("erased")
            # No key lock is left behind by the notifier's session.
            assert store._conn is not None
            assert conn.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"
                                " AND pid = %s", (store._conn.info.backend_pid,)).fetchone() == (0,)
            assert sink.recipients == [email]
    finally:
        sink.release.set()
        store.close()
        mailer.close()
        controller.stop()


class NoDeadLetters:
    def send(self, record: SourceRecord, headers: Headers) -> None:
        raise AssertionError("nothing is dead-lettered here")


def _decision_for(email: str, key: DataKey) -> Job:
    signup_id, course_id = str(uuid.uuid4()), "erasure-it"
    decision = StudentSignedUp(
        event_id=str(uuid.uuid4()), event_type="StudentSignedUp",
        occurred_at=datetime.now(UTC), course_id=course_id, causation_id=signup_id,
        correlation_id=str(uuid.uuid4()), signup_id=signup_id, email="", name="",
        date_of_birth=date(1999, 9, 9), seats_taken=1, capacity=10, key_id=key.ref,
        email_sealed=seal(key.key, signup_id, "email", email),
        name_sealed=seal(key.key, signup_id, "name", "Stella Stalled"),
        seat_key=seat_key(key.key, course_id))
    return Job.of(SourceRecord(topics.EVENTS, 0, 0, course_id.encode(), encode(decision), []))
