"""How an executor partition applies commands and writes what they decided.

:class:`Activations` is the part of :class:`~app.streaming._worker.StreamingWorker`
between a command and the topics: it lets the :class:`Machine` decide, runs
the attempts the worker runs itself (:mod:`._eager`), and writes the effects
(the run's header and timers to the tables, events to the history topic,
tasks, commands to other workflows, replies), one write per activation.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from app.workflow import _driver as driver
from app.workflow._names import FunctionTable
from app.workflow._types import HistoryEvent, WorkflowState, WorkflowStatus

from ._eager import EagerAttempts, merge
from ._growth import Generations, _now
from ._machine import DESCRIBE, STATE_QUERIES, Command, CommandKind, Effects, Run, Task
from ._outputs import Outbox
from ._pending import PendingAttempts, PendingStarts

log = logging.getLogger("app.streaming.worker")

CHAIN_ROUNDS = 8
"""Rounds of attempts that end at once applied in one activation (one write for all)."""


class Activations(Generations):
    """Applying commands and results to runs, and writing the effects."""

    activities: FunctionTable
    attempts: PendingAttempts
    starts: PendingStarts
    eager: EagerAttempts | None
    commands_out: Outbox
    history: Outbox
    replies: Outbox
    tasks: Outbox

    def _handle(self, run: Run | None, cmd: Command) -> tuple[Run | None, Effects]:
        run, fx = self.machine.handle(run, cmd)
        self.metrics.commands.labels(cmd.kind, "duplicate" if fx.duplicate else "ok").inc()
        if fx.duplicate:
            self.metrics.duplicates.inc()
        return run, fx

    async def _apply_results(self, partition: int, results: list[Command]) -> None:
        """Apply the results of attempts this worker ran itself, all of one workflow."""
        if not await self._apply_batch(partition, results):
            await self._publish(results)  # not this partition's business: the usual path

    async def _apply_batch(self, partition: int, results: list[Command]) -> bool:
        """Apply results of one workflow in one activation; False if its run is not here
        (unknown, moved, or owned by another partition): the caller routes them."""
        run = await self.store.load(results[0].workflow_id)
        if run is None or run.moved_to is not None or run.partition not in (None, partition):
            return False
        before_status = run.state.status
        run, merged = self._handle_all(run, results)
        await self._effects(run, merged, partition, results[-1], before_status)
        return True

    def _handle_all(self, run: Run, results: list[Command]) -> tuple[Run, Effects]:
        """Apply ``results`` to ``run`` one after the other; their effects merged."""
        merged = Effects()
        for result in results:
            after, fx = self._handle(run, result)
            assert after is not None  # a result never removes a run
            run = after
            merge(merged, fx)
        return run, merged

    async def _publish(self, commands: list[Command]) -> None:
        for cmd in commands:
            await self.commands_out.send(
                key=cmd.workflow_id.encode(), value=await self.wire.command_out(cmd)
            )

    async def _effects(
        self,
        run: Run | None,
        fx: Effects,
        partition: int,
        cmd: Command,
        before_status: WorkflowStatus | None,
    ) -> None:
        """Write what ``cmd`` (or a batch of results merged into ``fx``) did, then send."""
        if run is not None:
            run = await self._run_eager(run, fx, partition, cmd)
            await self._write(run, fx, partition, cmd)
            self.store.remember(run)
            if fx.started and cmd.kind == CommandKind.START and fx.reply and fx.reply.ok:
                self.metrics.workflows_started.inc()
            if before_status is not run.state.status and not run.running:
                self.metrics.workflows_ended.labels(run.state.status.value).inc()
            reply = fx.reply
            if cmd.name == DESCRIBE and reply and reply.ok and isinstance(reply.payload, dict):
                reply.payload["waiting"] = self._waiting(run, partition)
        await self._publish(fx.commands)  # to children and parents, after their events
        if fx.reply is not None and cmd.reply_to:
            await self.replies.send(
                key=cmd.reply_to.encode(),
                value=await self.wire.reply_out(
                    cmd.command_id,
                    cmd.reply_to,
                    cmd.workflow_id,
                    fx.reply,
                    describe=cmd.name in STATE_QUERIES,
                ),
            )
        for reply_to, command_id, answer in fx.replies:
            await self.replies.send(
                key=reply_to.encode(),
                value=await self.wire.reply_out(command_id, reply_to, cmd.workflow_id, answer),
            )

    async def _write(self, run: Run, fx: Effects, partition: int, cmd: Command) -> None:
        state = run.state
        wid = state.workflow_id
        run.partition = partition
        pending = self.machine.pending_tasks(run)
        if run.inherited and run.parked is None:  # forget those no longer pending
            run.inherited &= {(t.step, t.attempt) for t in pending}
        if fx.changed:
            await self.store.write_header(run, partition)
            for ended_run, events, retries in fx.ended:  # runs that continued as new
                await self._send_history(state, ended_run, events, retries)
            await self._send_history(state, state.run_id, fx.events, fx.retries)
        # a retry resumes from the last heartbeat of the attempts before it
        tasks = [self._with_details(t) for t in fx.tasks]
        pending_ids = {t.task_id for t in pending}
        local = [t for t in fx.local if t.task_id in pending_ids]  # still running
        if not run.running:
            self.attempts.ended(wid)
        if cmd.kind == CommandKind.RESUME:
            # A resume sent by an earlier owner, still in the topic, finds attempts this
            # owner already sent (its own resume, or their deadline, covers them).
            known = self.attempts.of(wid)
            tasks = [t for t in tasks if (t.step, t.attempt) not in known]
        now = _now()
        for task in tasks:  # a resume re-dispatches work without recording anything
            await self.tasks.send(
                key=task.task_id.encode(), value=await self.wire.task_out(task, now)
            )
        if tasks:
            self.metrics.dispatched.labels("topic").inc(len(tasks))
        started = None
        if cmd.kind in (CommandKind.RESUME, CommandKind.HANDOVER):
            if tasks:
                log.info(
                    "resumed %s on partition %s: dispatched attempts %s again",
                    wid,
                    partition,
                    ", ".join(f"{t.activity_name}#{t.step}.{t.attempt}" for t in tasks),
                )
            started = driver.attempt_starts(state.history)
        self.attempts.update(
            wid,
            partition,
            pending,
            tasks + local,
            started,
            inherited=run.inherited,
            local={(t.step, t.attempt) for t in local},
        )
        self.starts.update(
            wid,
            partition,
            self.machine.child_starts(run),
            [c for c in fx.commands if c.kind == CommandKind.START],
        )
        await self.store.write_timers(run, partition)
        if run.parked is not None:
            self.metrics.parked.inc()

    async def _send_history(
        self, state: WorkflowState, run_id: str, events: list[HistoryEvent], retries: set[int]
    ) -> None:
        wid = state.workflow_id
        key = wid.encode()
        records = await self.wire.history_out(
            wid, run_id, state.workflow_type, events, self.settings.history_batch_bytes, retries
        )
        for value, headers in records:
            await self.history.send(key=key, value=value, headers=headers)

    async def _run_eager(self, run: Run, fx: Effects, partition: int, cmd: Command) -> Run:
        """Start the attempts this worker runs itself; apply those that end at once.

        They move from ``fx.tasks`` to ``fx.local``. An attempt that ends without
        waiting (an async activity that does not suspend) is applied now, into
        ``fx``, and so on for what its result dispatches, up to
        :data:`CHAIN_ROUNDS` rounds: a run of quick steps costs one write, not one
        per step. Returns the run (a successor if one continued as new).
        """
        if self.eager is None:
            return run
        new = fx.tasks
        for round_ in range(CHAIN_ROUNDS + 1):
            local = [self._with_details(t) for t in self._eager_part(new, run, cmd)]
            if not local:
                break
            chosen = {t.task_id for t in local}
            fx.tasks = [t for t in fx.tasks if t.task_id not in chosen]
            fx.local.extend(local)
            self.metrics.dispatched.labels("eager").inc(len(local))
            if round_ == CHAIN_ROUNDS:
                # Started here too: their results come in the next activation, not
                # through the task topic (two broker hops for the chain's next step).
                for task in local:
                    self.eager.start(task, partition)
                break
            ended = await self.eager.run_now(local, partition, run.state.workflow_id)
            if not ended:
                break
            run, more = self._handle_all(run, ended)
            merge(fx, more)
            new = more.tasks
        return run

    def _eager_part(self, tasks: list[Task], run: Run, cmd: Command) -> list[Task]:
        """The tasks this worker runs itself (eager dispatch), as many as it has room for.

        Not those a resume or a hand-over dispatches again: the previous owner may
        still be running them, and a copy on the task topic meets it there.
        """
        if self.eager is None or cmd.kind in (CommandKind.RESUME, CommandKind.HANDOVER):
            return []
        room = self.eager.room
        out: list[Task] = []
        for task in tasks:
            if len(out) >= room:
                break
            if (task.step, task.attempt) in run.inherited:
                continue  # its result is known to the previous generation's workers
            if self.activities.get(task.activity_name) is None:
                continue  # another worker of the task queue may have it
            out.append(task)
        return out

    def _release(self, task: Task, partition: int) -> None:
        self.attempts.release(task.workflow_id, partition, task.step, task.attempt)

    def _with_details(self, task: Task) -> Task:
        details = self.attempts.details(task.workflow_id, task.step)
        if details is None or task.heartbeat_details is details:
            return task
        return dataclasses.replace(task, heartbeat_details=details)

    def _waiting(self, run: Run, partition: int) -> dict[str, Any]:
        """What the run waits on, for ``describe``: attempts, timers, signals."""
        attempts = self.attempts.of(run.state.workflow_id)
        activities = []
        for task in self.machine.pending_tasks(run):
            known = attempts.get((task.step, task.attempt))
            activities.append(
                {
                    "activity": task.activity_name,
                    "step": task.step,
                    "attempt": task.attempt,
                    "started": known.started if known else None,
                    "dispatched": known.dispatched if known else None,
                    "redrives": known.redrives if known else 0,
                    "inherited": (task.step, task.attempt) in run.inherited,
                }
            )
        starts = self.starts.of(run.state.workflow_id)
        children = []
        for child in self.machine.waiting_children(run):
            sent = starts.get(str(child.pop("command_id")))
            child["dispatched"] = sent.dispatched if sent else None
            child["redrives"] = sent.redrives if sent else 0
            children.append(child)
        return {
            "partition": partition,
            "activities": activities,
            "children": children,
            "timers": self.machine.describe_timers(run),
            "signals": self.machine.awaited_signals(run),
            "backing_off": self.machine.backing_off(run),
        }
