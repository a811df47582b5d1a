"""Which offset of a partition may be committed when messages finish out of order (pure)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class PartitionProgress:
    """Offsets taken from one partition and not finished yet.

    Kafka keeps one committed offset per partition: everything below it counts as done.
    So the offset to commit is the oldest unfinished one, or just past the newest taken
    when all are finished. A parked message therefore holds the commit back, and after a
    crash it is read again together with everything after it (which the sent-record
    then skips).
    """

    next_offset: int | None = None  # one past the newest offset taken
    unfinished: set[int] = field(default_factory=set)

    def take(self, offset: int) -> None:
        self.unfinished.add(offset)
        if self.next_offset is None or offset >= self.next_offset:
            self.next_offset = offset + 1

    def finish(self, offset: int) -> None:
        self.unfinished.discard(offset)

    def committable(self) -> int | None:
        if self.unfinished:
            return min(self.unfinished)
        return self.next_offset
