"""The streaming worker: a Faust app whose agents are the executor partitions.

- The ``executor`` agent consumes the commands topic. Each partition it owns
  is an executor partition, sole owner of the workflows keyed to it. For each
  command it loads the run (from its cache, else from the ``workflows`` and
  ``history`` tables, replaying the history), lets the :class:`Machine`
  decide, and writes the effects: the run's header and new events to the
  tables (compacted changelogs, co-partitioned with the commands), the events
  to the history topic, activity tasks to the task queue's topic, timers to
  the ``timers`` table, and the reply to the replies topic.
- The ``activities`` agent consumes the activity tasks and publishes each
  outcome as an ``activity_result`` command; the ``done-tasks`` table keeps a
  redelivered task that already finished from running again.
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
import os
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import faust
from aiokafka.partitioner import murmur2
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP, TopicT

from app.workflow import activity as _activity
from app.workflow._activity_runner import run_attempt
from app.workflow._names import FunctionTable, Registrable
from app.workflow._types import FailureInfo, WorkflowState

from ._machine import Command, CommandKind, Effects, Machine, Run, Task
from ._messages import (
    InvalidCommandError,
    decode_command,
    decode_task,
    encode_command,
    encode_dead_letter,
    encode_history,
    encode_reply,
    encode_task,
)
from ._metrics import WorkerMetrics
from ._tables import ChangelogTable, recover
from ._wire import WireError
from .settings import StreamingSettings

log = logging.getLogger("app.streaming.worker")

_MOVED_KEY = b"\x00moved/"  # runs-table key of a partition's new generation
_TAIL = 32  # events repeated in each run header
_TAIL_BYTES = 1024 * 1024
_FETCH_WAIT_ATTR = "_streamflow_fetch_wait_ms"
_original_create_worker_consumer = faust_aiokafka.AIOKafkaConsumerThread._create_worker_consumer


def _create_worker_consumer(self: Any, transport: Any) -> Any:
    # Faust hard-codes a 1.5 s fetch long-poll; brokers that do not wake a fetch on
    # new data (the test broker) then add ~0.75 s per hop. Use our setting instead.
    consumer = _original_create_worker_consumer(self, transport)
    wait = getattr(self.app, _FETCH_WAIT_ATTR, None)
    if wait is not None:
        consumer._fetch_max_wait_ms = wait
    return consumer


faust_aiokafka.AIOKafkaConsumerThread._create_worker_consumer = _create_worker_consumer  # type: ignore[method-assign]


class Outbox:
    """A topic a worker only writes to, straight through its app's producer.

    Faust's ``Topic.send`` adds serialization and a producer-start check that
    yields to the event loop three times per message; our values are bytes
    already, and this is the hot path of every step.
    """

    def __init__(self, app: faust.App, name: str) -> None:
        self.app = app
        self.name = name

    async def send(
        self,
        *,
        key: bytes | None,
        value: bytes,
        partition: int | None = None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> None:
        # returns once the record is buffered; the flush before each commit waits for it
        await self.app.producer.send(self.name, key, value, partition, None, headers)


def partition_for(workflow_id: str, partitions: int) -> int:
    """The partition Kafka's default partitioner picks for a workflow id (murmur2)."""
    hashed: int = murmur2(workflow_id.encode())
    return (hashed & 0x7FFFFFFF) % partitions


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
        self.run_activities = run_activities
        self._cache: OrderedDict[str, Run] = OrderedDict()
        self._owned: set[int] = set()
        self._resumed: set[str] = set()
        self._task_partitions: set[int] = set()
        # owned partitions left out of an assignment since the last rebalance completed
        self._lapsed: set[int] = set()
        self._task_lapsed: set[int] = set()
        self._stopping = False
        self._generation_topics: dict[int, Any] = {}
        self._fired: dict[tuple[str, int, int | None], float] = {}
        self._pool = ThreadPoolExecutor(settings.activity_threads, "activity")
        self._inflight: set[asyncio.Future[None]] = set()
        self.app = self._build_app()
        self.activity_app = self._build_activity_app() if run_activities else None

    # -- the Faust apps --------------------------------------------------------------
    def _new_app(self, app_id: str, web_port: int) -> faust.App:
        s = self.settings
        os.makedirs(s.data_dir, exist_ok=True)  # Faust creates only the last level
        app = faust.App(
            app_id,
            datadir=os.path.join(s.data_dir, app_id),
            broker=[f"kafka://{server.strip()}" for server in s.bootstrap_servers.split(",")],
            store="memory://",
            processing_guarantee="at_least_once",
            topic_partitions=s.partitions,
            topic_replication_factor=s.replication,
            broker_session_timeout=s.session_timeout,
            broker_heartbeat_interval=s.heartbeat_interval,
            broker_rebalance_timeout=s.rebalance_timeout,
            broker_commit_interval=s.commit_interval,
            broker_request_timeout=max(90.0, s.session_timeout * 2),
            consumer_auto_offset_reset="earliest",
            table_standby_replicas=0,
            web_enabled=web_port != 0,
            web_port=web_port or 6066,
            stream_buffer_maxsize=s.stream_buffer,
            # Stopping must not wait for every taken message to be acked: one left
            # unacked (an activity task taken while draining) would wait forever;
            # what is not committed goes to the next owner.
            stream_wait_empty=False,
            # run headers repeat the latest events: leave room for large payloads
            producer_max_request_size=16 * 1024 * 1024,
        )
        setattr(app, _FETCH_WAIT_ATTR, s.fetch_wait_ms)
        return app

    def _raw_topic(self, app: faust.App, name: str) -> TopicT:
        s = self.settings
        return app.topic(
            name,
            partitions=s.partitions,
            replicas=s.replication,
            key_type=bytes,
            value_type=bytes,
            key_serializer="raw",
            value_serializer="raw",
        )

    @staticmethod
    def _table(
        app: faust.App, topic: str, decode: Callable[[bytes], Any] | None = None
    ) -> ChangelogTable:
        async def send(
            topic: str, key: bytes, value: bytes | None, partition: int
        ) -> Awaitable[Any]:
            # buffered; the flush before each offset commit waits for it
            return await app.producer.send(topic, key, value, partition, None, None)

        return ChangelogTable(topic, send, decode)

    def _build_app(self) -> faust.App:
        """The executor partitions: one consumer group on the commands topic."""
        s, topo = self.settings, self.topology
        app = self._new_app(topo.faust_id, s.web_port)
        self.commands = self._raw_topic(app, topo.commands)
        self.commands_out = Outbox(app, topo.commands)
        self.history = Outbox(app, topo.history)
        self.replies = Outbox(app, topo.replies)
        self.dead_letter = Outbox(app, topo.dead_letter)
        self.tasks = Outbox(app, topo.activity_tasks(s.task_queue))
        self.runs_table = self._table(app, topo.changelog("workflows"))
        self.history_table = self._table(app, topo.changelog("history"))
        self.timers_table = self._table(app, topo.changelog("timers"), json.loads)
        if self.run_executor:
            app.agent(self.commands, name=f"{topo.faust_id}.executor")(self._executor_agent)
            app.timer(s.timer_tick, name=f"{topo.faust_id}.timers")(self._fire_timers)
            app.on_rebalance_complete.connect(self._on_rebalance_complete)
            app.on_partitions_assigned.connect(self._on_partitions_assigned)
        return app

    def _build_activity_app(self) -> faust.App:
        """The activity workers of one task queue: their own consumer group.

        A separate group, so that activity-only workers never own executor
        partitions, and executor-only workers never run activities.
        """
        s, topo = self.settings, self.topology
        app = self._new_app(topo.activity_group(s.task_queue), 0)
        self.activity_tasks = self._raw_topic(app, topo.activity_tasks(s.task_queue))
        self.activity_results = Outbox(app, topo.commands)
        self.task_dead_letter = Outbox(app, topo.dead_letter)
        self.done_table = self._table(
            app, topo.changelog("done-tasks", topo.activity_group(s.task_queue))
        )
        app.on_rebalance_complete.connect(self._on_activities_rebalanced)
        app.on_partitions_assigned.connect(self._on_task_partitions_assigned)
        app.agent(
            self.activity_tasks,
            name=f"{topo.faust_id}.activities",
            concurrency=s.activity_concurrency,
        )(self._activity_agent)
        return app

    @property
    def apps(self) -> list[faust.App]:
        apps = [self.app] if self.run_executor else []
        if self.activity_app is not None:
            apps.append(self.activity_app)
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
        self._stopping = True
        if self._inflight:
            # Let running activities finish and report: a thread cannot be called
            # back, so an attempt cut short here would still have run once.
            _, late = await asyncio.wait(self._inflight, timeout=self.settings.drain_timeout)
            for task in late:
                task.cancel()
        for app in self.apps:
            # write out what was processed so that a restart finds it in the changelogs
            with contextlib.suppress(Exception):
                await asyncio.wait_for(app.producer.flush(), self.settings.request_timeout)
            await app.stop()
        self._pool.shutdown(wait=False, cancel_futures=True)
        for run in self._cache.values():
            run.close()
        self._cache.clear()

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
                        event, f"internal error while applying the command: {exc!r}"[:500]
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
        run = self._load(cmd.workflow_id)
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
            self._remember(run)
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
            cmd.kind == CommandKind.RESUME or self._moved_partition(partition) is None
        ):
            return None
        if run is not None and run.moved_to is not None:
            return run.moved_to, cmd.route  # handed over: its new owner decides
        moved = self._moved_partition(partition)
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

    def _moved_partition(self, partition: int) -> int | None:
        raw = self.runs_table.get(_MOVED_KEY + str(partition).encode())
        return None if raw is None else int(raw)

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

    def _commands_of(self, generation: int) -> Any:
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
        await self.runs_table.set(
            _MOVED_KEY + str(partition).encode(), str(target).encode(), partition
        )
        moved = 0
        for key, raw in list(self.runs_table.items()):
            if key.startswith(_MOVED_KEY):
                continue
            header = json.loads(raw)
            if header["p"] != partition or header.get("moved") is not None:
                continue
            if header["state"]["status"] != "running":
                continue
            wid = key.decode()
            run = self._load(wid)
            if run is None:
                continue
            handover = Command(
                command_id=f"handover/{wid}/{run.state.run_id[:8]}/{target}",
                kind=CommandKind.HANDOVER,
                workflow_id=wid,
                issued_at=_now(),
                payload={
                    "header": json.loads(self._header(run, partition)),
                    "history": [e.model_dump(mode="json") for e in run.state.history],
                },
                step=target,
            )
            await self._commands_of(target).send(key=key, value=encode_command(handover))
            run.moved_to = target
            run.close()
            await self.runs_table.set(key, self._header(run, partition), partition)
            await self.timers_table.delete(key, partition)
            self._cache.pop(wid, None)
            moved += 1
        log.info(
            "partition %s moved to generation %s: %d running workflows handed over",
            partition,
            target,
            moved,
        )

    async def _import(self, cmd: Command, partition: int) -> None:
        """Take over a run handed over by the previous generation."""
        if self._load(cmd.workflow_id) is not None:
            return  # a redelivered handover
        data = cmd.payload
        header = data["header"]
        state = WorkflowState.model_validate({**header["state"], "history": data["history"]})
        run = Run(state=state, start_command=header.get("start"))
        run.seen.extend(header.get("seen", []))
        for event in state.history:
            key = f"{cmd.workflow_id}#{event.id}".encode()
            await self.history_table.set(key, event.model_dump_json().encode(), partition)
        run.archived = len(state.history)
        self._resumed.add(cmd.workflow_id)
        self.metrics.replays.inc()
        resume = dataclasses.replace(cmd, kind=CommandKind.RESUME, payload=None)
        handled, fx = self.machine.handle(run, resume)
        assert handled is not None
        run = handled
        fx.started = True  # the header must be written here
        await self._write(run, fx, partition, cmd)
        self._remember(run)

    async def _write(self, run: Run, fx: Effects, partition: int, cmd: Command) -> None:
        state = run.state
        wid = state.workflow_id
        run.partition = partition
        if fx.changed:
            await self._archive(run)
            await self.runs_table.set(wid.encode(), self._header(run, partition), partition)
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
        await self._write_timers(run, partition)
        if run.parked is not None:
            self.metrics.parked.inc()

    def _observe_lag(self, message: Any) -> None:
        with contextlib.suppress(Exception):  # highwater is unknown before the first fetch
            tp = message.tp
            highwater = self.app.consumer.highwater(tp)
            if highwater is not None:
                lag = max(0, highwater - message.offset - 1)
                self.metrics.consumer_lag.labels(str(tp.partition)).set(lag)

    async def _write_timers(self, run: Run, partition: int) -> None:
        wid = run.state.workflow_id
        wanted = self.machine.pending_timers(run)
        key = wid.encode()
        current = self.timers_table.get(key)
        value = (
            json.dumps(
                {
                    "p": partition,
                    "run": run.state.run_id,
                    "timers": [[t.step, t.due, t.attempt] for t in wanted.values()],
                }
            ).encode()
            if wanted
            else None
        )
        if value != current:
            if value is None:
                await self.timers_table.delete(key, partition)
            else:
                await self.timers_table.set(key, value, partition)

    async def _archive(self, run: Run) -> None:
        """Move the oldest events of a full header tail to the history table.

        Recent events travel only in the header (one atomic write per step).
        When the tail holds ``2 * _TAIL`` events (or ``_TAIL_BYTES`` of JSON),
        all but the last ``_TAIL`` go to the history table, and the producer is
        flushed before the header that drops them is written: a header never
        points at an event whose record might be lost. One flush per ``_TAIL``
        steps.
        """
        history = run.state.history
        tail = history[run.archived :]
        size = sum(len(run.encoded.get(e.id, "")) for e in tail)
        if len(tail) < 2 * _TAIL and (len(tail) <= 1 or size <= _TAIL_BYTES):
            return
        keep = min(_TAIL, len(tail) - 1)
        wid = run.state.workflow_id
        assert run.partition is not None
        for event in history[run.archived : len(history) - keep]:
            await self.history_table.set(
                f"{wid}#{event.id}".encode(), event.model_dump_json().encode(), run.partition
            )
        await self.app.producer.flush()
        run.archived = len(history) - keep
        run.encoded = {i: v for i, v in run.encoded.items() if i > run.archived}

    @staticmethod
    def _header(run: Run, partition: int) -> bytes:
        header = run.state.model_dump(mode="json", exclude={"history"})
        history = run.state.history
        fields = json.dumps(
            {
                "state": header,
                "events": len(history),
                "seen": list(run.seen),
                "start": run.start_command,
                "p": partition,
                "moved": run.moved_to,
            }
        )
        # The latest events ride along in the header's own (atomic) write; each is
        # serialized once and kept, as it is repeated in every header until archived.
        encoded = run.encoded
        for event in history[run.archived :]:
            if event.id not in encoded:
                encoded[event.id] = event.model_dump_json()
        tail = ",".join(encoded[e.id] for e in history[run.archived :])
        return f'{fields[:-1]}, "tail": [{tail}]}}'.encode()

    def _load(self, workflow_id: str) -> Run | None:
        run = self._cache.get(workflow_id)
        if run is not None:
            self._cache.move_to_end(workflow_id)
            self.metrics.cache.labels("hit").inc()
            return run
        self.metrics.cache.labels("miss").inc()
        raw = self.runs_table.get(workflow_id.encode())
        if raw is None:
            return None
        run = self._decode_run(workflow_id, raw)
        if run.running and run.moved_to is None:
            self.metrics.replays.inc()
            self.machine.restore(run)
        self._remember(run)
        return run

    def _decode_run(self, workflow_id: str, raw: bytes) -> Run:
        header = json.loads(raw)
        count = header["events"]
        tail = header.get("tail", [])
        first_tail = count - len(tail) + 1
        events = []
        for i in range(1, count + 1):
            if i >= first_tail:
                events.append(tail[i - first_tail])
                continue
            data = self.history_table.get(f"{workflow_id}#{i}".encode())
            if data is None:
                raise RuntimeError(f"event {i} of {workflow_id!r} is missing from the table")
            events.append(json.loads(data))
        state = WorkflowState.model_validate({**header["state"], "history": events})
        run = Run(
            state=state,
            start_command=header.get("start"),
            moved_to=header.get("moved"),
            partition=header.get("p"),
            archived=count - len(tail),
        )
        run.seen.extend(header.get("seen", []))
        return run

    def _remember(self, run: Run) -> None:
        wid = run.state.workflow_id
        self._cache[wid] = run
        self._cache.move_to_end(wid)
        while len(self._cache) > self.settings.cache_size:
            _, old = self._cache.popitem(last=False)
            old.close()
        self.metrics.cached_runs.set(len(self._cache))

    async def _dead_letter(self, event: Any, reason: str, topic: Any = None) -> None:
        message = event.message
        log.warning(
            "dead letter from %s[%s]@%s: %s",
            message.topic,
            message.partition,
            message.offset,
            reason,
        )
        self.metrics.dead_letters.labels(reason.split(":")[0][:60]).inc()
        await (topic or self.dead_letter).send(
            key=event.key,
            value=encode_dead_letter(
                reason, message.topic, message.partition, message.offset, event.value
            ),
            headers=[("reason", reason.encode()[:1000])],
        )

    # -- rebalances --------------------------------------------------------------------
    def _active_partitions(self) -> set[int]:
        return self._partitions(self.app.consumer.assignment(), self.topology.commands)

    @staticmethod
    def _partitions(tps: Iterable[TP], topic: str) -> set[int]:
        return {tp.partition for tp in tps if tp.topic == topic}

    # A rebalance revokes every partition and then assigns; one may follow another
    # before the streams resume. A partition this worker keeps across it keeps its
    # tables, cache and resumed runs: no other worker had it. One that was left out
    # of any assignment in between may have been worked on elsewhere: it is read
    # again, like a partition gained.
    async def _on_partitions_assigned(self, sender: Any, /, *args: Any, **kwargs: Any) -> None:
        # Faust signal handlers get (sender, *args, signal=..., **kwargs); args[0] is
        # the set of partitions assigned.
        assigned = self._partitions(args[0], self.topology.commands)
        self._lapsed |= self._owned - assigned

    def _forget(self, partitions: set[int]) -> None:
        """Drop what this worker holds of ``partitions``: it is not (or no longer) current."""
        if not partitions:
            return
        for wid, run in list(self._cache.items()):
            if self._partition_of(wid) in partitions:
                run.close()
                del self._cache[wid]
        self._resumed = {w for w in self._resumed if self._partition_of(w) not in partitions}
        for table in (self.runs_table, self.history_table, self.timers_table):
            table.drop(partitions)
        self._owned -= partitions

    def _partition_of(self, workflow_id: str) -> int | None:
        raw = None if workflow_id.startswith("\x00") else self.runs_table.get(workflow_id.encode())
        return None if raw is None else int(json.loads(raw)["p"])

    async def _recover(self, tables: list[ChangelogTable], partitions: set[int]) -> None:
        s = self.settings
        started = time.monotonic()
        read = await recover(
            s.bootstrap_servers,
            tables,
            partitions,
            fetch_wait_ms=s.fetch_wait_ms,
            timeout=s.rebalance_timeout * 6,
        )
        log.info(
            "recovered partitions %s of %s: %d records in %.2fs",
            sorted(partitions),
            ", ".join(t.topic for t in tables),
            read,
            time.monotonic() - started,
        )

    async def _on_task_partitions_assigned(self, sender: Any, /, *args: Any, **kwargs: Any) -> None:
        queue = self.topology.activity_tasks(self.settings.task_queue)
        self._task_lapsed |= self._task_partitions - self._partitions(args[0], queue)

    async def _on_activities_rebalanced(self, sender: Any, /, *args: Any, **kwargs: Any) -> None:
        assert self.activity_app is not None
        queue = self.topology.activity_tasks(self.settings.task_queue)
        active = self._partitions(self.activity_app.consumer.assignment(), queue)
        stale = (self._task_partitions - active) | (active & self._task_lapsed)
        self._task_lapsed = set()
        self.done_table.drop(stale)
        gained = active - (self._task_partitions - stale)
        self._task_partitions = active
        await self._recover([self.done_table], gained)

    async def _on_rebalance_complete(self, sender: Any, /, *args: Any, **kwargs: Any) -> None:
        active = self._active_partitions()
        self._forget((self._owned - active) | (active & self._lapsed))
        self._lapsed = set()
        await self._recover(
            [self.runs_table, self.history_table, self.timers_table], active - self._owned
        )
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
        for key, raw in list(self.runs_table.items()):
            if key.startswith(_MOVED_KEY):
                continue
            wid = key.decode()
            if wid in self._resumed:
                continue
            header = json.loads(raw)
            if header["p"] not in active or header["state"]["status"] != "running":
                continue
            if header.get("moved") is not None:
                continue
            self._resumed.add(wid)
            self._cache.pop(wid, None)
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
        for key, entry in self.timers_table.decoded_items():
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

    # -- activities --------------------------------------------------------------------
    async def _activity_agent(self, stream: Any) -> None:
        async for event in stream.events():
            if self._stopping:
                return  # not acked: the next owner runs it
            try:
                task = decode_task(event.value)
            except (WireError, InvalidCommandError) as exc:
                await self._dead_letter(event, f"bad activity task: {exc}", self.task_dead_letter)
                continue
            handling = asyncio.ensure_future(self._handle_task(task, event.message.partition))
            self._inflight.add(handling)
            handling.add_done_callback(self._inflight.discard)
            try:
                # shielded: a stop lets it finish (stop() waits for it) while this
                # agent is cancelled
                await asyncio.shield(handling)
            except asyncio.CancelledError:
                if self._stopping:
                    return  # not acked: the task is redelivered to the next owner
                raise

    async def _handle_task(self, task: Task, partition: int) -> None:
        key = task.task_id.encode()
        done = self.done_table.get(key)
        if done is None:
            done = await self._run_task(task)
            # The outcome is durable before it is published: a task redelivered
            # after a crash, or dispatched again by a new executor owner, then
            # publishes the same outcome again instead of running a second time.
            await (await self.done_table.set(key, done, partition))
        await self.activity_results.send(key=task.workflow_id.encode(), value=done)

    async def _run_task(self, task: Task) -> bytes:
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
                issued_at=_now(),
                payload=result,
                run_id=task.run_id,
                step=task.step,
                attempt=task.attempt,
                duration=duration,
                failure=failure,
            )
        )


def new_command_id() -> str:
    return uuid.uuid4().hex
