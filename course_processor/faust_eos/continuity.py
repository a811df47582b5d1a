"""Noticing a consumer that skipped records: pure bookkeeping of offsets."""

from __future__ import annotations


class Continuity:
    """Notices a record that skips offsets within one partition, since the last rebalance.

    Commands are decided in offset order, one at a time; a record arriving after a
    hole means the consumer lost the records in between, and committing past them
    would leave those sign-ups without a decision forever. Repeats (a lower offset,
    after a seek) are fine: deciding a command again gives the same event.
    """

    def __init__(self) -> None:
        self._last: dict[int, int] = {}
        self._generation: int | None = None

    def skipped(self, generation: int, partition: int, offset: int) -> bool:
        if generation != self._generation:
            self._generation, self._last = generation, {}
        last = self._last.get(partition)
        self._last[partition] = offset
        return last is not None and offset > last + 1
