"""The processor's state at run time: the local tables, and what brings them up to date.

One `StateRuntime` per worker, built by the composition root (bootstrap.py) and
handed to every faust adapter in its constructor (faust_eos/): the tables' store,
the transaction manager that moves staged writes to disk on commit, and the
recovery that restores on assignment. Nothing here imports faust.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path

from course_processor.deciding.values import TABLES
from course_processor.state import migrate, restore
from course_processor.state.local import LocalState
from course_processor.state.memory import DEFAULT_TOTAL_BYTES, MemoryBudget, release_free_heap
from course_processor.state.migrate import Encoder
from course_processor.state.restore import RestoreStats

log = logging.getLogger(__name__)


def changelog_topic(app_id: str, table: str) -> str:
    """The changelog topic of a table, as faust names it."""
    return f"{app_id}-{table}-changelog"


@dataclass(frozen=True)
class StateConfig:
    """What the state needs to know of the deployment (from the processor's Settings)."""

    data_dir: Path
    app_id: str
    # The Kafka client configuration of the restore and rebuild clients.
    kafka: Mapping[str, str]
    commands_topic: str
    events_topic: str
    partitions: int
    secret: bytes
    build_from_events: bool = True
    # The RocksDB memory budget of the worker (memory.py).
    memory_bytes: int = DEFAULT_TOTAL_BYTES


class StateRuntime:
    """The local tables of the owned partitions, their changelogs, and their restore."""

    def __init__(self, config: StateConfig, tables: Sequence[str] = TABLES) -> None:
        self.config = config
        self.local = LocalState(config.data_dir, tables, MemoryBudget(config.memory_bytes))
        self.changelogs = {t: changelog_topic(config.app_id, t) for t in tables}
        self._table_of = {topic: table for table, topic in self.changelogs.items()}

    def table_of(self, topic: str) -> str | None:
        """The table whose changelog `topic` is; None for any other topic."""
        return self._table_of.get(topic)

    def bring_up_to_date(self, owned: set[int], encode: Encoder,
                         today: date | None = None) -> RestoreStats:
        """Make the local state of `owned` exactly the committed changelogs.

        Runs on every assignment, before any of those partitions decides anything: the
        restore of everything after the stored offsets (restore.py), then the rebuild
        from course-events of the partitions no rebuild of this version has marked
        (migrate.py, with `encode` writing records as the tables do), and the restore
        of what the rebuild wrote. Raises when it cannot finish; deciding from a state
        not brought up to date could overbook.
        """
        c = self.config
        if c.build_from_events:
            migrate.fence_unfinished(c.kafka, c.app_id, self.changelogs.values(), owned)
        try:
            stats = restore.restore(self.local, c.kafka, self.changelogs, owned)
            todo = migrate.unbuilt(self.local, owned, encode) if c.build_from_events else set()
            if not todo:
                return stats
            migrate.build(c.kafka, c.app_id, c.events_topic, todo, c.partitions,
                          self.changelogs, encode, c.secret, today or migrate.utc_today(),
                          self._keys)
            built = restore.restore(self.local, c.kafka, self.changelogs, owned)
            return RestoreStats(stats.records + built.records, stats.seconds + built.seconds)
        finally:
            # What the restore's batches freed, out of the RSS (memory.py).
            release_free_heap()

    def _keys(self, partition: int, table: str) -> Iterator[bytes]:
        return (key for key, _ in self.local.items(partition, table))

    def close(self) -> None:
        self.local.close()
