"""cancel_and_wait ends a task even when one cancellation is lost; start_eagerly runs
a coroutine up to its first suspension and hands the rest to a task."""

from __future__ import annotations

import asyncio
import contextvars
import sys

import pytest

from app.workflow._tasks import cancel_and_wait, start_eagerly


def _swallowing_task() -> tuple[asyncio.Task[None], asyncio.Future[int]]:
    inner: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    async def body() -> None:
        await asyncio.wait_for(inner, 60)
        await asyncio.Event().wait()  # as a reader goes back to its queue

    return asyncio.create_task(body(), name="swallows"), inner


async def test_a_cancellation_lost_by_wait_for_is_sent_again() -> None:
    task, inner = _swallowing_task()
    await asyncio.sleep(0)  # the task now waits in wait_for
    # the result and the cancellation arrive in the same turn of the loop
    inner.set_result(1)
    task.cancel()
    await asyncio.wait({task}, timeout=0.2)
    if sys.version_info < (3, 12):
        assert not task.done(), "Python 3.11's wait_for no longer loses this cancellation"
    assert await cancel_and_wait([task], timeout=5.0, every=0.05) == set()
    assert task.cancelled()


async def test_ended_tasks_and_none_are_fine_and_failures_are_retrieved() -> None:
    async def fail() -> None:
        raise RuntimeError("boom")

    failed = asyncio.create_task(fail())
    await asyncio.wait({failed}, timeout=5)
    assert await cancel_and_wait([failed, None]) == set()
    assert failed._log_traceback is False  # type: ignore[attr-defined]


async def test_a_task_that_will_not_end_is_returned_after_the_timeout() -> None:
    release = asyncio.Event()

    async def stubborn() -> None:
        while not release.is_set():
            try:
                await release.wait()
            except asyncio.CancelledError:
                continue

    task = asyncio.create_task(stubborn())
    await asyncio.sleep(0)
    assert await cancel_and_wait([task], timeout=0.3, every=0.05) == {task}
    release.set()
    await asyncio.wait_for(task, 5)


# -- start_eagerly ------------------------------------------------------------------
where: contextvars.ContextVar[str] = contextvars.ContextVar("where", default="outside")


async def test_a_coroutine_that_does_not_suspend_ends_at_once_without_a_task() -> None:
    ran: list[str] = []

    async def quick() -> None:
        where.set("inside")  # in a copy of the caller's context, as in a task
        ran.append(where.get())

    before = len(asyncio.all_tasks())
    assert start_eagerly(quick(), "quick") is None
    assert ran == ["inside"]
    assert where.get() == "outside"
    assert len(asyncio.all_tasks()) == before


async def test_a_coroutine_that_suspends_goes_on_in_a_task_with_its_context() -> None:
    gate: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    seen: list[object] = []

    async def slow() -> None:
        token = where.set("inside")
        seen.append("first step")
        seen.append(await gate)
        await asyncio.sleep(0)  # a bare yield too
        seen.append(where.get())
        where.reset(token)  # the same context as the first step, or this raises

    task = start_eagerly(slow(), "slow")
    assert task is not None and task.get_name() == "slow"
    assert seen == ["first step"] and where.get() == "outside"
    gate.set_result(7)
    await asyncio.wait_for(task, 5)
    assert seen == ["first step", 7, "inside"]


async def test_cancelling_the_task_reaches_the_coroutine() -> None:
    cleaned: list[str] = []

    async def waits() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cleaned.append("cancelled")
            raise

    task = start_eagerly(waits(), "waits")
    assert task is not None
    await asyncio.sleep(0)
    task.cancel()
    await asyncio.wait({task}, timeout=5)
    assert task.cancelled() and cleaned == ["cancelled"]


async def test_a_failure_on_the_first_step_is_raised_and_a_later_one_kept_by_the_task() -> None:
    async def fails_now() -> None:
        raise ValueError("at once")

    with pytest.raises(ValueError, match="at once"):
        start_eagerly(fails_now(), "now")

    async def fails_later() -> None:
        await asyncio.sleep(0)
        raise ValueError("later")

    task = start_eagerly(fails_later(), "later")
    assert task is not None
    with pytest.raises(ValueError, match="later"):
        await asyncio.wait_for(task, 5)
