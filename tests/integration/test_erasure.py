"""Erasure and the key store: the command API as a process against real Kafka and PostgreSQL.

An accepted erasure is in PostgreSQL before the 202; a SIGKILL in the middle of the
erasure's transaction leaves it pending with the key still there (never half done),
and the restarted API finishes it. Without PostgreSQL the API answers 503 promptly.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import psycopg
import pytest

from schemas.personal import student_hash
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
