"""Growing a deployment's partition count: forwarding, handing runs over, taking them in.

:class:`Generations` is the part of :class:`~app.streaming._worker.StreamingWorker`
that deals with more than one topic generation, and with partitions added in
place (see ``docs/architecture.md``, "Scaling").
"""

from __future__ import annotations

import dataclasses
import json
import logging
from datetime import UTC, datetime

from app.workflow._types import EventType, WorkflowState
from topics import Topology

from ._codec import WireCodec
from ._consumer import Producer
from ._machine import Command, CommandKind, Effects, Machine, Run
from ._messages import partition_for
from ._metrics import WorkerMetrics
from ._outputs import Outbox
from ._runs import RunStore
from .settings import StreamingSettings

log = logging.getLogger("app.streaming.worker")


def _now() -> datetime:
    return datetime.now(UTC)


class Generations:
    """Forwarding between partitions and generations, migration and import of runs."""

    settings: StreamingSettings
    topology: Topology
    producer: Producer
    store: RunStore
    wire: WireCodec
    machine: Machine
    metrics: WorkerMetrics
    _generation_topics: dict[int, Outbox]

    async def _write(self, run: Run, fx: Effects, partition: int, cmd: Command) -> None:
        """Write what handling ``cmd`` decided (the worker's)."""
        raise NotImplementedError

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
            key=cmd.workflow_id.encode(),
            value=await self.wire.command_out(forwarded),
            partition=partition,
        )
        self.metrics.commands.labels(cmd.kind, "forwarded").inc()

    def _tasks_of(self, generation: int) -> Outbox:
        topology = dataclasses.replace(self.topology, generation=generation)
        return Outbox(self.producer, topology.activity_tasks(self.settings.task_queue))

    def _commands_of(self, generation: int) -> Outbox:
        topic = self._generation_topics.get(generation)
        if topic is None:
            name = dataclasses.replace(self.topology, generation=generation).commands
            topic = Outbox(self.producer, name)
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
            run = await self.store.load(wid)
            if run is None:
                continue
            handover = Command(
                command_id=f"handover/{wid}/{run.state.run_id[:8]}/{target}",
                kind=CommandKind.HANDOVER,
                workflow_id=wid,
                issued_at=_now(),
                payload={
                    "header": json.loads(await self.store.header(run, partition)),
                    "history": [e.model_dump(mode="json") for e in run.state.history],
                },
                step=target,
            )
            await self._commands_of(target).send(
                key=key, value=await self.wire.command_out(handover)
            )
            run.moved_to = target
            run.close()
            await self.store.runs.set(key, await self.store.header(run, partition), partition)
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
        if await self.store.load(cmd.workflow_id) is not None:
            return  # a redelivered handover
        data = cmd.payload
        header = data["header"]
        state = WorkflowState.model_validate({**header["state"], "history": data["history"]})
        state = await self.wire.payloads.decode_state(state)  # the header is stored encoded
        run = Run(state=state, start_command=header.get("start"))
        run.seen.extend(header.get("seen", []))
        await self.store.import_history(run, partition)
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
