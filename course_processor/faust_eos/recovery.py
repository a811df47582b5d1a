"""faust's table recovery, replaced by the local state's own restore.

On every assignment, before faust looks at the changelogs, `LocalStateRecovery`
brings the local state of the owned partitions up to the end of their committed
changelogs (StateRuntime.bring_up_to_date: state/restore.py, and state/migrate.py
once after an upgrade). faust then finds
nothing left to read: its highwater of each changelog partition is the offset the
local state already holds.

There is no "empty the tables and restore from offset 0" any more. Its reason was
that values written by a command whose transaction then aborted survived in memory;
such values are now only staged, and dropped with the transaction (state/local.py).

The stream seek also moves before the first fetch. After restoring, faust-streaming
0.15 resumes the command partitions and only then seeks them to the committed
offsets, while the flow is still active on a fresh start. Records fetched in between
reach the agent, the seek rewinds the read offsets under them, and the fetch loop
then skips records (a worker decided offsets 3145..3148 and then 3151). Stopping the
flow first makes the fetcher wait until faust has sought and resumes the flow.
"""

from __future__ import annotations

import asyncio
import gc
from collections import Counter
from typing import Any

from faust.tables.manager import TableManager
from faust.tables.recovery import Recovery
from faust.types import TP
from faust.types.transports import ConsumerT

from course_processor.faust_eos.failstop import fail_stop
from course_processor.metrics import Metrics
from course_processor.state.runtime import StateRuntime


class LocalStateRecovery(Recovery):
    def __init__(self, *args: Any, runtime: StateRuntime, metrics: Metrics,
                 **kwargs: Any) -> None:
        self.runtime, self.metrics = runtime, metrics
        self._frozen = False  # the heap of start-up is frozen (on_recovery_completed)
        super().__init__(*args, **kwargs)

    async def on_rebalance(
        self,
        assigned: set[TP],
        revoked: set[TP],
        newly_assigned: set[TP],
        generation_id: int = 0,
    ) -> None:
        if generation_id == self.app.consumer_generation_id:
            commands = self.runtime.config.commands_topic
            owned = {tp.partition for tp in assigned if tp.topic == commands}
            # In a thread: the restore reads Kafka and writes RocksDB synchronously,
            # and the consumer's heartbeats must go on meanwhile. The agent is stopped
            # for the whole rebalance, so nothing else touches the local state.
            await asyncio.get_running_loop().run_in_executor(None, self._restore, owned)
        await super().on_rebalance(assigned, revoked, newly_assigned, generation_id)

    def _restore(self, owned: set[int]) -> None:
        try:
            stats = self.runtime.bring_up_to_date(owned, self._encode)
        except Exception as exc:
            # Deciding from a state not brought up to date could overbook a course;
            # a restart tries again from the disk and the committed changelogs.
            fail_stop("the local state could not be brought up to date", exc)
        self.metrics.restored.inc(stats.records)

    def _encode(self, table: str, key: object, value: object) -> tuple[bytes, bytes]:
        """A table's changelog record, serialized as the faust table writes it (the
        rebuild from course-events writes the changelogs itself)."""
        store: Any = self.tables[table].data  # type: ignore[attr-defined]
        return store._encode_key(key), store._encode_value(value)  # noqa: SLF001

    async def _build_highwaters(
        self, consumer: ConsumerT, tps: set[TP], destination: Counter[TP], title: str
    ) -> None:
        # The local state holds everything up to these offsets already (restored in
        # on_rebalance above); telling faust so leaves it nothing to read.
        destination.clear()
        for tp in tps:
            table = self.runtime.table_of(tp.topic)
            offset = (None if table is None
                      else self.runtime.local.persisted_offset(table, tp.partition))
            destination[tp] = -1 if offset is None else offset

    async def _resume_streams(self, generation_id: int = 0) -> None:
        self.app.consumer.stop_flow()
        await super()._resume_streams(generation_id)

    async def on_recovery_completed(self, generation_id: int = 0) -> None:
        self.app.consumer.stop_flow()
        await super().on_recovery_completed(generation_id)
        if generation_id == self.app.consumer_generation_id:
            # (Another rebalance under way has its own assignment and recovery.)
            self._pause_unread()
        if not self._frozen:
            # What start-up and the first restore built lives as long as the worker:
            # out of the collector's sight, so a full collection while deciding scans
            # only what deciding created (one took 80 ms mid-run at 200 commands/s,
            # the machine loaded, and every decision in flight waited for it).
            self._frozen = True
            gc.collect()
            gc.freeze()

    def _pause_unread(self) -> None:
        """Stop fetching the partitions the worker is assigned but never reads while it
        decides: the changelogs (restored above, from its own consumer) and faust's
        leader topic. faust pauses them only in its own bookkeeping, so aiokafka went
        on putting all of them in every fetch request: with 4 command partitions, 24
        of the 29 partitions fetched never had a record, and a fetch holding only such
        partitions was held by the broker for the whole PROCESSOR_FETCH_MAX_WAIT while
        a command partition waited for it to come back. The next rebalance's
        assignment starts unpaused, and this runs again."""
        commands = self.runtime.config.commands_topic
        consumer: Any = self.app.consumer
        kafka = consumer._thread._consumer  # noqa: SLF001 - the aiokafka consumer
        if kafka is None:
            return
        unread = [tp for tp in kafka.assignment() if tp.topic != commands]
        if unread:
            kafka.pause(*unread)


class LocalStateTableManager(TableManager):
    @property
    def recovery(self) -> Recovery:
        if self._recovery is None:
            # The app was given the runtime and metrics in its constructor (app.py).
            app: Any = self.app
            self._recovery = LocalStateRecovery(self.app, self, beacon=self.beacon,
                                                loop=self.loop, runtime=app.runtime,
                                                metrics=app.metrics)
        return self._recovery
