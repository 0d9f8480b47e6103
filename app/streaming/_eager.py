"""Eager dispatch: the activity attempts an executor runs on its own worker.

A worker that owns executor partitions and also runs the activities of its
task queue runs the attempts it dispatches itself (up to
``eager_activities`` at once) instead of publishing their tasks. A step
then costs no broker hop: no task on the task topic, no ``activity_result``
on the commands topic. An attempt runs up to its first suspension at once,
inside the activation (an ``async`` activity that does not wait on anything
costs no task and no turn of the loop). The results are applied in their
executor partition under the consumer's gate, in the order they finished,
and all the results of one workflow that finished together are applied in
one activation: one header write for the lot.

Durability is that of a dispatched task: the run's header records the
attempt as started (the write of the command that dispatched it); if this
worker dies, the partition's next owner resumes the run and sends the
pending attempt on the task topic. If the partition moves to another worker
while the attempt runs here, its result is published as a command for the
new owner, which has dispatched the attempt again on resuming: as with a
task whose activity worker dies, an attempt may then run twice (activities
are at-least-once), and the second result is dropped by its step and attempt.
An eager attempt is never re-driven while it runs (a copy on the task topic
could run on another worker at the same time).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from aiokafka.errors import KafkaError

from app.workflow._tasks import cancel_and_wait, start_eagerly

from ._activities import ActivityWorker
from ._consumer import DeliveryError, GroupConsumer
from ._machine import Command, Effects, Task

log = logging.getLogger("app.streaming.eager")

Apply = Callable[[int, list[Command]], Awaitable[None]]
"""Applies results of one workflow, in order, in the executor partition given."""
Publish = Callable[[list[Command]], Awaitable[None]]
"""Sends results through the commands topic (the partition is not owned here now)."""


class EagerAttempts:
    """The attempts this worker's executor runs itself, and the application of their results.

    Args:
        runner: runs an attempt (this worker's activity side).
        consumer: the executor's consumer: its gate orders the results with the
            records, and tells which partitions are owned.
        limit: attempts running here at once; past it, tasks go to the topic.
        apply: applies results in a partition owned here (under the gate).
        publish: sends results whose partition is not owned here.
        release: an attempt that ended without a result (a bug, logged): it is
            re-driven through the task topic when due.
    """

    def __init__(
        self,
        runner: ActivityWorker,
        consumer: GroupConsumer,
        limit: int,
        apply: Apply,
        publish: Publish,
        release: Callable[[Task, int], None],
    ) -> None:
        self.runner = runner
        self.consumer = consumer
        self.limit = limit
        self._apply = apply
        self._publish = publish
        self._release = release
        self._running: set[asyncio.Task[None]] = set()
        self._results: list[tuple[int, Command]] = []
        self._applier: asyncio.Task[None] | None = None
        # while an activation takes its own results: no applier for them
        self._collecting = False

    @property
    def room(self) -> int:
        """How many more attempts may start here now."""
        return self.limit - len(self._running)

    def start(self, task: Task, partition: int) -> None:
        """Run ``task`` here; its result is applied in ``partition`` once it is done."""
        self._start(task, partition)

    async def run_now(self, tasks: list[Task], partition: int, workflow_id: str) -> list[Command]:
        """Start ``tasks`` (all ``workflow_id``'s) here, and take the results of those
        that ended at once (the caller applies them, under the gate).

        An attempt runs up to its first suspension right away; if one suspended,
        they all get one more turn of the loop.
        """
        self._collecting = True
        try:
            suspended = [self._start(task, partition) for task in tasks]
            if any(suspended):
                await asyncio.sleep(0)
        finally:
            self._collecting = False
        mine = [r for _, r in self._results if r.workflow_id == workflow_id]
        if mine:
            self._results = [(p, r) for p, r in self._results if r.workflow_id != workflow_id]
        self._apply_soon()
        return mine

    def _start(self, task: Task, partition: int) -> bool:
        """Run ``task`` up to its first suspension; True if it did suspend."""
        running = start_eagerly(self._run(task, partition), f"eager {task.task_id}")
        if running is None:
            return False
        self._running.add(running)
        running.add_done_callback(self._running.discard)
        return True

    async def _run(self, task: Task, partition: int) -> None:
        try:
            result = await self.runner.run(task)
        except asyncio.CancelledError:
            raise  # stopping: the partition's next owner dispatches it again
        except Exception:
            log.exception(
                "attempt %s of step %s of %s failed to run here; it is re-driven through "
                "the task topic",
                task.attempt,
                task.step,
                task.workflow_id,
            )
            self._release(task, partition)
            return
        self._results.append((partition, result))
        if not self._collecting:
            self._apply_soon()

    def _apply_soon(self) -> None:
        if self._results and (self._applier is None or self._applier.done()):
            self._applier = asyncio.create_task(self._apply_all(), name="eager results")

    async def _apply_all(self) -> None:
        while self._results:
            async with self.consumer.gate:
                batch, self._results = self._results, []
                by_run: dict[str, tuple[int, list[Command]]] = {}
                for partition, result in batch:
                    by_run.setdefault(result.workflow_id, (partition, []))[1].append(result)
                for partition, results in by_run.values():
                    await self._apply_run(partition, results)

    async def _apply_run(self, partition: int, results: list[Command]) -> None:
        if partition in self.consumer.owned:
            try:
                await self._apply(partition, results)
                return
            except (KafkaError, DeliveryError) as exc:
                # As for a record whose effects failed: the partition is read again
                # from its logs, which resumes the run and dispatches the attempt again.
                log.error("results of %s not written: %r", results[0].workflow_id, exc)
                self.consumer.effects_lost()
                return
            except Exception:
                log.exception(
                    "results of %s could not be applied here; they go through the commands topic",
                    results[0].workflow_id,
                )
        try:
            await self._publish(results)
        except Exception as exc:
            log.error("results of %s not published: %r", results[0].workflow_id, exc)
            self.consumer.effects_lost()

    async def stop(self, timeout: float) -> None:
        """Let running attempts finish for ``timeout`` and apply their results; cancel the rest."""
        if self._running:
            _, late = await asyncio.wait(set(self._running), timeout=timeout)
            await cancel_and_wait(late)
        if self._applier is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._applier), timeout + 5.0)
            except TimeoutError:
                await cancel_and_wait([self._applier])
            self._applier = None


def merge(into: Effects, fx: Effects) -> None:
    """Add ``fx``, what the next command of the same workflow produced, to ``into``.

    Events stay with the run that recorded them: when ``fx`` continued a run as
    new, the events gathered so far belong to that run's ended entry.
    """
    if fx.ended:
        run_id, events, retries = fx.ended[0]
        into.ended.append((run_id, [*into.events, *events], into.retries | retries))
        into.ended.extend(fx.ended[1:])
        into.events, into.retries = list(fx.events), set(fx.retries)
    else:
        into.events.extend(fx.events)
        into.retries |= fx.retries
    into.tasks.extend(fx.tasks)
    into.replies.extend(fx.replies)
    into.commands.extend(fx.commands)
    into.local.extend(fx.local)
    into.started = into.started or fx.started
    into.successor = fx.successor or into.successor
    into.duplicate = into.duplicate and fx.duplicate
