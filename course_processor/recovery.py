"""faust's table recovery, replaced by the local state's own restore.

On every assignment, before faust looks at the changelogs, `LocalStateRecovery`
brings the local state of the owned partitions up to the end of their committed
changelogs (restore.py, and migrate.py once after an upgrade). faust then finds
nothing left to read: its highwater of each changelog partition is the offset the
local state already holds.

There is no "empty the tables and restore from offset 0" any more. Its reason was
that values written by a command whose transaction then aborted survived in memory;
such values are now only staged, and dropped with the transaction (state.py).

The stream seek also moves before the first fetch. After restoring, faust-streaming
0.15 resumes the command partitions and only then seeks them to the committed
offsets, while the flow is still active on a fresh start. Records fetched in between
reach the agent, the seek rewinds the read offsets under them, and the fetch loop
then skips records (a worker decided offsets 3145..3148 and then 3151). Stopping the
flow first makes the fetcher wait until faust has sought and resumes the flow.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import TYPE_CHECKING, cast

from faust.tables.manager import TableManager
from faust.tables.recovery import Recovery
from faust.types import TP
from faust.types.transports import ConsumerT

if TYPE_CHECKING:
    from course_processor.app import ProcessorApp


class LocalStateRecovery(Recovery):
    async def on_rebalance(
        self,
        assigned: set[TP],
        revoked: set[TP],
        newly_assigned: set[TP],
        generation_id: int = 0,
    ) -> None:
        if generation_id == self.app.consumer_generation_id:
            app = cast("ProcessorApp", self.app)
            owned = {tp.partition for tp in assigned if tp.topic == app.commands_topic}
            # In a thread: the restore reads Kafka and writes RocksDB synchronously,
            # and the consumer's heartbeats must go on meanwhile. The agent is stopped
            # for the whole rebalance, so nothing else touches the local state.
            await asyncio.get_running_loop().run_in_executor(None, app.restorer, owned)
        await super().on_rebalance(assigned, revoked, newly_assigned, generation_id)

    async def _build_highwaters(
        self, consumer: ConsumerT, tps: set[TP], destination: Counter[TP], title: str
    ) -> None:
        # The local state holds everything up to these offsets already (restored in
        # on_rebalance above); telling faust so leaves it nothing to read.
        destination.clear()
        for tp in tps:
            table = self.tables._changelogs.get(tp.topic)  # noqa: SLF001
            offset = table.persisted_offset(tp) if table is not None else None
            destination[tp] = -1 if offset is None else offset

    async def _resume_streams(self, generation_id: int = 0) -> None:
        self.app.consumer.stop_flow()
        await super()._resume_streams(generation_id)

    async def on_recovery_completed(self, generation_id: int = 0) -> None:
        self.app.consumer.stop_flow()
        await super().on_recovery_completed(generation_id)


class LocalStateTableManager(TableManager):
    @property
    def recovery(self) -> Recovery:
        if self._recovery is None:
            self._recovery = LocalStateRecovery(self.app, self, beacon=self.beacon,
                                                loop=self.loop)
        return self._recovery
