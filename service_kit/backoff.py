"""Capped exponential backoff with jitter, pure: how long to wait after the n-th failure."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Backoff:
    initial: float = 0.5
    cap: float = 60.0
    multiplier: float = 2.0

    def ceiling(self, attempt: int) -> float:
        """The longest wait after the `attempt`-th failure (1-based)."""
        # Exponent clamped so a long outage cannot overflow a float.
        exponent = min(max(attempt, 1) - 1, 64)
        return min(self.cap, self.initial * self.multiplier**exponent)

    def delay(self, attempt: int, rand: Callable[[], float]) -> float:
        # Between half and all of the ceiling: clients waiting for the same server do
        # not knock all at once, and never in a hot loop.
        return self.ceiling(attempt) * (0.5 + 0.5 * rand())
