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
import logging
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

from aiokafka.errors import KafkaError

from app.workflow import activity as _activity
from app.workflow._activity_runner import run_attempt
from app.workflow._codec import PayloadCodecError
from app.workflow._names import FunctionTable
from app.workflow._types import FailureInfo

from ._codec import WireCodec
from ._consumer import DeliveryError, GroupConsumer, Producer, Record
from ._machine import Command, CommandKind, Task
from ._messages import InvalidCommandError
from ._metrics import WorkerMetrics
from ._outputs import Outbox, changelog_table, recover_tables, to_dead_letter
from ._wire import WireError
from .settings import StreamingSettings

log = logging.getLogger("app.streaming.activities")


class ActivityWorker:
    """Consumes ``settings.task_queue``'s activity tasks and runs them in a thread pool."""

    def __init__(
        self,
        settings: StreamingSettings,
        activities: FunctionTable,
        metrics: WorkerMetrics,
        wire: WireCodec | None = None,
    ) -> None:
        self.settings = settings
        self.activities = activities
        self.metrics = metrics
        self.wire = wire or WireCodec(None)
        topo = settings.topology
        group = topo.activity_group(settings.task_queue)
        self.queue = topo.activity_tasks(settings.task_queue)
        self.producer = Producer(settings, f"{group}.runner")
        self.results = Outbox(self.producer, topo.commands)
        self.dead_letter = Outbox(self.producer, topo.dead_letter)
        self.done_table = changelog_table(self.producer, topo.changelog("done-tasks", group))
        self.consumer = GroupConsumer(
            settings,
            group,
            self.queue,
            self,
            self.producer,
            concurrency=settings.activity_concurrency,
        )
        self._pool = ThreadPoolExecutor(settings.activity_threads, "activity")
        self._running: dict[str, asyncio.Future[bytes]] = {}

    async def start(self) -> None:
        await self.producer.start()
        await self.consumer.start()

    async def stop(self) -> None:
        """Take no more tasks; let running ones finish and report for ``drain_timeout``.

        A thread cannot be called back, so an attempt cut short here would
        still have run once; those still running at the bound are cancelled and
        run again on the next owner.
        """
        await self.consumer.stop(self.settings.drain_timeout)
        await self.producer.stop()
        self._pool.shutdown(wait=False, cancel_futures=True)

    # -- partitions (called by the consumer) ------------------------------------------
    async def gain(self, partitions: set[int]) -> None:
        await recover_tables(self.settings, [self.done_table], partitions)

    def lose(self, partitions: set[int]) -> None:
        self.done_table.drop(partitions)

    async def handle(self, record: Record) -> None:
        try:
            task = await self.wire.task_in(record.value)
        except PayloadCodecError as exc:
            # This worker lacks the key: not the task's fault, so no dead letter (and no
            # failed attempt). Left uncommitted, it is read again after a rewind.
            log.error(
                "activity task at %s@%s cannot be decoded: %s", record.partition, record.offset, exc
            )
            raise
        except (WireError, InvalidCommandError) as exc:
            await to_dead_letter(
                self.dead_letter, self.metrics, record, f"bad activity task: {exc}"
            )
            return
        try:
            await self._handle(task, record.partition)
        except (KafkaError, DeliveryError, asyncio.CancelledError):
            raise
        except Exception as exc:  # a bug: keep the task with the reason, go on
            log.exception("activity task %s failed", task.task_id)
            await to_dead_letter(
                self.dead_letter,
                self.metrics,
                record,
                f"internal error while running the task: {exc!r}"[:500],
                task.workflow_id,
            )

    async def _handle(self, task: Task, partition: int) -> None:
        key = task.task_id.encode()
        done = self.done_table.get(key)
        if done is None:
            running = self._running.get(task.task_id)
            if running is not None:
                # A copy (re-driven, or redelivered) of an attempt running here: the
                # attempt reports when it finishes.
                await asyncio.shield(running)
                return
            fut: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
            self._running[task.task_id] = fut
            try:
                done = await self._run(task)
                # durable before it is published (see the module docstring)
                await (await self.done_table.set(key, done, partition))
                fut.set_result(done)
            except BaseException as exc:
                fut.set_exception(exc)
                fut.exception()  # retrieved: a copy waiting on it re-raises it
                raise
            finally:
                self._running.pop(task.task_id, None)
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
        return await self.wire.command_out(
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
