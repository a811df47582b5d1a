"""Handler steps on several threads, each with its own handler (its own PostgreSQL session
and SMTP connection), so that e-mails of different partitions go out in parallel.

A step mostly waits: on PostgreSQL, then on the SMTP server's answers to MAIL, RCPT and
DATA. One connection therefore sends one e-mail per few round trips however idle the
server is; `NOTIFIER_SMTP_CONNECTIONS` lanes overlap those waits. The lanes only run
steps; which job runs when, and everything that follows from its outcome, stays with the
worker's thread (`worker.py`), which gives a lane at most one job per partition at a time.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

from notifier.handler import DeadLetters, Handler, Job, Outcome
from service_kit.records import Headers, SourceRecord

# What a lane does with a job: `Handler.advance`, or a dead letter once the worker gives up.
Action = Callable[[Handler, Job], Outcome]
Result = tuple[Job, Outcome | BaseException]


class Lanes:
    def __init__(self, handlers: Sequence[Handler]) -> None:
        self._idle: queue.SimpleQueue[Handler] = queue.SimpleQueue()
        for handler in handlers:
            self._idle.put(handler)
        self._finished: queue.SimpleQueue[Result] = queue.SimpleQueue()
        self._pool = ThreadPoolExecutor(len(handlers), thread_name_prefix="notifier-lane")
        self.size = len(handlers)

    def submit(self, job: Job, action: Action) -> None:
        self._pool.submit(self._run, job, action)

    def finished(self, timeout: float = 0.0) -> list[Result]:
        """The jobs finished since the last call, waiting up to `timeout` for a first one."""
        results: list[Result] = []
        try:
            results.append(self._finished.get(timeout=timeout) if timeout > 0
                           else self._finished.get_nowait())
            while True:
                results.append(self._finished.get_nowait())
        except queue.Empty:
            return results

    def close(self) -> None:
        self._pool.shutdown(wait=True)

    def _run(self, job: Job, action: Action) -> None:
        handler = self._idle.get()
        result: Outcome | BaseException
        try:
            result = action(handler, job)
        except BaseException as exc:  # noqa: BLE001 - the worker's thread decides what it means
            result = exc
        finally:
            self._idle.put(handler)
        self._finished.put((job, result))


class LockedDeadLetters:
    """One dead-letter producer for every lane: a send waits for the broker (flush), so
    one at a time keeps each lane's wait its own."""

    def __init__(self, inner: DeadLetters) -> None:
        self._inner = inner
        self._lock = threading.Lock()

    def send(self, record: SourceRecord, headers: Headers) -> None:
        with self._lock:
            self._inner.send(record, headers)
