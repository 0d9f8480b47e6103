"""Ending background tasks for certain."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable

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
