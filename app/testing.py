"""Helpers for testing workflows: a time-skipping executor and a hook recorder.

:class:`TimeSkippingExecutor` is a :class:`DefaultExecutor` (in-memory store by
default) whose clock jumps straight to the next durable timer whenever some
``handle.result()`` is being awaited and nothing else is running: a workflow
that sleeps for a day finishes at once, and its history shows a day passed.
:class:`HookRecorder` records every hook call and lets a test ``await`` one,
instead of sleeping and hoping. :func:`replay` checks new workflow code
against stored histories before a deploy: it returns a :class:`ReplayResult`
naming the first event that diverges.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from app.workflow import DefaultExecutor, Hooks, WorkflowStore
from app.workflow._embedded import _Run
from app.workflow._replay import ReplayResult, replay

__all__ = ["HookRecorder", "ReplayResult", "TimeSkippingExecutor", "replay"]


class TimeSkippingExecutor(DefaultExecutor):
    """An executor whose time skips ahead while tests wait for results.

    Time moves normally, plus a skip: when a ``result()`` is awaited, no
    activity, timer callback or input is in progress, and a timer is armed,
    the clock jumps to that timer's due time and fires it. ``skipped`` tells
    how far the clock has jumped in total.
    """

    def __init__(self, store: WorkflowStore | None = None, **options: Any) -> None:
        if store is None:
            from providers.inmemory import InMemoryStore

            store = InMemoryStore()
        self.skipped = 0.0
        self._busy = 0
        self._awaiting = 0
        self._check_scheduled = False
        super().__init__(store, clock=self._now, **options)

    def _now(self) -> datetime:
        return datetime.now(UTC) + timedelta(seconds=self.skipped)

    async def _result(self, *args: Any, **kwargs: Any) -> Any:
        self._awaiting += 1
        self._schedule_check()
        try:
            return await super()._result(*args, **kwargs)
        finally:
            self._awaiting -= 1

    async def _input(self, run: _Run, *args: Any, **kwargs: Any) -> bool:
        self._busy += 1
        try:
            return await super()._input(run, *args, **kwargs)
        finally:
            self._busy -= 1
            self._schedule_check()

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        super()._task_done(task)
        self._schedule_check()

    def _schedule_check(self) -> None:
        if not self._check_scheduled:
            self._check_scheduled = True
            asyncio.get_running_loop().call_soon(self._check)

    def _check(self) -> None:
        self._check_scheduled = False
        if self._closed or not self._awaiting or self._busy or self._tasks:
            return
        armed = [
            (timer.due, run, timer)
            for run in self._runs.values()
            for timer, _ in run.timers.values()
        ]
        if not armed:
            return
        due, run, timer = min(armed, key=lambda item: item[0])
        ahead = due - self._now().timestamp()
        if ahead > 0:
            self.skipped += ahead
        _, handle = run.timers[timer.step]
        handle.cancel()
        self._spawn(self._work.fire(run, timer))


class HookRecorder:
    """Hooks that record each call as ``(hook, workflow_id, value)`` and can be awaited."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, Any]] = []
        self._changed = asyncio.Condition()

    def _hook(self, name: str) -> Callable[[str, Any], Any]:
        async def record(workflow_id: str, value: Any) -> None:
            async with self._changed:
                self.calls.append((name, workflow_id, value))
                self._changed.notify_all()

        return record

    def hooks(self) -> Hooks:
        """A :class:`Hooks` recording every callback under its short name."""
        names: tuple[str, ...] = ("workflow_start", "workflow_complete", "workflow_fail")
        names += ("activity_start", "activity_complete", "signal", "retry")
        return Hooks(**{f"on_{name}": self._hook(name) for name in names})

    def names(self, workflow_id: str) -> list[str]:
        """The hooks called for ``workflow_id``, in order."""
        return [name for name, wid, _ in self.calls if wid == workflow_id]

    async def wait_for(
        self, name: str, workflow_id: str, count: int = 1, timeout: float = 10.0
    ) -> None:
        """Wait until hook ``name`` has fired ``count`` times for ``workflow_id``."""

        def reached() -> bool:
            return self.names(workflow_id).count(name) >= count

        async with asyncio.timeout(timeout), self._changed:
            await self._changed.wait_for(reached)
