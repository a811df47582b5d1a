"""Retry timing, pure: the server gate and the queue of parked work (the backoff schedule
is service_kit's)."""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from service_kit.backoff import Backoff

T = TypeVar("T")


@dataclass
class Gate:
    """Closed while the server (or database, or broker) is down; nothing is tried then.

    Each failure in a row closes it for longer; one success opens it and resets that.
    """

    backoff: Backoff
    rand: Callable[[], float]
    failures: int = 0
    open_at: float = 0.0

    def is_open(self, now: float) -> bool:
        return now >= self.open_at

    def fail(self, now: float) -> float:
        self.failures += 1
        self.open_at = now + self.backoff.delay(self.failures, self.rand)
        return self.open_at

    def succeed(self) -> None:
        self.failures = 0
        self.open_at = 0.0


@dataclass
class RetryQueue(Generic[T]):
    """Parked items by due time; equal times keep their arrival order."""

    _heap: list[tuple[float, int, T]] = field(default_factory=list)
    _seq: itertools.count[int] = field(default_factory=itertools.count)

    def __len__(self) -> int:
        return len(self._heap)

    def push(self, due: float, item: T) -> None:
        heapq.heappush(self._heap, (due, next(self._seq), item))

    def next_due(self) -> float | None:
        return self._heap[0][0] if self._heap else None

    def pop_due(self, now: float) -> T | None:
        if not self._heap or self._heap[0][0] > now:
            return None
        return heapq.heappop(self._heap)[2]

    def remove_if(self, drop: Callable[[T], bool]) -> list[T]:
        kept = [entry for entry in self._heap if not drop(entry[2])]
        dropped = [entry[2] for entry in self._heap if drop(entry[2])]
        heapq.heapify(kept)
        self._heap = kept
        return dropped
