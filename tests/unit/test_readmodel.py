"""The query API's in-memory snapshot, its JSON and the dashboard page: pure, no I/O."""

from __future__ import annotations

import json
import random
import re
import typing
from collections import Counter
from datetime import date, timedelta

import pytest
from fastapi.exceptions import RequestValidationError

from projections.api import (
    CoursesPageOut,
    CourseStatsOut,
    GlobalStatsOut,
    Sort,
    _after,
    _limit,
)
from projections.dashboard import Page, View, render_page
from projections.readmodel import (
    AGES_FROM_STUDENTS,
    SORT_KEYS,
    Births,
    CourseView,
    GlobalView,
    Snapshot,
    course_body,
    global_body,
)
from projections.stats import AgeAggregate, age_histogram
from projections.store.views import _PAYLOAD_BYTES, notice_payloads

AS_OF = date(2026, 5, 1)


def course(course_id: str, dobs: list[date], capacity: int = 50) -> CourseView:
    agg = AgeAggregate()
    for d in dobs:
        agg = agg.add(d)
    counts = sorted(Counter(dobs).items())
    return CourseView(course_id, f"Title {course_id}", "Ada", capacity, agg,
                      Births.of([d.toordinal() for d, _ in counts], [n for _, n in counts]))


def overall(courses: list[CourseView]) -> GlobalView:
    agg = AgeAggregate()
    births: Counter[int] = Counter()
    for c in courses:
        agg = agg.merge(c.ages)
        births.update(dict(zip(c.births.days, c.births.counts, strict=True)))
    days = sorted(births)
    return GlobalView(len(courses), agg, Births.of(days, [births[d] for d in days]))


def some_courses(n: int, seed: int = 1) -> list[CourseView]:
    rng = random.Random(seed)
    return [course(f"c-{i:04d}", [date(1960, 1, 1) + timedelta(days=rng.randint(0, 15_000))
                                  for _ in range(rng.randint(0, 30))]) for i in range(n)]


def test_answers_have_the_shapes_of_the_api_models_and_the_histogram_at_as_of() -> None:
    courses = some_courses(5)
    snapshot = Snapshot()
    snapshot.replace(courses, overall(courses))

    body = json.loads(snapshot.course_json("c-0003", AS_OF) or b"")
    assert CourseStatsOut.model_validate(body).model_dump(mode="json") == body
    assert body["age_histogram"] == {str(a): n for a, n in age_histogram(
        courses[3].births.pairs(), AS_OF).items()}
    assert sum(body["age_histogram"].values()) == body["enrolled"]
    stats = json.loads(snapshot.global_json(AS_OF))
    assert GlobalStatsOut.model_validate(stats).model_dump(mode="json") == stats
    assert sum(stats["age_histogram"].values()) == stats["enrollments"] == sum(
        c.ages.count for c in courses)
    page = json.loads(snapshot.page_json(AS_OF, None, 2))
    assert CoursesPageOut.model_validate(page).model_dump(mode="json") == page
    assert snapshot.course_json("nope", AS_OF) is None


def test_pages_walk_every_course_once_in_id_order() -> None:
    courses = some_courses(23)
    snapshot = Snapshot()
    snapshot.replace(reversed(courses), overall(courses))
    seen: list[str] = []
    after = None
    while True:
        page = json.loads(snapshot.page_json(AS_OF, after, 5))
        seen += [c["course_id"] for c in page["courses"]]
        after = page["next"]
        if after is None:
            break
    assert seen == sorted(c.course_id for c in courses)
    assert json.loads(snapshot.page_json(AS_OF, "c-0022", 5)) == {
        "courses": [], "next": None, "as_of": AS_OF.isoformat()}
    assert json.loads(snapshot.page_json(AS_OF, None, 23))["next"] is None


