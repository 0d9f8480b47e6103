"""Background tasks: ending them for certain, starting them eagerly."""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import Callable, Coroutine, Generator, Iterable
from functools import partial
from typing import Any

log = logging.getLogger(__name__)


async def cancel_and_wait(
    tasks: Iterable[asyncio.Task[object] | None], timeout: float = 5.0, every: float = 0.5
) -> set[asyncio.Task[object]]:
    """Cancel ``tasks`` and wait until they end, for at most ``timeout`` seconds.

    A task still running after ``every`` seconds is cancelled again: on Python
    3.11 ``asyncio.wait_for`` returns its inner result instead of raising when a
    cancellation arrives just as that result does, so one ``cancel()`` can be
    lost and a task go on to wait forever. Returns the tasks that did not end.
    """
    given = [task for task in tasks if task is not None]
    pending = {task for task in given if not task.done()}
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while pending and (remaining := deadline - loop.time()) > 0:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=min(every, remaining))
    for task in pending:
        log.warning("task %s did not end within %gs of its cancellation", task.get_name(), timeout)
    for task in given:
        if task.done() and not task.cancelled():
            task.exception()  # seen: no "exception was never retrieved" at exit
    return pending


def start_eagerly(coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None] | None:
    """Run ``coro`` now, up to its first suspension; a task runs the rest.

    Returns None when ``coro`` ended without suspending: no task, no turn of the
    loop (what ``asyncio.eager_task_factory`` does from Python 3.12). It runs in
    a copy of the current context, as a task would, and keeps that copy for
    the rest. An exception on the first step propagates to the caller.
    """
    context = contextvars.copy_context()
    try:
        waiting = context.run(coro.send, None)
    except StopIteration:
        return None
    return asyncio.get_running_loop().create_task(
        _finish(_Rest(coro, waiting)), name=name, context=context
    )


class _Rest:
    """What is left of a coroutine that suspended on ``waiting``, for a task to run."""

    __slots__ = ("coro", "waiting")

    def __init__(self, coro: Coroutine[Any, Any, None], waiting: Any) -> None:
        self.coro = coro
        self.waiting = waiting

    def __await__(self) -> Generator[Any, None, None]:
        coro, waiting = self.coro, self.waiting
        while True:
            try:
                # The task waits on what the coroutine waits on (a future, or None for
                # a bare yield) and wakes this generator when it is done.
                yield waiting
            except BaseException as exc:  # a cancellation: the coroutine gets it
                step: Callable[[], Any] = partial(coro.throw, exc)
            else:
                step = partial(coro.send, None)
            try:
                waiting = step()
            except StopIteration:
                return


async def _finish(rest: _Rest) -> None:
    await rest
