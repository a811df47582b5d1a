"""Bounded polling: the one wait loop of the stack, the tests and the benchmarks."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class WaitTimeout(AssertionError):
    """What was awaited did not happen in time. An AssertionError, so that a test that
    waits fails (rather than errors) and pytest shows the message."""


def eventually(probe: Callable[[], T | None], timeout: float, what: str, *,
               interval: float = 0.1,
               not_yet: tuple[type[Exception], ...] = ()) -> T:
    """The first result of probe() other than None; an exception listed in not_yet
    counts as None. Raises WaitTimeout naming what was awaited."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = probe()
        except not_yet:
            result = None
        if result is not None:
            return result
        if time.monotonic() > deadline:
            raise WaitTimeout(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def wait_until(predicate: Callable[[], object], timeout: float, what: str, *,
               interval: float = 0.1, not_yet: tuple[type[Exception], ...] = ()) -> None:
    """Poll predicate() until it is truthy (see eventually)."""
    eventually(lambda: True if predicate() else None, timeout, what, interval=interval,
               not_yet=not_yet)
