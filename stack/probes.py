"""What a running component says over HTTP: the probes of the stack, tests and benchmarks."""

from __future__ import annotations

import json
import urllib.request
from typing import Any


def get_json(url: str, timeout: float = 2) -> dict[str, Any] | None:
    """The JSON object at url, or None while nothing (valid) answers there."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - loopback
            return dict(json.load(response))
    except (OSError, ValueError):
        return None


def http_ok(url: str, timeout: float = 2) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - loopback
            return 200 <= response.status < 300
    except OSError:
        return False


def processor_health(port: int) -> dict[str, Any] | None:
    """A course processor's /healthz: assigned partitions, rebalancing, recovering, ..."""
    return get_json(f"http://127.0.0.1:{port}/healthz", timeout=1)


def deciding(health: dict[str, Any] | None) -> list[int]:
    """The partitions a processor decides now: none while it rebalances or restores."""
    if not health or health["rebalancing"] or health["recovering"]:
        return []
    return list(health["assigned"])
