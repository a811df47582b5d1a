"""The dashboard in a real browser: headless Chromium (Debian's package, installed by
`python -m stack prepare`) opens GET / of the running stack."""

from __future__ import annotations

import os
import re
import uuid
from html import unescape
from pathlib import Path

import httpx

from stack import browser
from stack.waiting import eventually
from tests.e2e.conftest import RunningStack

AS_OF = "2026-06-01"
# Five enrolled, the fewest whose age figures are published; the sixth finds no seat.
BORN = ["2000-02-29", "1999-12-31", "2001-01-01", "1980-07-15", "1995-06-01", "2000-02-29"]


def _course(stack: RunningStack, capacity: int) -> str:
    return stack.create_course("dash", capacity, "Charts & <Tables>", "Dr. Tufte",
                               waitlist_capacity=3)


def _sign_up(stack: RunningStack, course_id: str, born: str) -> str:
    answer = httpx.post(f"{stack.config.command_url}/courses/{course_id}/signups",
                        json={"email": f"s.{uuid.uuid4().hex[:8]}@example.org",
                              "name": "Dash Board", "date_of_birth": born}, timeout=30)
    assert answer.status_code == 202, answer.text
    return str(answer.json()["signup_id"])


def _field(html: str, pattern: str) -> str:
    found = re.search(pattern, html, re.S)
    assert found is not None, pattern
    return unescape(found.group(1))


def test_the_dashboard_shows_what_the_api_says_and_draws_the_charts(
    full_stack: RunningStack,
) -> None:
    query = full_stack.config.query_url
    course = _course(full_stack, capacity=5)
    signups = [_sign_up(full_stack, course, born) for born in BORN]  # the sixth waits
    eventually(lambda: all(httpx.get(f"{query}/signups/{s}").status_code == 200
                           for s in signups) or None, 90, "every decision")
    stats = eventually(
        lambda: (lambda s: s if s["enrolled"] == 5 else None)(
            httpx.get(f"{query}/courses/{course}/stats", params={"as_of": AS_OF},
                      headers=full_stack.analyst).json()),
        30, "the course's statistics")
    # At 2026-06-01: born 29 Feb 2000 and 31 Dec 1999 are 26, 1 Jan 2001 is 25, 1 Jun
    # 1995 is 31 that day, and 15 Jul 1980 is 45 (the birthday is still to come); the
    # sixth sign-up found no seat and waits, first on a list of three.
    assert stats["age_histogram"] == {"25": 1, "26": 2, "31": 1, "45": 1}
    assert (stats["waitlisted"], stats["waitlist_capacity"]) == (1, 3)

    overall = httpx.get(f"{query}/stats", params={"as_of": AS_OF},
                        headers=full_stack.analyst).json()
    page = httpx.get(f"{query}/courses", params={"as_of": AS_OF},
                     headers=full_stack.analyst).json()
    # The browser logs in with HTTP Basic: any user name, the analyst token as password.
    with_login = query.replace("http://", f"http://analyst:{full_stack.config.analyst_token()}@")
    url = f"{with_login}/?as_of={AS_OF}&course={course}"
    dom = browser.dom(url)

    for key in ("courses", "enrollments", "min_age", "max_age", "average_age"):
        shown = _field(dom, rf'id="overall-{key}" data-value="([^"]*)"')
        assert shown == ("" if overall[key] is None else str(overall[key])), key
    rows = re.findall(r'<tr data-course-id="([^"]+)">(.*?)</tr>', dom, re.S)
    assert [r[0] for r in rows] == [c["course_id"] for c in page["courses"]]
    for (course_id, row), api in zip(rows, page["courses"], strict=True):
        for key in ("enrolled", "capacity", "waitlisted", "waitlist_capacity", "min_age",
                    "max_age", "average_age"):
            shown = _field(row, rf'data-field="{key}">([^<]*)<')
            assert shown == ("–" if api[key] is None else str(api[key])), (course_id, key)
    if page["next"] is not None:
        assert f"after={page['next']}" in dom
    # The charts: one bar per age present, each laid out with a size by the browser.
    for chart, histogram in (("overall-chart", overall["age_histogram"]),
                             ("course-chart", stats["age_histogram"])):
        tag = _field(dom, rf'(<svg id="{chart}"[^>]*>)')
        assert f'data-bars="{len(histogram)}"' in tag
        assert f'data-drawn="{len(histogram)}"' in tag, f"{chart} not drawn: {tag}"
    assert "Charts &amp; &lt;Tables&gt;" in dom  # shown as text, not markup
    # This course's waiting list, as the browser shows it (a test stack has far fewer
    # courses than a page of 100, so the course is on the first page).
    mine = dict(rows)[course]
    assert _field(mine, r'data-field="waitlisted">([^<]*)<') == "1"
    assert _field(mine, r'data-field="waitlist_capacity">([^<]*)<') == "3"

    run_dir = Path(os.environ.get("RUN_DIR") or full_stack.config.run_dir)
    shot = browser.screenshot(url, run_dir / "screenshots" / "dashboard.png")
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
