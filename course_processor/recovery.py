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
"""

from __future__ import annotations

from faust.tables.manager import TableManager
from faust.tables.recovery import Recovery


class SeekFirstRecovery(Recovery):
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
