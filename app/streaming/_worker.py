"""The streaming worker: Faust apps whose agents are the executor partitions.

- The ``executor`` agent consumes the commands topic. Each partition it owns
  is an executor partition, sole owner of the workflows keyed to it. For each
  command it loads the run (:mod:`._runs`: from its cache, else from the
  ``workflows`` and ``history`` tables, replaying the history), lets the
  :class:`Machine` decide, and writes the effects: the run's header and new events to the
  tables (compacted changelogs, co-partitioned with the commands), the events
  to the history topic, activity tasks to the task queue's topic, timers to
  the ``timers`` table, and the reply to the replies topic.
- The ``activities`` agent (:mod:`._activities`) consumes the activity tasks
  and publishes each outcome as an ``activity_result`` command; the
  ``done-tasks`` table keeps a redelivered task that already finished from
  running again.
- A timer loop fires the due timers of the partitions this worker owns, as
  ``timer_fired`` commands.

Delivery is at-least-once: Faust commits an offset only after flushing the
producer, so the state a command produced is acknowledged before its offset
is; a redelivered command is dropped by its id (or, for engine commands, by
the run's step and attempt). After a rebalance the new owner resumes its
workflows: it replays them and dispatches their pending activity attempts
again (the ``done-tasks`` table turns the repeat of a finished one into a
no-op).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import faust

from app.workflow._names import FunctionTable, Registrable
from app.workflow._types import EventType, WorkflowState

from ._activities import ActivityWorker
from ._faust import (
    Outbox,
    assigned_partitions,
    new_app,
    raw_topic,
    recover_tables,
    to_dead_letter,
)
from ._machine import Command, CommandKind, Effects, Machine, Run
from ._messages import (
    InvalidCommandError,
    decode_command,
    encode_command,
    encode_history,
    encode_reply,
    encode_task,
    partition_for,
)
from ._metrics import WorkerMetrics
from ._runs import RunStore
from ._wire import WireError
from .settings import StreamingSettings

log = logging.getLogger("app.streaming.worker")


def _now() -> datetime:
    return datetime.now(UTC)


class StreamingWorker:
    """One worker process's share of the engine: executor partitions and/or activities.

    Args:
        settings: broker, topology and timings.
        workflows: workflow functions this worker can run (or name → function).
        activities: activity functions this worker can run.
        run_executor: consume the commands topic (own executor partitions).
        run_activities: consume the activity tasks of ``settings.task_queue``.
    """

    def __init__(
        self,
        settings: StreamingSettings,
        workflows: Registrable = (),
        activities: Registrable = (),
        *,
        run_executor: bool = True,
        run_activities: bool = True,
    ) -> None:
        self.settings = settings
        self.topology = settings.topology
        self.workflows = FunctionTable("workflow", workflows)
        self.activities = FunctionTable("activity", activities, "activities")
        self.machine = Machine(self.workflows, self.activities)
        self.metrics = WorkerMetrics()
        self.run_executor = run_executor
        self._owned: set[int] = set()
        self._resumed: set[str] = set()
        # owned partitions left out of an assignment since the last rebalance completed
        self._lapsed: set[int] = set()
        self._generation_topics: dict[int, Outbox] = {}
        self._fired: dict[tuple[str, int, int | None], float] = {}
        self.app = self._build_app()
        self.store = RunStore(
            self.app, self.topology, self.machine, self.metrics, settings.cache_size
        )
        self.activity_worker = (
            ActivityWorker(settings, self.activities, self.metrics) if run_activities else None
        )

    def _build_app(self) -> faust.App:
        """The executor partitions: one consumer group on the commands topic."""
        s, topo = self.settings, self.topology
        app = new_app(s, topo.faust_id, s.web_port)
        self.commands_out = Outbox(app, topo.commands)
        self.history = Outbox(app, topo.history)
        self.replies = Outbox(app, topo.replies)
        self.dead_letter = Outbox(app, topo.dead_letter)
        self.tasks = Outbox(app, topo.activity_tasks(s.task_queue))
        if self.run_executor:
            commands = raw_topic(app, s, topo.commands)
            app.agent(commands, name=f"{topo.faust_id}.executor")(self._executor_agent)
            app.timer(s.timer_tick, name=f"{topo.faust_id}.timers")(self._fire_timers)
            app.on_rebalance_complete.connect(self._on_rebalance_complete)
            app.on_partitions_assigned.connect(self._on_partitions_assigned)
        return app

    @property
    def apps(self) -> list[faust.App]:
        apps = [self.app] if self.run_executor else []
        if self.activity_worker is not None:
            apps.append(self.activity_worker.app)
        return apps

    async def start(self) -> None:
        """Start the worker's Faust apps in this event loop."""
        await asyncio.gather(*(app.start() for app in self.apps))

    async def stop(self) -> None:
        """Stop consuming.

        Running activities may finish and report for ``drain_timeout``; those
        still running then are cancelled, and tasks not yet acknowledged run on
        the next owner.
        """
        if self.activity_worker is not None:
            await self.activity_worker.drain()
        for app in self.apps:
            # write out what was processed so that a restart finds it in the changelogs
            with contextlib.suppress(Exception):
                await asyncio.wait_for(app.producer.flush(), self.settings.request_timeout)
            await app.stop()
        if self.activity_worker is not None:
            self.activity_worker.close()
        self.store.close()

    # -- executor partitions ---------------------------------------------------------
    async def _executor_agent(self, stream: Any) -> None:
        async for event in stream.events():
            try:
                await self._on_command(event)
            except Exception as exc:
                # A bug must not stop the partition: the command is kept with the reason.
                log.exception("command at offset %s failed", event.message.offset)
                try:
                    await self._dead_letter(
                        event,
                        f"internal error while applying the command: {exc!r}"[:500],
                    )
                except Exception:
                    log.exception("could not dead-letter offset %s", event.message.offset)

    async def _on_command(self, event: Any) -> None:
        message = event.message
        if event.key is None:
            await self._dead_letter(
                event,
                "command has no key: commands must be keyed by workflow id so that "
                "one partition owns each workflow",
            )
            return
        try:
            cmd = decode_command(event.value, event.key)
        except (WireError, InvalidCommandError) as exc:
            await self._dead_letter(event, str(exc))
            return
        partition = message.partition
        log.debug(
            "command %s %s for %s at %s@%s",
            cmd.kind,
            cmd.command_id,
            cmd.workflow_id,
            partition,
            message.offset,
        )
        self._observe_lag(message)
        if cmd.kind == CommandKind.MIGRATE:
            await self._migrate(cmd, partition)
            return
        if cmd.kind == CommandKind.HANDOVER:
            await self._import(cmd, partition)
            return
        run = self.store.load(cmd.workflow_id)
        if (
            run is not None
            and run.moved_to is None
            and run.partition not in (None, partition)
            and cmd.kind not in (CommandKind.START, CommandKind.RESUME)
        ):
            # The key hashes here now (partitions were added in place) but the run is
            # owned by the partition it started on: the command goes there.
            assert run.partition is not None
            await self._forward(cmd, self.settings.generation, cmd.route, run.partition)
            return
        target = self._forward_target(cmd, run, partition)
        if target is not None:
            await self._forward(cmd, *target)
            return
        if (run is None and cmd.kind in (CommandKind.SIGNAL, CommandKind.CANCEL)) or (
            cmd.kind == CommandKind.START and cmd.name and self.workflows.get(cmd.name) is None
        ):
            # Named an unknown workflow or type: the client gets the error and the
            # command is kept in the dead-letter topic for an operator.
            reason = (
                f"unknown workflow {cmd.workflow_id!r}"
                if run is None and cmd.kind != CommandKind.START
                else f"unknown workflow type {cmd.name!r}"
            )
            await self._dead_letter(event, f"{cmd.kind} names an {reason}")
        before_status = run.state.status if run is not None else None
        run, fx = self.machine.handle(run, cmd)
        if cmd.kind == CommandKind.START and fx.started:
            self._resumed.add(cmd.workflow_id)  # a new run dispatches its own work
        self.metrics.commands.labels(cmd.kind, "duplicate" if fx.duplicate else "ok").inc()
        if fx.duplicate:
            self.metrics.duplicates.inc()
        if run is not None:
            await self._write(run, fx, partition, cmd)
            self.store.remember(run)
            if fx.started and cmd.kind == CommandKind.START and fx.reply and fx.reply.ok:
                self.metrics.workflows_started.inc()
            if before_status is not run.state.status and not run.running:
                self.metrics.workflows_ended.labels(run.state.status.value).inc()
        if fx.reply is not None and cmd.reply_to:
            await self.replies.send(
                key=cmd.reply_to.encode(),
                value=encode_reply(cmd.command_id, cmd.reply_to, cmd.workflow_id, fx.reply),
            )

    # -- growing into a new generation ------------------------------------------------
    def _forward_target(
        self, cmd: Command, run: Run | None, partition: int
    ) -> tuple[int, int | None] | None:
        """(generation, route) to forward ``cmd`` to, or None to handle it here."""
        if cmd.kind in (CommandKind.RESUME, CommandKind.START) and (
            cmd.kind == CommandKind.RESUME or self.store.moved_partition(partition) is None
        ):
            return None
        if run is not None and run.moved_to is not None:
            return run.moved_to, cmd.route  # handed over: its new owner decides
        moved = self.store.moved_partition(partition)
        if (
            moved is not None
            and (run is None or cmd.kind == CommandKind.START)
            and (cmd.route is None or cmd.kind == CommandKind.START)
        ):
            return moved, cmd.route  # new runs start in the new generation
        generation = self.settings.generation
        if run is None and cmd.route is None and self._home_partition(cmd, partition) is not None:
            return generation, generation  # routed within this topic: see _home_partition
        if run is None and cmd.route is None and generation > 1 and cmd.kind != CommandKind.START:
            # maybe a workflow of the previous generation not handed over yet (or ended
            # there): ask it, once; it answers or forwards the command back up
            return generation - 1, generation
        return None

    def _home_partition(self, cmd: Command, partition: int) -> int | None:
        """Where a workflow started before partitions were added in place lives.

        After Apache Kafka grows a topic in place, a workflow id may hash to a new
        partition while its run stays where it started. A command for a workflow
        this partition does not know goes, once, to the partition the key hashed
        to under ``previous_partitions``, which owns the run.
        """
        before = self.settings.previous_partitions
        if before is None or cmd.kind == CommandKind.START:
            return None
        home = partition_for(cmd.workflow_id, before)
        return None if home == partition else home

    async def _forward(
        self, cmd: Command, generation: int, route: int | None, partition: int | None = None
    ) -> None:
        topic = self._commands_of(generation)
        forwarded = dataclasses.replace(cmd, route=route)
        if partition is None and generation == self.settings.generation:
            partition = self._home_partition(cmd, -1)
        await topic.send(
            key=cmd.workflow_id.encode(), value=encode_command(forwarded), partition=partition
        )
        self.metrics.commands.labels(cmd.kind, "forwarded").inc()

    def _commands_of(self, generation: int) -> Outbox:
        topic = self._generation_topics.get(generation)
        if topic is None:
            name = dataclasses.replace(self.topology, generation=generation).commands
            topic = Outbox(self.app, name)
            self._generation_topics[generation] = topic
        return topic

    async def _migrate(self, cmd: Command, partition: int) -> None:
        """Hand every running workflow of ``partition`` over to generation ``cmd.step``."""
        target = int(cmd.step or 0)
        if target <= self.settings.generation:
            log.warning(
                "ignoring a migrate to generation %s from generation %s",
                target,
                self.settings.generation,
            )
            return
        await self.store.mark_moved(partition, target)
        moved = 0
        for key, header in self.store.headers():
            if header["p"] != partition or header.get("moved") is not None:
                continue
            if header["state"]["status"] != "running":
                continue
            wid = key.decode()
            run = self.store.load(wid)
            if run is None:
                continue
            handover = Command(
                command_id=f"handover/{wid}/{run.state.run_id[:8]}/{target}",
                kind=CommandKind.HANDOVER,
                workflow_id=wid,
                issued_at=_now(),
                payload={
                    "header": json.loads(self.store.header(run, partition)),
                    "history": [e.model_dump(mode="json") for e in run.state.history],
                },
                step=target,
            )
            await self._commands_of(target).send(key=key, value=encode_command(handover))
            run.moved_to = target
            run.close()
            await self.store.runs.set(key, self.store.header(run, partition), partition)
            await self.store.timers.delete(key, partition)
            self.store.evict(wid)
            moved += 1
        log.info(
            "partition %s moved to generation %s: %d running workflows handed over",
            partition,
            target,
            moved,
        )

    async def _import(self, cmd: Command, partition: int) -> None:
        """Take over a run handed over by the previous generation."""
        if self.store.load(cmd.workflow_id) is not None:
            return  # a redelivered handover
        data = cmd.payload
        header = data["header"]
        state = WorkflowState.model_validate({**header["state"], "history": data["history"]})
        run = Run(state=state, start_command=header.get("start"))
        run.seen.extend(header.get("seen", []))
        await self.store.import_history(run, partition)
        self._resumed.add(cmd.workflow_id)
        self.metrics.replays.inc()
        # Attempts started before the handover stay with the previous generation's
        # activity workers, whose done-tasks table knows them: dispatched again here
        # they would run a second time, even when they had finished there. Their
        # results reach this generation through the old one's forwarding. The run
        # keeps them (the resume, and any takeover here, leaves them out), and
        # _write forgets each once it is no longer pending.
        run.inherited = {
            (e.step, e.attempt)
            for e in state.history
            if e.type is EventType.ACTIVITY_STARTED and e.step is not None and e.attempt is not None
        }
        resume = dataclasses.replace(cmd, kind=CommandKind.RESUME, payload=None)
        handled, fx = self.machine.handle(run, resume)
        assert handled is not None
        run = handled
        fx.started = True  # the header must be written here
        await self._write(run, fx, partition, cmd)
        self.store.remember(run)

    async def _write(self, run: Run, fx: Effects, partition: int, cmd: Command) -> None:
        state = run.state
        wid = state.workflow_id
        run.partition = partition
        if run.inherited and run.parked is None:  # forget those no longer pending
            pending = {(t.step, t.attempt) for t in self.machine.pending_tasks(run)}
            run.inherited &= pending
        if fx.changed:
            await self.store.write_header(run, partition)
            for ev in fx.events:
                headers = [("retry", b"1")] if ev.id in fx.retries else []
                await self.history.send(
                    key=wid.encode(),
                    value=encode_history(wid, state.run_id, state.workflow_type, ev),
                    headers=headers,
                )
        now = _now()
        for task in fx.tasks:  # a resume re-dispatches work without recording anything
            await self.tasks.send(key=task.task_id.encode(), value=encode_task(task, now))
        await self.store.write_timers(run, partition)
        if run.parked is not None:
            self.metrics.parked.inc()

    def _observe_lag(self, message: Any) -> None:
        with contextlib.suppress(Exception):  # highwater is unknown before the first fetch
            tp = message.tp
            highwater = self.app.consumer.highwater(tp)
            if highwater is not None:
                lag = max(0, highwater - message.offset - 1)
                self.metrics.consumer_lag.labels(str(tp.partition)).set(lag)

    async def _dead_letter(self, event: Any, reason: str) -> None:
        await to_dead_letter(self.dead_letter, self.metrics, event, reason)

    # -- rebalances --------------------------------------------------------------------
    def _active_partitions(self) -> set[int]:
        return assigned_partitions(self.app.consumer.assignment(), self.topology.commands)

    # A rebalance revokes every partition and then assigns; one may follow another
    # before the streams resume. A partition this worker keeps across it keeps its
    # tables, cache and resumed runs: no other worker had it. One that was left out
    # of any assignment in between may have been worked on elsewhere: it is read
    # again, like a partition gained.
    async def _on_partitions_assigned(self, sender: Any, /, *args: Any, **kwargs: Any) -> None:
        # Faust signal handlers get (sender, *args, signal=..., **kwargs); args[0] is
        # the set of partitions assigned.
        assigned = assigned_partitions(args[0], self.topology.commands)
        self._lapsed |= self._owned - assigned

    def _forget(self, partitions: set[int]) -> None:
        """Drop what this worker holds of ``partitions``: it is not (or no longer) current."""
        if not partitions:
            return
        partition_of = self.store.partition_of
        self._resumed = {w for w in self._resumed if partition_of(w) not in partitions}
        self.store.forget(partitions)
        self._owned -= partitions

    async def _on_rebalance_complete(self, sender: Any, /, *args: Any, **kwargs: Any) -> None:
        active = self._active_partitions()
        self._forget((self._owned - active) | (active & self._lapsed))
        self._lapsed = set()
        await recover_tables(self.settings, self.store.tables, active - self._owned)
        if active != self._owned:
            log.info("executor partitions owned: %s", sorted(active))
        self._owned = active
        await self._resume_runs(active)

    async def _resume_runs(self, active: set[int]) -> None:
        """Resume the running workflows of owned partitions this worker has not resumed yet.

        Through the commands topic, so each resume is applied in order with the
        workflow's other commands, in the partition's own stream.
        """
        resumed = []
        for key, header in self.store.headers():
            wid = key.decode()
            if wid in self._resumed:
                continue
            if header["p"] not in active or header["state"]["status"] != "running":
                continue
            if header.get("moved") is not None:
                continue
            self._resumed.add(wid)
            self.store.evict(wid)
            cmd = Command(
                command_id=new_command_id(),
                kind=CommandKind.RESUME,
                workflow_id=wid,
                issued_at=_now(),
            )
            await self.commands_out.send(key=key, value=encode_command(cmd))
            resumed.append(wid)
        if resumed:
            log.info("resuming %d running workflows on partitions %s", len(resumed), sorted(active))

    # -- timers ------------------------------------------------------------------------
    async def _fire_timers(self) -> None:
        active = self._active_partitions()
        if not active:
            return
        now = time.time()
        refire = self.settings.timer_refire
        for key, entry in self.store.timers.decoded_items():
            if entry["p"] not in active:
                continue
            wid = key.decode()
            for step, due, attempt in entry["timers"]:
                if due > now:
                    continue
                mark = (wid, step, attempt)
                last = self._fired.get(mark)
                if last is not None and now - last < refire:
                    continue
                self._fired[mark] = now
                self.metrics.timer_lag.observe(now - due)
                cmd = Command(
                    command_id=f"timer/{wid}/{entry['run'][:8]}/{step}/{attempt}",
                    kind=CommandKind.TIMER_FIRED,
                    workflow_id=wid,
                    issued_at=_now(),
                    run_id=entry["run"],
                    step=step,
                    attempt=attempt,
                )
                await self.commands_out.send(key=wid.encode(), value=encode_command(cmd))
        if len(self._fired) > 10_000:
            cutoff = now - refire
            self._fired = {k: v for k, v in self._fired.items() if v > cutoff}


def new_command_id() -> str:
    return uuid.uuid4().hex
