"""The query API's statistics in memory, kept fresh by PostgreSQL LISTEN/NOTIFY.

Statistics change only when the projector commits, and every projector batch notifies
`store.CHANGES_CHANNEL` with the courses it changed, inside its transaction: PostgreSQL
delivers the notice at the commit, never for a rollback. So:

- On (re)connecting, the listener first LISTENs, then reads every course and the global
  row. A commit after the LISTEN is notified; one before it is in what was read. A
  notice is lost while the listener is disconnected, which is why every reconnect
  re-reads everything.
- A notice marks the snapshot stale at once; the changed courses and the global row are
  then read again on the listener's own connection (one REPEATABLE READ snapshot; notices
  that come meanwhile wait in the connection) and swapped in. A request that comes
  while the snapshot is stale waits for that refresh (milliseconds), so the API never
  answers with a value older than the last commit it was told about.
- While the listener is not connected (PostgreSQL restarting, the first load running),
  the snapshot is not used at all: requests read PostgreSQL through the pool, as before,
  and get a 503 when it is away. No answer comes from memory that may have missed a
  notice.
- The listener asks PostgreSQL whether a replay runs (`replay_runs`, for /metrics) after
  every quiet second, so a connection that died without a word is noticed within about
  a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import psycopg
from prometheus_client import CollectorRegistry, Counter, Gauge

from projections import store
from projections.readmodel import Snapshot

log = logging.getLogger("projections.live")

_QUIET_SECONDS = 1.0  # a heartbeat after this long without a notice
_DRAIN_SECONDS = 0.002  # notices of one commit arrive together: take them all at once
_MAX_BACKOFF_SECONDS = 2.0
_STALE_WAIT_SECONDS = 2.0  # a request waits this long for a refresh, then reads PostgreSQL

class LiveMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.live = Gauge("query_api_cache_live",
                          "1 while the in-memory statistics follow PostgreSQL's notices.",
                          registry=registry)
        self.refreshes = Counter("query_api_cache_refreshes_total",
                                 "Reads of PostgreSQL into the in-memory statistics.",
                                 ["scope"], registry=registry)
        self.notices = Counter("query_api_cache_notices_total",
                               "Change notices received from the projector's commits.",
                               registry=registry)
        self.replay_running = Gauge("query_api_replay_running",
                                    "1 while a replay rebuilds the views (make replay).",
                                    registry=registry)
        self.replay_progress = Gauge("query_api_replay_progress_ratio",
                                     "Share of the event log a running replay has rebuilt.",
                                     registry=registry)
        self.disconnects = Counter("query_api_cache_disconnects_total",
                                   "Times the listener lost PostgreSQL.", registry=registry)


class LiveStats:
    """The snapshot and the task that keeps it fresh; `snapshot()` is None when it may not
    be used (not connected, or not refreshed in time)."""

    def __init__(self, conninfo: str, metrics: LiveMetrics, projection: str = "views") -> None:
        self.conninfo = conninfo
        self.projection = projection
        self._replay_checked = 0.0
        self.metrics = metrics
        self.data = Snapshot()
        self.live = False
        self.fresh = asyncio.Event()  # set while no notice waits for its refresh
        self.fresh.set()
        self._task: asyncio.Task[None] | None = None

    # -------------------------------------------------------------- for requests

    async def snapshot(self) -> Snapshot | None:
        if not self.live:
            return None
        if not self.fresh.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.fresh.wait(), _STALE_WAIT_SECONDS)
            if not (self.live and self.fresh.is_set()):
                return None
        return self.data

    # -------------------------------------------------------------- lifecycle

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="live-stats")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        delay = 0.1
        while True:
            try:
                await self._follow()
            except Exception as exc:  # noqa: BLE001 - whatever it was, stop using the copy
                # PostgreSQL gone (psycopg.Error, OSError), or anything unforeseen: a copy
                # that may have missed a notice must not answer, so stop using it, and
                # start over (a reconnect re-reads everything).
                self._set_live(False)
                self.metrics.disconnects.inc()
                log.warning("statistics cache lost PostgreSQL; reading it directly meanwhile",
                            extra={"error": repr(exc)[:200], "retry_in_s": round(delay, 2)})
                await asyncio.sleep(delay)
                delay = min(delay * 2, _MAX_BACKOFF_SECONDS)
            else:
                delay = 0.1

    async def _follow(self) -> None:
        async with await psycopg.AsyncConnection.connect(
                self.conninfo, autocommit=True, connect_timeout=5, keepalives_idle=5,
                keepalives_interval=1, keepalives_count=3) as conn:
            await conn.execute(f"LISTEN {store.CHANGES_CHANNEL}")
            self.data = await self._read_everything()
            self._refreshed("everything")
            self._set_live(True)
            log.info("statistics cache loaded", extra={"courses": len(self.data.courses)})
            while True:
                notices = [n async for n in conn.notifies(timeout=_QUIET_SECONDS,
                                                           stop_after=1)]
                if not notices:
                    await self._check_replay(conn)  # and still connected?
                    continue
                self.fresh.clear()  # told about a commit: no answer from before it
                notices += [n async for n in conn.notifies(timeout=_DRAIN_SECONDS)]
                self.metrics.notices.inc(len(notices))
                payloads = {n.payload for n in notices}
                if store.EVERYTHING in payloads:  # a replay swapped every view
                    self.data = await self._read_everything()
                    self._refreshed("everything")
                else:
                    changed = sorted({c for p in payloads for c in p.split(",") if c})
                    courses, overall = await store.fetch_everything(conn, changed)
                    self.data.update(courses, overall)
                    self._refreshed("courses")
                self.fresh.set()
                if time.monotonic() - self._replay_checked > _QUIET_SECONDS:
                    await self._check_replay(conn)  # notices keep coming: no quiet second

    async def _read_everything(self) -> Snapshot:
        """Every course and the global row in a new snapshot, read and indexed on a thread
        with a connection of its own: at a million events that is about a second of CPU
        (decoding the birth-date arrays), during which the event loop would answer nothing,
        not even a sign-up's decision. Requests for statistics wait for `fresh` meanwhile,
        as for any refresh; the thread's read begins after the notice (or the LISTEN), so it
        holds every commit notified so far."""
        return await asyncio.to_thread(_snapshot_of_everything, self.conninfo)

    async def _check_replay(self, conn: psycopg.AsyncConnection) -> None:
        """Whether a replay rebuilds the views now, for /metrics (a row in replay_runs)."""
        self._replay_checked = time.monotonic()
        cur = await conn.execute(store.REPLAY_PROGRESS,
                                 (store.REPLAY_FRESH_SECONDS, self.projection))
        row = await cur.fetchone()
        running = bool(row and row[0])
        self.metrics.replay_running.set(1 if running else 0)
        self.metrics.replay_progress.set(float(row[1]) if row and running else 0.0)

    def _refreshed(self, scope: str) -> None:
        self.metrics.refreshes.labels(scope).inc()

    def _set_live(self, live: bool) -> None:
        self.live = live
        self.metrics.live.set(1 if live else 0)
        if not live:
            self.fresh.set()  # nobody waits on a snapshot that is not used


def _snapshot_of_everything(conninfo: str) -> Snapshot:
    courses, overall = store.read_everything(conninfo)
    snapshot = Snapshot()
    snapshot.replace(courses, overall)
    return snapshot
