"""Faust's table recovery with the stream seek moved before the first fetch.

After restoring the tables, faust-streaming 0.15 resumes the command partitions and
only then seeks them to the committed offsets, while the flow is still active on a
fresh start. Records fetched in between reach the agent, the seek rewinds the read
offsets under them, and the fetch loop then skips records: on this broker a worker
decided offsets 3145..3148 and then 3151, never seeing 3149 and 3150. Faust's commit
either stalls behind the hole forever or, with its off-by-one gap check
(`min(acked) - committed > 1`), commits past a record that was never decided.

Stopping the flow first makes the fetcher wait until faust's own code has sought
and resumes the flow, so the first record the agent sees is the committed one.

On every rebalance the in-memory tables are also dropped and every assigned
changelog partition is restored from its first record. Faust keeps, for partitions
a worker still owns, both the values its agent wrote and the changelog position of
its last restore; a value written by a command whose transaction then aborted (a
rebalance in the middle of a commit) would survive in memory and disagree with the
committed log, and a partition that comes back to a worker after another worker
owned it would start from the old in-memory value. The chaos suite saw both as
overbooking (two students given the same seat number). After the drop, the state a
worker decides from is exactly the committed changelog, whatever happened before.
"""

from __future__ import annotations

from faust.tables.manager import TableManager
from faust.tables.recovery import Recovery
from faust.types import TP


class SeekFirstRecovery(Recovery):
    async def on_rebalance(
        self,
        assigned: set[TP],
        revoked: set[TP],
        newly_assigned: set[TP],
        generation_id: int = 0,
    ) -> None:
        if generation_id == self.app.consumer_generation_id:
            self._forget_local_state()
        await super().on_rebalance(assigned, revoked, newly_assigned, generation_id)

    def _forget_local_state(self) -> None:
        # The agent is stopped during a rebalance (faust waits for it to finish the
        # event in hand), so nothing writes to the tables while they are emptied.
        for table in self.tables.values():
            store = table.data
            store._clear()  # noqa: SLF001 - faust's own hook for dropping a store's data
            key_partition = getattr(store, "_key_partition", None)
            if key_partition is not None:
                key_partition.clear()
        # No remembered position: every assigned partition restores from its start.
        self.active_offsets.clear()
        self.active_highwaters.clear()

    async def _resume_streams(self, generation_id: int = 0) -> None:
        self.app.consumer.stop_flow()
        await super()._resume_streams(generation_id)

    async def on_recovery_completed(self, generation_id: int = 0) -> None:
        self.app.consumer.stop_flow()
        await super().on_recovery_completed(generation_id)


class SeekFirstTableManager(TableManager):
    @property
    def recovery(self) -> Recovery:
        if self._recovery is None:
            self._recovery = SeekFirstRecovery(self.app, self, beacon=self.beacon, loop=self.loop)
        return self._recovery
