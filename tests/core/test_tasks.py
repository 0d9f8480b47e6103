"""cancel_and_wait ends a task even when one cancellation is lost."""

from __future__ import annotations

import asyncio
import sys

from app.workflow._tasks import cancel_and_wait


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
