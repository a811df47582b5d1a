"""A fetched record handed to the stream inline (course_processor/faust_eos/delivery.py):
the coroutine runs as a task would run it, and wait_first answers as mode's does."""

import asyncio

import pytest

from course_processor.faust_eos.delivery import Finished, InlineFirst, first_step, resume


async def test_a_coroutine_that_does_not_wait_finishes_at_its_first_step() -> None:
    done: list[str] = []

    async def hand_over() -> int:
        done.append("queued")
        return 7

    with pytest.raises(Finished) as finished:
        first_step(hand_over())
    assert finished.value.value == 7
    assert done == ["queued"]


async def test_a_coroutine_that_waits_for_a_future_is_resumed_with_its_result() -> None:
    # loop.create_future() is the C future, which refuses to be awaited with the flag
    # the coroutine's own await set still on: resume must clear it, as a task does.
    future = asyncio.get_running_loop().create_future()

    async def hand_over() -> str:
        return f"got {await future}"

    coro = hand_over()
    waiting = first_step(coro)
    assert waiting is future
    task = asyncio.ensure_future(resume(coro, waiting))
    await asyncio.sleep(0)
    future.set_result("it")
    assert await task == "got it"


async def test_a_coroutine_that_yields_to_the_loop_goes_on_after_it() -> None:
    steps: list[int] = []

    async def hand_over() -> int:
        steps.append(1)
        await asyncio.sleep(0)
        steps.append(2)
        return 3

    coro = hand_over()
    waiting = first_step(coro)
    assert waiting is None and steps == [1]
    assert await resume(coro, waiting) == 3
    assert steps == [1, 2]


async def test_the_failure_of_the_awaited_future_is_raised_in_the_coroutine() -> None:
    future = asyncio.get_running_loop().create_future()

    async def hand_over() -> str:
        try:
            await future
        except KeyError as exc:
            return f"caught {exc}"
        return "not caught"

    coro = hand_over()
    waiting = first_step(coro)
    future.set_exception(KeyError("k"))
    assert await resume(coro, waiting) == "caught 'k'"


async def test_cancelling_the_task_cancels_the_coroutine_where_it_waits() -> None:
    future = asyncio.get_running_loop().create_future()
    cleaned: list[str] = []

    async def hand_over() -> None:
        try:
            await future
        finally:
            cleaned.append("finally")

    coro = hand_over()
    task = asyncio.ensure_future(resume(coro, first_step(coro)))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert future.cancelled()
    assert cleaned == ["finally"]


class Service(InlineFirst):
    pass


async def test_wait_first_answers_with_the_first_coroutine_finished_inline() -> None:
    service = Service()
    suspended = asyncio.Event()

    async def hand_over() -> str:
        return "queued"

    results = await service.wait_first(hand_over(), suspended.wait())
    assert not results.stopped
    assert results.results == ["queued"]


async def test_a_waiting_hand_over_is_abandoned_when_the_flow_is_suspended() -> None:
    # The fetcher's reason for wait_first: a hand-over blocked by flow control gives way
    # to a rebalance (suspend_flow), and the record is not queued.
    service = Service()
    suspended, blocked = asyncio.Event(), asyncio.Event()
    queued: list[str] = []

    async def hand_over() -> None:
        await blocked.wait()
        queued.append("record")

    async def suspend() -> None:
        await asyncio.sleep(0.01)
        suspended.set()

    asyncio.ensure_future(suspend())
    results = await asyncio.wait_for(service.wait_first(hand_over(), suspended.wait()), 5)
    blocked.set()
    await asyncio.sleep(0.01)
    assert not results.stopped
    assert queued == []


async def test_a_waiting_hand_over_finishes_through_the_fallback() -> None:
    service = Service()
    suspended, blocked = asyncio.Event(), asyncio.Event()

    async def hand_over() -> str:
        await blocked.wait()
        return "queued"

    async def unblock() -> None:
        await asyncio.sleep(0.01)
        blocked.set()

    asyncio.ensure_future(unblock())
    results = await asyncio.wait_for(service.wait_first(hand_over(), suspended.wait()), 5)
    assert results.results == ["queued"]


async def test_a_hand_over_that_raises_at_once_raises_from_wait_first() -> None:
    service = Service()

    async def hand_over() -> None:
        raise ValueError("undecodable")

    with pytest.raises(ValueError, match="undecodable"):
        await service.wait_first(hand_over(), asyncio.Event().wait())
