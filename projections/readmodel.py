"""What the query API answers, as plain values: course and global views, their JSON, and
the in-memory snapshot of every course's statistics. Pure: no I/O.

`store` reads these views from PostgreSQL; `live` keeps a `Snapshot` of all of them in
the query API's memory and refreshes it when the projector's commits say so. Both paths
render an answer with the same functions, so they say the same thing byte for byte.
"""

from __future__ import annotations

import bisect
import json
from array import array
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from projections.stats import AgeAggregate, AgeStats, age_histogram, age_stats


@dataclass(frozen=True, slots=True, eq=False)
class Births:
    """Accepted sign-ups per birth date: ascending day ordinals and their counts.

    Two int arrays rather than a dict of dates: a million sign-ups over ten thousand
    courses are about a million (course, birth date) pairs, 12 bytes each here.
    """

    days: Sequence[int] = ()
    counts: Sequence[int] = ()

    @classmethod
    def of(cls, days: Iterable[int] | None, counts: Iterable[int] | None) -> Births:
        return cls(array("i", days or ()), array("q", counts or ()))

    def pairs(self) -> Iterator[tuple[date, int]]:
        return zip(map(date.fromordinal, self.days), self.counts, strict=True)

    def total(self) -> int:
        return sum(self.counts)


@dataclass(frozen=True, slots=True)
class CourseView:
    course_id: str
    title: str
    lecturer: str
    capacity: int
    ages: AgeAggregate
    births: Births = field(default_factory=Births)
    waitlist_capacity: int = 0
    waitlisted: int = 0


@dataclass(frozen=True, slots=True)
class GlobalView:
    courses: int
    ages: AgeAggregate
    births: Births = field(default_factory=Births)


@dataclass(frozen=True, slots=True)
class CourseFigures:
    """One course at one date, as the dashboard shows it."""

    view: CourseView
    min_age: int | None
    max_age: int | None
    average_age: float | None

    @property
    def fill(self) -> float:
        return self.view.ages.count / self.view.capacity if self.view.capacity > 0 else 0.0


# ------------------------------------------------------------------ JSON


# Age figures of fewer students than this are not published: min, max and average are
# null and the histogram is empty, as with no students at all. On a course of one, the
# average age at as_of pins the birth date to a day or two, and scanning as_of over a
# year shows the day each student's age changes: their birthday. With at least k
# students that scan shows k birth dates, none of them tied to a person.
AGES_FROM_STUDENTS = 5


def published_ages(agg: AgeAggregate, as_of: date) -> AgeStats:
    """The age figures the query API shows: null below AGES_FROM_STUDENTS students."""
    return age_stats(agg, as_of) if agg.count >= AGES_FROM_STUDENTS else AgeStats(None, None,
                                                                                   None)


def course_body(view: CourseView, as_of: date) -> dict[str, Any]:
    ages = published_ages(view.ages, as_of)
    return {"course_id": view.course_id, "title": view.title, "lecturer": view.lecturer,
            "capacity": view.capacity, "enrolled": view.ages.count,
            "waitlist_capacity": view.waitlist_capacity, "waitlisted": view.waitlisted,
            "min_age": ages.min_age,
            "max_age": ages.max_age, "average_age": ages.average_age,
            "age_histogram": _histogram(view.ages, view.births, as_of),
            "as_of": as_of.isoformat()}


def global_body(view: GlobalView, as_of: date) -> dict[str, Any]:
    ages = published_ages(view.ages, as_of)
    return {"courses": view.courses, "enrollments": view.ages.count, "min_age": ages.min_age,
            "max_age": ages.max_age, "average_age": ages.average_age,
            "age_histogram": _histogram(view.ages, view.births, as_of),
            "as_of": as_of.isoformat()}


def _histogram(agg: AgeAggregate, births: Births, as_of: date) -> dict[str, int]:
    if agg.count < AGES_FROM_STUDENTS:
        return {}
    return {str(age): n for age, n in age_histogram(births.pairs(), as_of).items()}


def dump(body: dict[str, Any]) -> bytes:
    """Compact JSON, as FastAPI writes a model."""
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()


def page_json(courses: Iterable[bytes], next_after: str | None, as_of: date) -> bytes:
    """A page of /courses from the JSON of each course on it."""
    tail = {"next": next_after, "as_of": as_of.isoformat()}
    return b'{"courses":[' + b",".join(courses) + b"]," + dump(tail)[1:]


# ------------------------------------------------------------------ the snapshot

SORT_KEYS: dict[str, Callable[[CourseFigures], Any]] = {
    "course_id": lambda f: f.view.course_id,
    "title": lambda f: f.view.title.casefold(),
    "lecturer": lambda f: f.view.lecturer.casefold(),
    "enrolled": lambda f: f.view.ages.count,
    "capacity": lambda f: f.view.capacity,
    "fill": lambda f: f.fill,
    "waitlisted": lambda f: (f.view.waitlisted, f.view.waitlist_capacity),
    # Courses with nobody enrolled (no ages) sort after every course with ages.
    "min_age": lambda f: (f.min_age is None, f.min_age or 0),
    "max_age": lambda f: (f.max_age is None, f.max_age or 0),
    "average_age": lambda f: (f.average_age is None, f.average_age or 0.0),
}
_REMEMBERED_DATES = 4  # as_of dates whose rendered answers are kept (today, and a few more)
_PAGE_BYTES = 16 << 20  # rendered pages of /courses kept per date, in bytes


