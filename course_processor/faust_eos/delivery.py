"""A fetched record handed to the stream without four tasks per record.

faust's fetcher (`Consumer._drain_messages`) hands each record to the stream with
`await self.wait_first(callback(message), self.suspend_flow.wait())`, so that a
rebalance can abandon a hand-over that is blocked (the stream's flow control, a full
producer buffer). mode's `wait_first` wraps every argument in a task, adds two more
for the service's stopped and crashed events, waits for the first and cancels the
rest: four tasks and about ten turns of the event loop per record, for a callback that
nearly always finishes without waiting for anything (it decodes the record and puts it
on the stream's queue). In a drain that was about a tenth of the worker's time.

`first_step` runs the callback up to its first wait, inline. A callback that finishes
there did exactly what its task would have done in its first step, and no other task
could have run in between, so wait_first's answer would have been the same (the
fetcher ignores the answer anyway). Only a callback that waits falls back to
wait_first, which goes on driving it from where it waits (`resume`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

from mode import Service
from mode.services import WaitResults

# What an asyncio coroutine yields when it waits: the future it waits for, or None
# (asyncio.sleep(0)).
Waiting = asyncio.Future[Any] | None


class Finished(Exception):
    """The coroutine returned at its first step (`value`)."""

    def __init__(self, value: Any) -> None:
        super().__init__()
        self.value = value


def first_step(coro: Coroutine[Any, Any, Any]) -> Waiting:
    """Run `coro` up to its first wait; what it waits for. Raises Finished with its
    result when it returns without waiting, and whatever it raises."""
    try:
        return coro.send(None)  # type: ignore[no-any-return]
    except StopIteration as stop:
        raise Finished(stop.value) from None


async def resume(coro: Coroutine[Any, Any, Any], waiting: Waiting) -> Any:
    """Drive `coro`, which waits for `waiting` (first_step's answer), to its end, as a
    task would: it resumes when that future is done, sees the future's exception, and a
    cancellation of this coroutine's task is thrown into it where it waits."""
    while True:
        failure: BaseException | None = None
        try:
            if waiting is None:
                await asyncio.sleep(0)
            else:
                # A task clears this flag of the future its coroutine yielded before it
                # waits for it; nobody did yet, and awaiting it set refuses to wait.
                waiting._asyncio_future_blocking = False
                await waiting
        except BaseException as exc:  # noqa: BLE001 - handed to coro, as a task does
            failure = exc
        try:
            waiting = coro.send(None) if failure is None else coro.throw(failure)
        except StopIteration as stop:
            return stop.value


class InlineFirst(Service):
    """A mode Service whose wait_first runs its first coroutine inline up to its first
    wait (the module doc), for faust's fetcher, which hands every record through it."""

    async def wait_first(self, *coros: Any, timeout: Any = None) -> WaitResults:
        first, *others = coros
        if not asyncio.iscoroutine(first):
            return await super().wait_first(*coros, timeout=timeout)
        try:
            waiting = first_step(first)
        except BaseException as exc:
            for other in others:
                if asyncio.iscoroutine(other):
                    other.close()  # never started: nothing to cancel
            if not isinstance(exc, Finished):
                raise
            if self._stopped.is_set() or self._crashed.is_set():
                return WaitResults([], [], True)
            return WaitResults([first], [exc.value], False)
        return await super().wait_first(resume(first, waiting), *others, timeout=timeout)