def test_a_changed_course_is_rendered_again_and_a_new_one_joins_the_order() -> None:
    courses = some_courses(3)
    snapshot = Snapshot()
    snapshot.replace(courses, overall(courses))
    before = snapshot.course_json("c-0001", AS_OF)
    stats_before = snapshot.global_json(AS_OF)
    page_before = snapshot.page_json(AS_OF, None, 10)

    changed = course("c-0001", [date(2000, 1, 1)] * 7)
    added = course("c-0000a", [date(1990, 1, 1)])
    everything = [courses[0], changed, courses[2], added]
    snapshot.update([changed, added], overall(everything))

    assert snapshot.course_json("c-0001", AS_OF) != before
    assert json.loads(snapshot.course_json("c-0001", AS_OF) or b"")["age_histogram"] == {"26": 7}
    assert snapshot.global_json(AS_OF) != stats_before
    assert snapshot.page(None, 10) == (["c-0000", "c-0000a", "c-0001", "c-0002"], None)
    page = json.loads(snapshot.page_json(AS_OF, None, 10))
    assert snapshot.page_json(AS_OF, None, 10) != page_before
    assert [c["course_id"] for c in page["courses"]] == ["c-0000", "c-0000a", "c-0001", "c-0002"]
    assert page["courses"][2]["enrolled"] == 7


def test_sorted_pages_cover_every_course_once_in_the_order_asked() -> None:
    courses = some_courses(37, seed=3)
    snapshot = Snapshot()
    snapshot.replace(courses, overall(courses))
    for sort in SORT_KEYS:
        for descending in (False, True):
            rows, after = [], None
            while True:
                page, after = snapshot.sorted_page(AS_OF, sort, descending, after, 8)
                rows += page
                if after is None:
                    break
            assert sorted(r.view.course_id for r in rows) == sorted(c.course_id for c in courses)
            keys = [SORT_KEYS[sort](r) for r in rows]
            assert keys == sorted(keys, reverse=descending), (sort, descending)


@pytest.mark.parametrize("raw", ["0", "1001", "-1", "ten", "²", "1e3", "9" * 5000, ""])
def test_a_bad_limit_is_a_422_naming_limit(raw: str) -> None:
    with pytest.raises(RequestValidationError) as caught:
        _limit(raw, 100)
    assert [e["loc"] for e in caught.value.errors()] == [("query", "limit")]


@pytest.mark.parametrize("raw", ["", "A-course", "a b", "x" * 65, "é"])
def test_a_bad_after_is_a_422_naming_after(raw: str) -> None:
    with pytest.raises(RequestValidationError) as caught:
        _after(raw)
    assert [e["loc"] for e in caught.value.errors()] == [("query", "after")]


def test_good_paging_parameters_pass() -> None:
    assert (_limit(None, 100), _limit("1", 100), _limit("1000", 100)) == (100, 1, 1000)
    assert (_after(None), _after("intro-python-2")) == (None, "intro-python-2")


def test_the_sort_parameter_of_the_api_offers_exactly_the_sort_keys() -> None:
    assert set(typing.get_args(Sort)) == set(SORT_KEYS)


def test_notices_stay_under_postgresqls_payload_limit_and_name_every_course() -> None:
    ids = [f"course-{i:05d}-{'x' * (i % 50)}" for i in range(3000)]
    payloads = list(notice_payloads(ids))
    assert len(payloads) > 1
    assert all(len(p.encode()) <= _PAYLOAD_BYTES for p in payloads)
    assert sorted(c for p in payloads for c in p.split(",")) == sorted(ids)
    assert list(notice_payloads([])) == []


