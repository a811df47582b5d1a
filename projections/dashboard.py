"""The dashboard at GET / of the query API: one HTML page, rendered here. Pure: no I/O.

No JavaScript library and nothing fetched from elsewhere: the charts are SVG drawn on
the server, the table is sorted and paged by links (server side, over every course), and
the `as_of` picker is a plain form. One short inline script only marks, once the browser
has laid the chart out, how many bars it drew (`data-drawn`), for the end-to-end test.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import date
from html import escape
from typing import Any
from urllib.parse import urlencode

from projections.readmodel import CourseFigures

DEFAULT_LIMIT = 100
COLUMNS: tuple[tuple[str, str], ...] = (
    ("course_id", "Course"), ("title", "Title"), ("lecturer", "Lecturer"),
    ("enrolled", "Enrolled / capacity"), ("fill", "Fill"),
    ("waitlisted", "Waiting / list"), ("min_age", "Min age"),
    ("max_age", "Max age"), ("average_age", "Avg age"),
)


@dataclass(frozen=True)
class View:
    """What the page shows: its query string, parsed."""

    as_of: date
    sort: str = "course_id"
    descending: bool = False
    after: str | None = None
    limit: int = DEFAULT_LIMIT
    course: str | None = None  # the course whose age distribution is drawn

    def link(self, **changes: Any) -> str:
        view = replace(self, **changes)
        query: dict[str, str] = {"as_of": view.as_of.isoformat()}
        if view.sort != "course_id":
            query["sort"] = view.sort
        if view.descending:
            query["dir"] = "desc"
        if view.after:
            query["after"] = view.after
        if view.limit != DEFAULT_LIMIT:
            query["limit"] = str(view.limit)
        if view.course:
            query["course"] = view.course
        return "/?" + urlencode(query)


@dataclass(frozen=True)
class Page:
    view: View
    overall: dict[str, Any]  # the body of GET /stats at view.as_of
    rows: list[CourseFigures]
    next_after: str | None
    chosen: CourseFigures | None
    chosen_histogram: dict[int, int]


def render_page(page: Page) -> str:
    view, overall = page.view, page.overall
    histogram = {int(age): n for age, n in overall["age_histogram"].items()}
    parts = [
        _HEAD,
        "<header><h1>Course sign-ups</h1>",
        f'<form method="get" action="/" class="as-of"><label>Ages as of '
        f'<input type="date" name="as_of" value="{view.as_of.isoformat()}" required></label>',
        *(f'<input type="hidden" name="{k}" value="{escape(v)}">' for k, v in
          (("sort", view.sort), ("dir", "desc" if view.descending else "asc"),
           ("limit", str(view.limit)), ("course", view.course or "")) if v),
        '<button type="submit">Show</button></form></header>',
        _overall(overall),
        '<section class="charts">',
        _chart("overall-chart", "Age distribution, every course", histogram),
    ]
    if page.chosen is not None:
        title = f"Age distribution, {page.chosen.view.title} ({page.chosen.view.course_id})"
        parts.append(_chart("course-chart", title, page.chosen_histogram))
    elif view.course:
        parts.append(f'<p class="note">No course {escape(view.course)}.</p>')
    parts += ["</section>", _table(page), _SCRIPT, "</body></html>"]
    return "\n".join(parts)


def _overall(overall: dict[str, Any]) -> str:
    items = (("courses", "Courses"), ("enrollments", "Enrollments"), ("min_age", "Min age"),
             ("max_age", "Max age"), ("average_age", "Average age"))
    cells = "".join(
        f'<div><dt>{label}</dt><dd id="overall-{key}" data-value="{_raw(overall[key])}">'
        f"{_shown(overall[key])}</dd></div>" for key, label in items)
    return f'<dl class="overall">{cells}</dl>'


def _table(page: Page) -> str:
    view = page.view
    head = []
    for key, label in COLUMNS:
        descending = not view.descending if key == view.sort else key not in (
            "course_id", "title", "lecturer")
        mark = (" ▼" if view.descending else " ▲") if key == view.sort else ""
        href = view.link(sort=key, descending=descending, after=None)
        head.append(f'<th><a href="{escape(href)}">{label}{mark}</a></th>')
    rows = [_row(view, f) for f in page.rows]
    pager = [f'<a href="{escape(view.link(after=None))}">first page</a>']
    if page.next_after is not None:
        pager.append(f'<a id="next-page" href="{escape(view.link(after=page.next_after))}">'
                     "next page</a>")
    return (f'<table id="courses"><thead><tr>{"".join(head)}</tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table>'
            f'<nav class="pager">{" · ".join(pager)}</nav>')


def _row(view: View, f: CourseFigures) -> str:
    c = f.view
    percent = min(100.0, 100 * f.fill)
    chart = escape(view.link(course=c.course_id))
    return (
        f'<tr data-course-id="{escape(c.course_id)}">'
        f'<td><a href="{chart}" title="age distribution">{escape(c.course_id)}</a></td>'
        f"<td>{escape(c.title)}</td><td>{escape(c.lecturer)}</td>"
        f'<td class="num"><span data-field="enrolled">{c.ages.count}</span> / '
        f'<span data-field="capacity">{c.capacity}</span></td>'
        f'<td><span class="fill"><span style="width:{percent:.1f}%"></span></span> '
        f"{100 * f.fill:.0f}%</td>"
        f'<td class="num"><span data-field="waitlisted">{c.waitlisted}</span> / '
        f'<span data-field="waitlist_capacity">{c.waitlist_capacity}</span></td>'
        f'<td class="num" data-field="min_age">{_shown(f.min_age)}</td>'
        f'<td class="num" data-field="max_age">{_shown(f.max_age)}</td>'
        f'<td class="num" data-field="average_age">{_shown(f.average_age)}</td></tr>'
    )


def _chart(element_id: str, title: str, histogram: dict[int, int]) -> str:
    """A bar per age from the youngest to the oldest (empty ages stay as gaps)."""
    width, height, left, bottom, top = 580, 220, 40, 24, 10
    head = f'<figure><figcaption>{escape(title)}</figcaption>'
    if not histogram:
        return (head + f'<svg id="{element_id}" data-bars="0" width="{width}" height="40">'
                '<text x="10" y="25">nobody enrolled</text></svg></figure>')
    ages = range(min(histogram), max(histogram) + 1)
    peak = max(histogram.values())
    step = (width - left - 10) / len(ages)
    plot = height - bottom - top
    shapes = [
        f'<line x1="{left}" y1="{height - bottom}" x2="{width - 10}" y2="{height - bottom}" '
        'class="axis"/>',
        f'<text x="{left - 6}" y="{top + 8}" class="label" text-anchor="end">{peak}</text>',
        f'<text x="{left - 6}" y="{height - bottom}" class="label" text-anchor="end">0</text>',
    ]
    label_every = max(1, round(len(ages) / 12))
    for i, age in enumerate(ages):
        x = left + i * step
        n = histogram.get(age, 0)
        if n:
            h = max(1.0, plot * n / peak)
            shapes.append(
                f'<rect class="bar" data-age="{age}" data-count="{n}" x="{x + 0.1 * step:.1f}" '
                f'y="{height - bottom - h:.1f}" width="{0.8 * step:.1f}" height="{h:.1f}">'
                f"<title>{n} aged {age}</title></rect>")
        if i % label_every == 0:
            shapes.append(f'<text x="{x + step / 2:.1f}" y="{height - 6}" class="label" '
                          f'text-anchor="middle">{age}</text>')
    bars = sum(1 for n in histogram.values() if n)
    return (head + f'<svg id="{element_id}" class="chart" data-bars="{bars}" width="{width}" '
            f'height="{height}" viewBox="0 0 {width} {height}" role="img" '
            f'aria-label="{escape(title)}">{"".join(shapes)}</svg></figure>')


def _shown(value: Any) -> str:
    return "–" if value is None else escape(str(value))


def _raw(value: Any) -> str:
    return "" if value is None else escape(str(value))


_HEAD = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Course sign-ups: statistics</title>
<style>
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5rem; color: #1d232a; }
header { display: flex; gap: 2rem; align-items: baseline; flex-wrap: wrap; }
h1 { font-size: 1.4rem; margin: 0 0 .5rem; }
.overall { display: flex; gap: 2.5rem; margin: 1rem 0; }
.overall dt { color: #5b6570; font-size: .8rem; text-transform: uppercase; }
.overall dd { margin: 0; font-size: 1.6rem; font-weight: 600; }
.charts { display: flex; gap: 2rem; flex-wrap: wrap; }
figure { margin: 0 0 1rem; } figcaption { font-weight: 600; margin-bottom: .3rem; }
.bar { fill: #3b7dd8; } .axis { stroke: #888; } .label { font-size: 10px; fill: #5b6570; }
table { border-collapse: collapse; width: 100%; }
th, td { padding: .25rem .6rem; border-bottom: 1px solid #e3e6ea; text-align: left; }
th a { color: inherit; text-decoration: none; } td.num { text-align: right; }
.fill { display: inline-block; width: 80px; height: 8px; background: #e3e6ea; }
.fill span { display: block; height: 100%; background: #2f9e62; }
.pager { margin: .8rem 0; } .note { color: #a33; }
</style></head><body>"""

_SCRIPT = """<script>
for (const svg of document.querySelectorAll("svg[data-bars]")) {
  const drawn = [...svg.querySelectorAll("rect.bar")].filter((r) => {
    const box = r.getBoundingClientRect(); return box.width > 0 && box.height > 0; });
  svg.dataset.drawn = String(drawn.length);
}
</script>"""
