"""The query API's tokens: what counts as presented, and who is turned away (no I/O:
a refused request never reaches the database)."""

from __future__ import annotations

import base64

import pytest
from fastapi.testclient import TestClient

from projections import access
from projections.api import create_app
from projections.settings import QueryApiSettings

ADMIN, ANALYST = "admin-token-0123456789", "analyst-token-0123456789"


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@pytest.mark.parametrize(("header", "token"), [
    (f"Bearer {ANALYST}", ANALYST.encode()),
    (f"bearer  {ANALYST} ", ANALYST.encode()),
    (basic("anyone", ANALYST), ANALYST.encode()),
    (basic("", ANALYST), ANALYST.encode()),
    (basic("a:b", "c"), b"b:c"),  # the user name ends at the first colon (RFC 7617)
    (None, None), ("", None), ("Bearer", None), ("Basic !!!", None),
    (basic("analyst", ""), None), ("Digest abc", None),
])
def test_the_presented_token(header: str | None, token: bytes | None) -> None:
    assert access.presented(header) == token


def test_matching_accepts_only_the_exact_token() -> None:
    accepted = (ANALYST.encode(), ADMIN.encode())
    assert access.matches(ANALYST.encode(), accepted)
    assert access.matches(ADMIN.encode(), accepted)
    assert not access.matches(ANALYST[:-1].encode(), accepted)
    assert not access.matches(ANALYST.encode() + b"x", accepted)
    assert not access.matches(None, accepted)


@pytest.fixture(scope="module")
def client() -> TestClient:
    settings = QueryApiSettings(database_url="postgresql://nobody@127.0.0.1:1/none",
                                admin_token=ADMIN, analyst_token=ANALYST)  # type: ignore[arg-type]
    return TestClient(create_app(settings))  # no lifespan: nothing connects


@pytest.mark.parametrize("path", ["/", "/stats", "/courses", "/courses/c-1/stats",
                                  "/stats?as_of=not-a-date"])
@pytest.mark.parametrize("header", [None, "Bearer wrong-token-000000", basic("x", "wrong"),
                                    f"Basic {ANALYST}"])
def test_statistics_without_a_valid_token_are_401_with_a_basic_challenge(
        client: TestClient, path: str, header: str | None) -> None:
    response = client.get(path, headers={"Authorization": header} if header else {})
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith('Basic realm="course-signup"')
    assert "Bearer" in response.headers["WWW-Authenticate"]


@pytest.mark.parametrize("header", [None, f"Bearer {ANALYST}", basic("analyst", ANALYST)])
def test_an_erasures_status_needs_the_admin_token(client: TestClient,
                                                  header: str | None) -> None:
    response = client.get("/erasures/5f0c7c1e-8a51-4d3f-9f53-0f4b8a6a9d10",
                          headers={"Authorization": header} if header else {})
    assert response.status_code == 401


def test_the_probes_stay_open(client: TestClient) -> None:
    assert client.get("/healthz").status_code == 200
    assert client.get("/metrics").status_code == 200
