"""Handler steps on several threads, each with its own handler (its own PostgreSQL session
and SMTP connection), so that e-mails of different courses go out in parallel.

A step mostly waits: on PostgreSQL, then on the SMTP server's answers. One connection
therefore sends one e-mail per few round trips however idle the server is;
`NOTIFIER_SMTP_CONNECTIONS` lanes overlap those waits. A lane runs a batch: records
of one or more courses, each course's in log order (`batch.py` reads and locks for all
of them at once). Which batch runs when, and everything that follows from each outcome, stays with
the worker's thread (`worker.py`), which gives the lanes at most one batch per course at
a time.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

from notifier.batch import Result, advance_batch, never
from notifier.handler import DeadLetters, Handler, Job
from service_kit.records import Headers, SourceRecord

# What a lane does with a batch: `batch.advance_batch` (the tests: `batch.advance_each`).
Action = Callable[[Handler, list[Job], Callable[[Job], bool]], list[Result]]


class Lanes:
    def __init__(self, handlers: Sequence[Handler], action: Action = advance_batch) -> None:
        self._action = action
        # Set by the worker: whether a job's partition is being settled (revoked or the
        # worker stopping), so that a batch starts no further job of it.
        self.stop: Callable[[Job], bool] = never
        self._idle: queue.SimpleQueue[Handler] = queue.SimpleQueue()
        for handler in handlers:
            self._idle.put(handler)
        self._finished: queue.SimpleQueue[list[Result]] = queue.SimpleQueue()
        self._pool = ThreadPoolExecutor(len(handlers), thread_name_prefix="notifier-lane")
        self.size = len(handlers)

    def submit(self, jobs: list[Job]) -> None:
        self._pool.submit(self._run, jobs)

    def finished(self, timeout: float = 0.0) -> list[list[Result]]:
        """The batches finished since the last call, waiting up to `timeout` for a first one."""
        results: list[list[Result]] = []
        try:
            results.append(self._finished.get(timeout=timeout) if timeout > 0
                           else self._finished.get_nowait())
            while True:
                results.append(self._finished.get_nowait())
        except queue.Empty:
            return results

    def close(self) -> None:
        self._pool.shutdown(wait=True)

    def _run(self, jobs: list[Job]) -> None:
        handler = self._idle.get()
        results: list[Result]
        try:
            results = self._action(handler, jobs, self.stop)
        except BaseException as exc:  # noqa: BLE001 - the worker's thread decides what it means
            results = [(jobs[0], exc), *((job, None) for job in jobs[1:])]
        finally:
            self._idle.put(handler)
        self._finished.put(results)


class LockedDeadLetters:
    """One dead-letter producer for every lane: a send waits for the broker (flush), so
    one at a time keeps each lane's wait its own."""

    def __init__(self, inner: DeadLetters) -> None:
        self._inner = inner
        self._lock = threading.Lock()

    def send(self, record: SourceRecord, headers: Headers) -> None:
        with self._lock:
            self._inner.send(record, headers)