@dataclass
class _Rendered:
    """Answers already rendered for one as_of date, dropped piecewise as courses change."""

    courses: dict[str, bytes] = field(default_factory=dict)
    overall: bytes | None = None
    pages: dict[tuple[str | None, int], bytes] = field(default_factory=dict)
    page_bytes: int = 0
    orders: dict[tuple[str, bool], tuple[list[str], dict[str, int]]] = field(
        default_factory=dict)


class Snapshot:
    """Every known course's statistics and the global ones, as of the last refresh.

    Answers are rendered once per course and date, and kept until that course changes, so
    that a request costs a dictionary lookup; a page of /courses is its courses' rendered
    JSON joined, found by bisecting the sorted course ids: it costs the page, not the
    number of courses.
    """

    def __init__(self) -> None:
        self.courses: dict[str, CourseView] = {}
        self.ids: list[str] = []  # sorted
        self.overall = GlobalView(0, AgeAggregate())
        self._rendered: OrderedDict[date, _Rendered] = OrderedDict()

    # -------------------------------------------------------------- changes

    def replace(self, courses: Iterable[CourseView], overall: GlobalView) -> None:
        self.courses = {c.course_id: c for c in courses}
        self.ids = sorted(self.courses)
        self.overall = overall
        self._rendered.clear()

    def update(self, courses: Iterable[CourseView], overall: GlobalView) -> None:
        for course in courses:
            if course.course_id not in self.courses:
                bisect.insort(self.ids, course.course_id)
            self.courses[course.course_id] = course
            for rendered in self._rendered.values():
                rendered.courses.pop(course.course_id, None)
        for rendered in self._rendered.values():
            rendered.overall = None
            rendered.pages.clear()  # a changed or new course may be on any of them
            rendered.page_bytes = 0
            rendered.orders.clear()
        self.overall = overall

    # -------------------------------------------------------------- answers

    def _at(self, as_of: date) -> _Rendered:
        rendered = self._rendered.get(as_of)
        if rendered is None:
            rendered = self._rendered[as_of] = _Rendered()
            while len(self._rendered) > _REMEMBERED_DATES:
                self._rendered.popitem(last=False)
        else:
            self._rendered.move_to_end(as_of)
        return rendered

    def course_json(self, course_id: str, as_of: date) -> bytes | None:
        rendered = self._at(as_of)
        body = rendered.courses.get(course_id)
        if body is None:
            view = self.courses.get(course_id)
            if view is None:
                return None
            body = rendered.courses[course_id] = dump(course_body(view, as_of))
        return body

    def global_json(self, as_of: date) -> bytes:
        rendered = self._at(as_of)
        if rendered.overall is None:
            rendered.overall = dump(global_body(self.overall, as_of))
        return rendered.overall

    def page(self, after: str | None, limit: int) -> tuple[list[str], str | None]:
        """Course ids after `after` (exclusive), at most `limit`, and the next cursor."""
        start = 0 if after is None else bisect.bisect_right(self.ids, after)
        ids = self.ids[start:start + limit]
        more = start + limit < len(self.ids)
        return ids, (ids[-1] if more and ids else None)

    def page_json(self, as_of: date, after: str | None, limit: int) -> bytes:
        rendered = self._at(as_of)
        body = rendered.pages.get((after, limit))
        if body is None:
            ids, next_after = self.page(after, limit)
            bodies = [self.course_json(c, as_of) for c in ids]
            body = page_json((b for b in bodies if b is not None), next_after, as_of)
            if rendered.page_bytes + len(body) > _PAGE_BYTES:
                # Any `after` may be asked for: memory stays bounded, the pages asked for
                # again come back first.
                rendered.pages.clear()
                rendered.page_bytes = 0
            rendered.pages[(after, limit)] = body
            rendered.page_bytes += len(body)
        return body

    # -------------------------------------------------------------- the dashboard

    def figures(self, course_id: str, as_of: date) -> CourseFigures | None:
        view = self.courses.get(course_id)
        if view is None:
            return None
        ages = published_ages(view.ages, as_of)
        return CourseFigures(view, ages.min_age, ages.max_age, ages.average_age)

    def sorted_page(self, as_of: date, sort: str, descending: bool, after: str | None,
                    limit: int) -> tuple[list[CourseFigures], str | None]:
        """A page of courses in the order of `sort`, keyset-paged by the last course id
        shown (ties are broken by course id, so the order is total)."""
        if sort == "course_id" and not descending:
            ids, next_after = self.page(after, limit)
        else:
            order, position = self._order(as_of, sort, descending)
            start = 0 if after is None else position.get(after, -1) + 1
            ids = order[start:start + limit]
            next_after = ids[-1] if ids and start + limit < len(order) else None
        found = (self.figures(c, as_of) for c in ids)
        return [f for f in found if f is not None], next_after

    def _order(self, as_of: date, sort: str, descending: bool,
               ) -> tuple[list[str], dict[str, int]]:
        rendered = self._at(as_of)
        key = (sort, descending)
        if key not in rendered.orders:
            by = SORT_KEYS[sort]
            figures = [f for f in (self.figures(c, as_of) for c in self.ids) if f is not None]
            figures.sort(key=lambda f: f.view.course_id)
            figures.sort(key=by, reverse=descending)  # stable: ties stay in id order
            order = [f.view.course_id for f in figures]
            rendered.orders[key] = (order, {c: i for i, c in enumerate(order)})
        return rendered.orders[key]
