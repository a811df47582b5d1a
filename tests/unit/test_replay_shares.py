"""How a parallel replay splits the partitions among its workers."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from projections.replay import shares


@given(st.integers(1, 64), st.integers(1, 16))
def test_every_partition_goes_to_exactly_one_worker_and_none_is_idle(
        partitions: int, workers: int) -> None:
    groups = shares(list(range(partitions)), workers)
    assert sorted(p for g in groups for p in g) == list(range(partitions))
    assert len(groups) == min(workers, partitions)
    assert all(groups)
    assert max(map(len, groups)) - min(map(len, groups)) <= 1
