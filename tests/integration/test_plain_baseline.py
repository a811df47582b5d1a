"""The bench's plain-PostgreSQL baseline (proof/bench_plain_app.py) decides like the system
it is compared with: never over capacity, one seat per student and course, a repeated
Idempotency-Key answers the same decision, every decision has its outbox row and every
accepted one its birth-date count."""

from __future__ import annotations

import os
from collections.abc import Iterator

import psycopg
import pytest
from fastapi.testclient import TestClient

from proof.bench_plain_app import SCHEMA, create_app, create_courses, create_schema, decisions

pytestmark = pytest.mark.integration


@pytest.fixture
def client() -> Iterator[TestClient]:
    url = os.environ["DATABASE_URL"]
    create_schema(url)
    create_courses(url, ["small"], 2)
    with TestClient(create_app(url, pool_size=2)) as client:
        yield client


def _sign_up(client: TestClient, email: str, course: str = "small",
             key: str | None = None) -> dict[str, object]:
    response = client.post(f"/courses/{course}/signups",
                           json={"email": email, "name": "Pat Plain",
                                 "date_of_birth": "2000-02-29"},
                           headers={"Idempotency-Key": key} if key else {})
    assert response.status_code == 200, response.text
    body: dict[str, object] = response.json()
    return body


def test_the_plain_baseline_decides_like_the_system(client: TestClient) -> None:
    first = _sign_up(client, "Ada@Example.org", key="k1")
    assert (first["status"], first["reason"]) == ("accepted", None)
    assert _sign_up(client, "ada@example.org")["reason"] == "already_enrolled"
    assert _sign_up(client, "ada@example.org", key="k1") == first  # a repeat: same answer
    assert _sign_up(client, "bob@example.org")["status"] == "accepted"
    assert _sign_up(client, "cy@example.org")["reason"] == "course_full"
    assert _sign_up(client, "cy@example.org", course="nope")["reason"] == "course_not_found"

    assert client.post("/courses/small/signups", json={"email": "x"}).status_code == 422
    assert decisions(os.environ["DATABASE_URL"]) == {"accepted": 2, "rejected": 3, "outbox": 5}
    with psycopg.connect(os.environ["DATABASE_URL"]) as conn:
        seats = conn.execute(f"SELECT seats_taken FROM {SCHEMA}.courses").fetchone()
        born = conn.execute(f"SELECT students FROM {SCHEMA}.course_birth_dates").fetchall()
    assert seats == (2,) and born == [(2,)]