def test_the_dashboard_shows_the_figures_the_api_gives_and_draws_the_distribution() -> None:
    courses = some_courses(12, seed=5)
    snapshot = Snapshot()
    snapshot.replace(courses, overall(courses))
    rows, after = snapshot.sorted_page(AS_OF, "enrolled", True, None, 10)
    chosen = snapshot.figures("c-0004", AS_OF)
    assert chosen is not None
    stats = json.loads(snapshot.global_json(AS_OF))
    html = render_page(Page(View(AS_OF, "enrolled", True), stats, rows, after, chosen,
                       age_histogram(chosen.view.births.pairs(), AS_OF)))

    for key in ("courses", "enrollments", "min_age", "max_age", "average_age"):
        assert f'id="overall-{key}" data-value="{stats[key]}"' in html
    shown = re.findall(r'<tr data-course-id="([^"]+)">', html)
    assert shown == [r.view.course_id for r in rows] and len(shown) == 10
    first = json.loads(snapshot.course_json(shown[0], AS_OF) or b"")
    assert f'<span data-field="enrolled">{first["enrolled"]}</span>' in html
    bars = re.search(r'<svg id="overall-chart"[^>]* data-bars="(\d+)"', html)
    assert bars is not None and int(bars.group(1)) == len(stats["age_histogram"]) > 0
    assert html.count('<rect class="bar"') == len(stats["age_histogram"]) + len(
        age_histogram(chosen.view.births.pairs(), AS_OF))
    assert 'id="next-page"' in html and "after=" + after in html  # type: ignore[operator]
    assert "http://" not in html and "https://" not in html  # nothing from elsewhere


def test_the_dashboard_escapes_what_it_shows() -> None:
    odd = CourseView("x-1", "<script>alert(1)</script>", "A & B", 1, AgeAggregate())
    snapshot = Snapshot()
    snapshot.replace([odd], overall([odd]))
    rows, _ = snapshot.sorted_page(AS_OF, "course_id", False, None, 10)
    html = render_page(Page(View(AS_OF), json.loads(snapshot.global_json(AS_OF)), rows, None, None,
                       {}))
    assert "<script>alert" not in html and "&lt;script&gt;" in html and "A &amp; B" in html
    assert course_body(odd, AS_OF)["age_histogram"] == {}


def test_a_course_of_one_does_not_reveal_its_students_birthday_over_a_year_of_as_of() -> None:
    # The attack: ask for every as_of of a year and watch the figures change on one day.
    alone = course("tiny", [date(2001, 8, 17)])
    answers = {json.dumps({k: v for k, v in course_body(alone, AS_OF + timedelta(days=d)).items()
                           if k != "as_of"}) for d in range(366)}
    assert len(answers) == 1
    body = course_body(alone, AS_OF)
    assert (body["enrolled"], body["min_age"], body["max_age"], body["average_age"],
            body["age_histogram"]) == (1, None, None, None, {})


@pytest.mark.parametrize("students", range(1, AGES_FROM_STUDENTS + 2))
def test_age_figures_are_published_from_k_students_on(students: int) -> None:
    dobs = [date(1990 + i, 3, 4) for i in range(students)]
    view = course("c-k", dobs)
    snapshot = Snapshot()
    snapshot.replace([view], overall([view]))
    body, stats = course_body(view, AS_OF), global_body(overall([view]), AS_OF)
    figures = snapshot.figures("c-k", AS_OF)
    assert figures is not None
    shown = students >= AGES_FROM_STUDENTS
    for answer in (body, stats):
        assert (answer["min_age"] is not None) is shown
        assert sum(answer["age_histogram"].values()) == (students if shown else 0)
    assert (figures.average_age is not None) is shown
    assert body["enrolled"] == stats["enrollments"] == students
def test_the_dashboard_shows_each_waiting_list_and_sorts_by_it() -> None:
    courses = [CourseView(f"w-{n}", "T", "L", 2, AgeAggregate(), waitlist_capacity=5,
                          waitlisted=n) for n in (3, 0, 5)]
    snapshot = Snapshot()
    snapshot.replace(courses, overall(courses))
    rows, _ = snapshot.sorted_page(AS_OF, "waitlisted", True, None, 10)
    assert [r.view.course_id for r in rows] == ["w-5", "w-3", "w-0"]
    html = render_page(Page(View(AS_OF, "waitlisted", True),
                            json.loads(snapshot.global_json(AS_OF)), rows, None, None, {}))
    assert re.findall(r'data-field="waitlisted">(\d+)<', html) == ["5", "3", "0"]
    assert html.count('data-field="waitlist_capacity">5<') == 3
    body = json.loads(snapshot.course_json("w-3", AS_OF) or b"")
    assert (body["waitlisted"], body["waitlist_capacity"]) == (3, 5)
