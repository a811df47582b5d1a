"""The Grafana dashboard and the Prometheus scrape config agree with the code.

Every metric a dashboard query names must be defined in the Python sources, so a
renamed metric fails here instead of leaving an empty panel.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
OPS = ROOT / "ops"
DASHBOARD = OPS / "grafana" / "dashboards" / "course-signup.json"
PROMETHEUS = OPS / "prometheus.yml"
DATASOURCE = OPS / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
PROVIDER = OPS / "grafana" / "provisioning" / "dashboards" / "course-signup.yml"
COMPOSE = ROOT / "docker-compose.yml"

SCRAPED = {
    "command-api": "command-api:8000",
    "query-api": "query-api:8001",
    "processor": "processor:6066",
    "projector": "projector:6067",
    "notifier": "notifier:6068",
}

# Series Prometheus makes itself, not the code.
BUILT_IN = {"up", "scrape_duration_seconds", "scrape_samples_scraped"}
PROMQL_WORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or",
    "unless", "offset", "sum", "min", "max", "avg", "count", "stddev", "stdvar", "topk",
    "bottomk", "quantile", "count_values", "group", "inf", "nan",
}
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGE = re.compile(r"\[[^\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_IDENT = re.compile(r"(?<![\w:.$])[A-Za-z_:][\w:]*(?![\w:]|\s*\()")
# prometheus_client exposes a histogram as _bucket/_sum/_count series and adds _total
# to a counter whose name lacks it.
_SERIES_SUFFIXES = ("_bucket", "_sum", "_count", "_total")


def metric_names(expr: str) -> set[str]:
    """The metric names an expression selects (functions, labels and keywords removed)."""
    bare = _STRING.sub("", expr)
    bare = _MATCHERS.sub(" ", bare)
    bare = _RANGE.sub(" ", bare)
    bare = _GROUPING.sub(" ", bare)
    return {
        name for name in _IDENT.findall(bare)
        if name not in PROMQL_WORDS and not name.startswith("__")
    }


def spellings(series: str) -> set[str]:
    """Names a series could be defined under in the Python sources."""
    names = {series}
    for suffix in _SERIES_SUFFIXES:
        if series.endswith(suffix):
            names.add(series.removesuffix(suffix))
    return names


@cache
def python_sources() -> str:
    """Every first-party *.py outside tests (tests mentioning a name do not define it)."""
    texts = []
    for path in sorted(ROOT.rglob("*.py")):
        parts = path.relative_to(ROOT).parts
        if parts[0] == "tests" or any(p.startswith(".") or p == "build" for p in parts):
            continue
        texts.append(path.read_text(encoding="utf-8", errors="replace"))
    return "\n".join(texts)


def defined(series: str) -> bool:
    source = python_sources()
    return any(f'"{name}"' in source or f"'{name}'" in source for name in spellings(series))


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return loaded


def panels(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in items:
        yield panel
        yield from panels(panel.get("panels", []))


def expressions() -> list[str]:
    return [t["expr"] for p in panels(dashboard()["panels"]) for t in p.get("targets", [])]


def used_metrics() -> list[str]:
    return sorted({name for expr in expressions() for name in metric_names(expr)} - BUILT_IN)


def test_metric_names_are_parsed_from_promql() -> None:
    expr = ('histogram_quantile(0.99, sum by (le) (rate(a_seconds_bucket{route=~".*x.*"}[1m])))'
            ' / ignoring(instance) sum(increase(b_total[$__range])) or vector(0)')
    assert metric_names(expr) == {"a_seconds_bucket", "b_total"}
    assert spellings("a_seconds_bucket") == {"a_seconds_bucket", "a_seconds"}


def test_the_dashboard_is_a_grafana_dashboard() -> None:
    board = dashboard()
    assert board["uid"] and board["title"] and isinstance(board["schemaVersion"], int)
    all_panels = list(panels(board["panels"]))
    ids = [p["id"] for p in all_panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in all_panels:
        assert {"type", "title", "gridPos"} <= panel.keys(), panel.get("title")
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24, panel["title"]
        refs = [t["refId"] for t in panel.get("targets", [])]
        assert len(refs) == len(set(refs)), panel["title"]
        for target in panel.get("targets", []):
            assert target["datasource"]["uid"] == "prometheus", panel["title"]
            assert target["expr"].count("(") == target["expr"].count(")"), target["expr"]
    assert len(expressions()) >= 10


def test_the_datasource_uid_is_the_one_the_dashboard_uses() -> None:
    assert re.search(r"^\s*uid:\s*prometheus\s*$", DATASOURCE.read_text(), re.MULTILINE)
    assert "url: http://prometheus:9090" in DATASOURCE.read_text()
    assert "path: /var/lib/grafana/dashboards" in PROVIDER.read_text()


@pytest.mark.parametrize("series", used_metrics())
def test_every_dashboard_metric_is_defined_in_the_code(series: str) -> None:
    assert defined(series), (
        f"{series} is used in {DASHBOARD.relative_to(ROOT)} but no Python module defines "
        f"any of {sorted(spellings(series))}"
    )


def test_the_dashboard_covers_every_component() -> None:
    prefixes = {name.split("_")[0] for name in used_metrics()}
    assert {"command", "query", "processor", "projector", "notifier"} <= prefixes


def test_prometheus_scrapes_every_component_every_five_seconds() -> None:
    text = PROMETHEUS.read_text(encoding="utf-8")
    try:
        import yaml
    except ImportError:  # PyYAML is not a dependency: check the text instead
        assert re.search(r"^\s+scrape_interval:\s*5s\s*$", text, re.MULTILINE)
        for job, target in SCRAPED.items():
            host, port = target.split(":")
            assert f"job_name: {job}" in text
            assert f'"{target}"' in text or (f'"{host}"' in text and f"port: {port}" in text)
        return
    config = yaml.safe_load(text)
    assert config["global"]["scrape_interval"] == "5s"
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(SCRAPED) <= set(jobs)
    for name, target in SCRAPED.items():
        job = jobs[name]
        static = [t for c in job.get("static_configs", []) for t in c["targets"]]
        dns = [f"{n}:{c['port']}" for c in job.get("dns_sd_configs", []) for n in c["names"]]
        assert target in static + dns, name


def test_compose_runs_prometheus_and_grafana_on_localhost_only() -> None:
    text = COMPOSE.read_text(encoding="utf-8")
    assert "./ops/prometheus.yml:/etc/prometheus/prometheus.yml:ro" in text
    assert "./ops/grafana/provisioning:/etc/grafana/provisioning:ro" in text
    assert "./ops/grafana/dashboards:/var/lib/grafana/dashboards:ro" in text
    assert '"127.0.0.1:9090:9090"' in text
    assert '"127.0.0.1:3000:3000"' in text
