"""Who may read the query API of the running stack: the analyst token (Bearer or as the
HTTP Basic password) opens the statistics and the dashboard, the admin token also an
erasure's status; a decision and the probes stay open."""

from __future__ import annotations

import uuid

import httpx

from tests.e2e.conftest import RunningStack

STATISTICS = ["/", "/stats", "/courses", "/courses/no-such-course/stats"]


def test_statistics_need_the_analyst_or_admin_token(full_stack: RunningStack) -> None:
    query, analyst = full_stack.config.query_url, full_stack.config.analyst_token()
    for path in STATISTICS:
        refused = httpx.get(query + path, timeout=10)
        assert refused.status_code == 401, path
        assert refused.headers["WWW-Authenticate"].startswith("Basic realm=")
        wrong = httpx.get(query + path, headers={"Authorization": "Bearer " + "x" * 40},
                          timeout=10)
        assert wrong.status_code == 401, path
        expected = 404 if path.endswith("/stats") and "no-such" in path else 200
        for login in ({"headers": full_stack.analyst}, {"headers": full_stack.admin},
                      {"auth": httpx.BasicAuth("anyone", analyst)}):
            assert httpx.get(query + path, timeout=10, **login).status_code == expected, (
                path, login)


def test_an_erasures_status_needs_the_admin_token(full_stack: RunningStack) -> None:
    url = f"{full_stack.config.query_url}/erasures/{uuid.uuid4()}"
    assert httpx.get(url, timeout=10).status_code == 401
    assert httpx.get(url, headers=full_stack.analyst, timeout=10).status_code == 401
    assert httpx.get(url, headers=full_stack.admin, timeout=10).status_code == 404


def test_a_decision_and_the_probes_stay_open(full_stack: RunningStack) -> None:
    query = full_stack.config.query_url
    assert httpx.get(f"{query}/signups/{uuid.uuid4()}", timeout=10).status_code == 404
    for probe in ("/healthz", "/readyz", "/metrics"):
        assert httpx.get(query + probe, timeout=10).status_code == 200, probe
