"""The activity side of a worker: runs the activity tasks of one task queue.

Its own consumer group, so that activity-only workers never own executor
partitions and executor-only workers never run activities. Each outcome is
recorded in the ``done-tasks`` table before it is published as an
``activity_result`` command: a task redelivered after a crash, or dispatched
again by a new executor owner, publishes the recorded outcome instead of
running a second time.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

from app.workflow import activity as _activity
from app.workflow._activity_runner import run_attempt
from app.workflow._names import FunctionTable
from app.workflow._types import FailureInfo

from ._faust import (
    Outbox,
    assigned_partitions,
    changelog_table,
    new_app,
    raw_topic,
    recover_tables,
    to_dead_letter,
)
from ._machine import Command, CommandKind, Task
from ._messages import InvalidCommandError, decode_task, encode_command
from ._metrics import WorkerMetrics
from ._wire import WireError
from .settings import StreamingSettings


class ActivityWorker:
    """Consumes ``settings.task_queue``'s activity tasks and runs them in a thread pool."""

    def __init__(
        self, settings: StreamingSettings, activities: FunctionTable, metrics: WorkerMetrics
    ) -> None:
        self.settings = settings
        self.activities = activities
        self.metrics = metrics
        topo = settings.topology
        group = topo.activity_group(settings.task_queue)
        self.queue = topo.activity_tasks(settings.task_queue)
        self.app = app = new_app(settings, group, 0)
        self.results = Outbox(app, topo.commands)
        self.dead_letter = Outbox(app, topo.dead_letter)
        self.done_table = changelog_table(app, topo.changelog("done-tasks", group))
        self._partitions: set[int] = set()
        # partitions left out of an assignment since the last rebalance completed
        self._lapsed: set[int] = set()
        self._stopping = False
        self._pool = ThreadPoolExecutor(settings.activity_threads, "activity")
        self._inflight: set[asyncio.Future[None]] = set()
        app.on_rebalance_complete.connect(self._on_rebalance_complete)
        app.on_partitions_assigned.connect(self._on_partitions_assigned)
        app.agent(
            raw_topic(app, settings, self.queue),
            name=f"{topo.faust_id}.activities",
            concurrency=settings.activity_concurrency,
        )(self._agent)

    async def drain(self) -> None:
        """Take no more tasks; let running ones finish and report for ``drain_timeout``.

        A thread cannot be called back, so an attempt cut short here would
        still have run once; those still running at the bound are cancelled.
        """
        self._stopping = True
        if self._inflight:
            _, late = await asyncio.wait(self._inflight, timeout=self.settings.drain_timeout)
            for task in late:
                task.cancel()

    def close(self) -> None:
        """Release the thread pool (after the app stopped)."""
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def _agent(self, stream: Any) -> None:
        async for event in stream.events():
            if self._stopping:
                return  # not acked: the next owner runs it
            try:
                task = decode_task(event.value)
            except (WireError, InvalidCommandError) as exc:
                reason = f"bad activity task: {exc}"
                await to_dead_letter(self.dead_letter, self.metrics, event, reason)
                continue
            handling = asyncio.ensure_future(self._handle(task, event.message.partition))
            self._inflight.add(handling)
            handling.add_done_callback(self._inflight.discard)
            try:
                # shielded: a stop lets it finish (drain() waits for it) while this
                # agent is cancelled
                await asyncio.shield(handling)
            except asyncio.CancelledError:
                if self._stopping:
                    return  # not acked: the task is redelivered to the next owner
                raise

    async def _handle(self, task: Task, partition: int) -> None:
        key = task.task_id.encode()
        done = self.done_table.get(key)
        if done is None:
            done = await self._run(task)
            # durable before it is published (see the module docstring)
            await (await self.done_table.set(key, done, partition))
        await self.results.send(key=task.workflow_id.encode(), value=done)

    async def _run(self, task: Task) -> bytes:
        """Run one attempt; returns its ``activity_result`` command, encoded."""
        fn = self.activities.get(task.activity_name)
        info = _activity.ActivityInfo(
            workflow_id=task.workflow_id,
            run_id=task.run_id,
            activity_id=f"{task.workflow_id}/{task.step}",
            activity_name=task.activity_name,
            attempt=task.attempt,
            step=task.step,
        )
        failure: FailureInfo | None
        if fn is None:
            known = ", ".join(self.activities.names()) or "none"
            failure = FailureInfo(
                type="app.workflow.ActivityNotRegisteredError",
                message=f"activity {task.activity_name!r} is not registered on the workers of "
                f"task queue {self.settings.task_queue!r} (registered: {known})",
            )
            result, duration = None, 0.0
        else:
            done = await run_attempt(fn, task.input, info, self._pool)
            result, failure, duration = done.result, done.failure, done.duration
        self.metrics.activity_seconds.labels(
            task.activity_name, "ok" if failure is None else "failed"
        ).observe(duration)
        return encode_command(
            Command(
                command_id=f"result/{task.task_id}",
                kind=CommandKind.ACTIVITY_RESULT,
                workflow_id=task.workflow_id,
                issued_at=datetime.now(UTC),
                payload=result,
                run_id=task.run_id,
                step=task.step,
                attempt=task.attempt,
                duration=duration,
                failure=failure,
            )
        )

    # The same scheme as the executor's: a partition kept across a rebalance keeps
    # its part of the done-tasks table; one lost, or left out of an assignment in
    # between, is dropped and read again.
    async def _on_partitions_assigned(self, sender: Any, /, *args: Any, **kwargs: Any) -> None:
        self._lapsed |= self._partitions - assigned_partitions(args[0], self.queue)

    async def _on_rebalance_complete(self, sender: Any, /, *args: Any, **kwargs: Any) -> None:
        active = assigned_partitions(self.app.consumer.assignment(), self.queue)
        stale = (self._partitions - active) | (active & self._lapsed)
        self._lapsed = set()
        self.done_table.drop(stale)
        gained = active - (self._partitions - stale)
        self._partitions = active
        await recover_tables(self.settings, [self.done_table], gained)
