"""Activity attempts and durable timers in the embedded runtime.

Each attempt the instance wants runs as a task of the executor (a thread of
its pool for a plain function); its end is recorded as the run's next input,
unless the attempt is no longer the current one. Each timer is an asyncio
timer armed at its due wall-clock time; firing records ``timer_fired``.
Heartbeat details are kept per step for the next attempt to read.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

from . import _driver as driver
from . import activity as _activity
from ._activity_runner import (
    AttemptOutcome,
    heartbeat_timeout_failure,
    run_attempt,
    watch_heartbeats,
)
from ._converter import describe_failure
from ._core import PendingActivity, PendingTimer, TimerKind, WorkflowInstance
from ._types import EventType, FailureInfo, HistoryEvent

if TYPE_CHECKING:
    from ._embedded import DefaultExecutor, _Run


def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()


class EmbeddedWork:
    """The activity attempts and timers of one :class:`DefaultExecutor`'s runs."""

    def __init__(self, executor: DefaultExecutor) -> None:
        self._ex = executor

    def sync(self, run: _Run, instance: WorkflowInstance) -> None:
        """Run the attempts and arm the timers ``instance`` wants; stop the others."""
        ex = self._ex
        driver.sync_keyed(
            run.activity_tasks,
            {a.step: a for a in instance.pending_activities()},
            lambda act: act.attempt,
            lambda act: ex._spawn(self._run_activity(run, act)),
            _cancel,
        )
        self._sync_timers(run, instance)

    def _sync_timers(self, run: _Run, instance: WorkflowInstance) -> None:
        wanted = instance.pending_timers()
        for step, (timer, handle) in list(run.timers.items()):
            if wanted.get(step) != timer:
                handle.cancel()
                del run.timers[step]
        for step, timer in wanted.items():
            if step not in run.timers:
                self._arm(run, timer)

    def _arm(self, run: _Run, timer: PendingTimer) -> None:
        ex = self._ex
        delay = max(0.0, timer.due - ex._clock().timestamp())
        handle = asyncio.get_running_loop().call_later(
            delay, lambda: ex._spawn(self.fire(run, timer))
        )
        run.timers[timer.step] = (timer, handle)

    async def fire(self, run: _Run, timer: PendingTimer) -> None:
        """Record ``timer_fired`` for ``timer``, unless it is no longer wanted."""
        ex = self._ex
        early = timer.due - ex._clock().timestamp()
        if early > 0:  # the loop's monotonic clock ran ahead of the wall clock
            if run.timers.get(timer.step, (None,))[0] == timer:
                self._arm(run, timer)
            return

        def make(r: _Run) -> HistoryEvent | None:
            current = r.timers.get(timer.step)
            if current is None or current[0] != timer or r.instance is None:
                return None
            if not r.instance.is_current_timer(timer.step, timer.attempt):
                return None
            del r.timers[timer.step]
            beat = (
                r.heartbeats.get(timer.step) if timer.kind is TimerKind.ACTIVITY_TIMEOUT else None
            )
            return ex._event(
                r,
                EventType.TIMER_FIRED,
                heartbeat_details=beat,
                step=timer.step,
                attempt=timer.attempt,
                activity_name=timer.activity_name,
                duration=timer.duration,
            )

        await ex._input(run, make)

    async def _run_activity(self, run: _Run, act: PendingActivity) -> None:
        ex = self._ex
        state = run.state
        info = _activity.ActivityInfo(
            workflow_id=state.workflow_id,
            run_id=state.run_id,
            activity_id=f"{state.workflow_id}/{act.step}",
            activity_name=act.name,
            attempt=act.attempt,
            step=act.step,
            heartbeat_timeout=act.heartbeat_timeout,
            heartbeat_details=run.heartbeats.get(act.step, act.heartbeat_details),
        )
        fn = ex._activities.get(act.name) or act.fn
        loop = asyncio.get_running_loop()
        number = act.attempt
        started = time.monotonic()
        last_beat = [started]

        def beat(details: Any) -> None:  # any thread; a list item and a dict item store are atomic
            if run.activity_tasks.get(act.step, (None,))[0] == number:
                last_beat[0] = time.monotonic()
                run.heartbeats[act.step] = details

        attempt = _activity._Attempt(info, beat)
        running: asyncio.Future[AttemptOutcome] | None = None
        try:
            if act.heartbeat_timeout is None:  # no watchdog: run it in this task
                done: AttemptOutcome | None = await run_attempt(fn, act.input, attempt, ex._pool)
            else:
                running = loop.create_task(run_attempt(fn, act.input, attempt, ex._pool))
                done = await watch_heartbeats(running, act.heartbeat_timeout, last_beat)
        except asyncio.CancelledError:
            attempt.cancel("the workflow no longer waits for this attempt")
            if running is not None:
                running.cancel()
            raise
        failure: FailureInfo | None
        if done is None:  # missed its heartbeat timeout
            attempt.cancel("it missed its heartbeat timeout; another attempt runs instead")
            assert running is not None
            running.cancel()
            assert act.heartbeat_timeout is not None
            result, failure = (
                None,
                heartbeat_timeout_failure(act.name, act.attempt, act.heartbeat_timeout),
            )
            duration = time.monotonic() - started
        else:
            result, failure, duration = done.result, done.failure, done.duration
        task = asyncio.current_task()

        def make(r: _Run) -> HistoryEvent | None:
            mine = r.activity_tasks.get(act.step)
            if mine is None or mine[1] is not task or r.instance is None:
                return None
            del r.activity_tasks[act.step]
            if not r.instance.is_current_attempt(act.step, act.attempt):
                return None
            if failure is None:
                r.heartbeats.pop(act.step, None)
                return ex._event(
                    r,
                    EventType.ACTIVITY_COMPLETED,
                    activity_name=act.name,
                    result=result,
                    step=act.step,
                    attempt=act.attempt,
                    duration=duration,
                )
            return ex._event(
                r,
                EventType.ACTIVITY_FAILED,
                heartbeat_details=r.heartbeats.get(act.step),
                activity_name=act.name,
                error=describe_failure(failure),
                failure=failure,
                step=act.step,
                attempt=act.attempt,
                duration=duration,
            )

        ex._post(run, make)
