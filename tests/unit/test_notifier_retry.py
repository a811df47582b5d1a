"""Retry timing of the notifier: backoff schedule, the server gate, the parked queue."""

from __future__ import annotations

import pytest

from notifier.retry import Gate, RetryQueue
from service_kit.backoff import Backoff


def test_backoff_doubles_up_to_the_cap() -> None:
    backoff = Backoff(initial=0.5, cap=10.0, multiplier=2.0)
    assert [backoff.ceiling(n) for n in range(1, 8)] == [0.5, 1, 2, 4, 8, 10, 10]


def test_a_long_outage_does_not_overflow() -> None:
    assert Backoff(initial=1.0, cap=30.0).ceiling(10_000) == 30.0


@pytest.mark.parametrize("draw, factor", [(0.0, 0.5), (0.5, 0.75), (1.0, 1.0)])
def test_jitter_spreads_between_half_and_all_of_the_ceiling(draw: float, factor: float) -> None:
    backoff = Backoff(initial=1.0, cap=60.0)
    assert backoff.delay(3, lambda: draw) == pytest.approx(4.0 * factor)


def test_gate_closes_longer_with_each_failure_and_opens_on_success() -> None:
    gate = Gate(Backoff(initial=1.0, cap=8.0), rand=lambda: 1.0)
    assert gate.is_open(0.0)
    assert gate.fail(100.0) == 101.0
    assert not gate.is_open(100.5) and gate.is_open(101.0)
    assert gate.fail(101.0) == 103.0
    assert gate.fail(103.0) == 107.0
    gate.succeed()
    assert gate.is_open(107.0) and gate.fail(200.0) == 201.0


def test_queue_gives_what_is_due_oldest_first_and_keeps_arrival_order() -> None:
    queue: RetryQueue[str] = RetryQueue()
    queue.push(5.0, "late")
    queue.push(1.0, "first")
    queue.push(1.0, "second")
    assert queue.next_due() == 1.0
    assert queue.pop_due(0.5) is None
    assert [queue.pop_due(2.0), queue.pop_due(2.0), queue.pop_due(2.0)] == ["first", "second", None]
    assert queue.pop_due(5.0) == "late" and len(queue) == 0


def test_queue_drops_the_items_of_a_revoked_partition() -> None:
    queue: RetryQueue[tuple[int, str]] = RetryQueue()
    for item in [(0, "a"), (1, "b"), (0, "c")]:
        queue.push(1.0, item)
    assert queue.remove_if(lambda item: item[0] == 0) == [(0, "a"), (0, "c")]
    assert queue.pop_due(1.0) == (1, "b") and len(queue) == 0
