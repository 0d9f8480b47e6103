"""A deterministic asyncio event loop for workflow code.

Workflow code runs on this loop only while the instance applies an event:
callbacks run in FIFO order until none is ready, time is the workflow time
taken from history, and every timer (``asyncio.sleep``, ``wait_for``,
``ctx.sleep``) becomes a durable timer command of the instance. There is no
selector, no thread and no clock, so the same history always drives the same
code path.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import weakref
from collections import deque
from collections.abc import Callable, Coroutine
from typing import Any, Protocol, TypeVar, TypeVarTuple, Unpack

_T = TypeVar("_T")
_Ts = TypeVarTuple("_Ts")
log = logging.getLogger("app.workflow.loop")


class TimerSink(Protocol):
    """Where the loop sends timers: the instance turns them into durable commands."""

    def start_loop_timer(self, handle: asyncio.TimerHandle) -> None: ...

    def cancel_loop_timer(self, handle: asyncio.TimerHandle) -> None: ...


class WorkflowLoop(asyncio.AbstractEventLoop):
    """Runs ready callbacks until idle; never blocks, never reads a clock."""

    def __init__(self, timers: TimerSink) -> None:
        self._ready: deque[asyncio.Handle] = deque()
        self._timers = timers
        self._now = 0.0
        self._running = False
        self._closed = False
        # asyncio.all_tasks(loop) scans every task of the process; keep our own
        self._tasks: weakref.WeakSet[asyncio.Task[Any]] = weakref.WeakSet()

    # -- driving -----------------------------------------------------------
    def set_time(self, now: float) -> None:
        self._now = now

    def run_until_idle(self) -> None:
        """Run callbacks until none is ready; the outer loop is restored after."""
        outer = asyncio.events._get_running_loop()
        asyncio.events._set_running_loop(self)
        self._running = True
        try:
            while self._ready:
                handle = self._ready.popleft()
                if not handle.cancelled():
                    handle._run()
        finally:
            self._running = False
            asyncio.events._set_running_loop(outer)

    def fire_timer(self, handle: asyncio.TimerHandle) -> None:
        handle._scheduled = False  # type: ignore[attr-defined]  # asyncio's own flag
        if not handle.cancelled():
            self._ready.append(handle)

    # -- the asyncio API workflow code reaches ------------------------------
    def time(self) -> float:
        return self._now

    def call_soon(
        self,
        callback: Callable[[Unpack[_Ts]], object],
        *args: *_Ts,
        context: contextvars.Context | None = None,
    ) -> asyncio.Handle:
        handle = asyncio.Handle(callback, args, self, context)
        self._ready.append(handle)
        return handle

    def call_later(
        self,
        delay: float,
        callback: Callable[[Unpack[_Ts]], object],
        *args: *_Ts,
        context: contextvars.Context | None = None,
    ) -> asyncio.TimerHandle:
        return self.call_at(self._now + max(0.0, delay), callback, *args, context=context)

    def call_at(
        self,
        when: float,
        callback: Callable[[Unpack[_Ts]], object],
        *args: *_Ts,
        context: contextvars.Context | None = None,
    ) -> asyncio.TimerHandle:
        handle = asyncio.TimerHandle(when, callback, args, self, context)
        # asyncio calls _timer_handle_cancelled on cancel() only for scheduled handles
        handle._scheduled = True  # type: ignore[attr-defined]
        self._timers.start_loop_timer(handle)
        return handle

    def _timer_handle_cancelled(self, handle: asyncio.TimerHandle) -> None:
        self._timers.cancel_loop_timer(handle)

    def create_future(self) -> asyncio.Future[Any]:
        return asyncio.Future(loop=self)

    def create_task(  # type: ignore[override]
        self,
        coro: Coroutine[Any, Any, _T],
        *,
        name: str | None = None,
        context: contextvars.Context | None = None,
    ) -> asyncio.Task[_T]:
        task = asyncio.Task(coro, loop=self, name=name, context=context)
        self._tasks.add(task)
        return task

    def pending_tasks(self) -> list[asyncio.Task[Any]]:
        """Tasks created on this loop that have not finished."""
        return [t for t in self._tasks if not t.done()]

    def call_soon_threadsafe(  # type: ignore[override]
        self, callback: Callable[..., object], *args: Any, context: Any = None
    ) -> asyncio.Handle:
        raise RuntimeError("workflow code must not use threads; run the work in an activity")

    def run_in_executor(
        self, executor: Any, func: Callable[[Unpack[_Ts]], _T], *args: *_Ts
    ) -> asyncio.Future[_T]:
        raise RuntimeError(
            "workflow code must not run blocking work; call ctx.execute_activity instead"
        )

    def get_debug(self) -> bool:
        return False

    def set_debug(self, enabled: bool) -> None:
        pass

    def is_running(self) -> bool:
        return self._running

    def is_closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        self._closed = True
        self._ready.clear()

    def get_exception_handler(self) -> None:
        return None

    def call_exception_handler(self, context: dict[str, Any]) -> None:
        if self._closed:
            return
        exc = context.get("exception")
        log.debug("workflow loop: %s", context.get("message"), exc_info=exc)

    def default_exception_handler(self, context: dict[str, Any]) -> None:
        self.call_exception_handler(context)

    def get_task_factory(self) -> None:
        return None

    async def shutdown_asyncgens(self) -> None:
        pass
