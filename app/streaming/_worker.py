"""The streaming worker: consumer group members that are the executor partitions.

- The executor consumes the commands topic. Each partition it owns
  is an executor partition, sole owner of the workflows keyed to it. For each
  command it loads the run (:mod:`._runs`: from its cache, else from the
  ``workflows`` and ``history`` tables, replaying the history), lets the
  :class:`Machine` decide, and writes the effects: the run's header and new events to the
  tables (compacted changelogs, co-partitioned with the commands), the events
  to the history topic, activity tasks to the task queue's topic, timers to
  the ``timers`` table, and the reply to the replies topic.
- The activity runner (:mod:`._activities`) consumes the activity tasks
  and publishes each outcome as an ``activity_result`` command; the
  ``done-tasks`` table keeps a redelivered task that already finished from
  running again.
- A timer loop fires the due timers of the partitions this worker owns, as
  ``timer_fired`` commands.

Delivery is at-least-once (:mod:`._consumer`): an offset is committed only
after the producer acknowledged everything the commands before it produced;
a redelivered command is dropped by its id (or, for engine commands, by the
run's step and attempt). After a rebalance the new owner resumes its
workflows: it replays them and dispatches their pending activity attempts
again (the ``done-tasks`` table turns the repeat of a finished one into a
no-op), and an attempt pending too long is sent again (:mod:`._pending`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Sequence
from datetime import UTC, datetime
from typing import TypeVar

from aiokafka.errors import KafkaError

from app.workflow._activity_runner import heartbeat_timeout_failure
from app.workflow._codec import PayloadCodec, PayloadCodecError, as_chain
from app.workflow._names import FunctionTable, Registrable
from app.workflow._schedules import scheduler
from app.workflow._tasks import cancel_and_wait

from ._activation import Activations
from ._activities import ActivityWorker
from ._codec import WireCodec, codec_from_settings
from ._consumer import DeliveryError, GroupConsumer, Producer, Record
from ._eager import EagerAttempts
from ._machine import Command, CommandKind, Machine, Reply, Run
from ._messages import InvalidCommandError, encode_command
from ._metrics import WorkerMetrics
from ._outputs import Outbox, recover_tables, to_dead_letter
from ._pending import PendingAttempts, PendingStarts
from ._runs import RunStore
from ._wire import WireError
from .settings import StreamingSettings

log = logging.getLogger("app.streaming.worker")

OWNED = "executor partitions owned"
T = TypeVar("T")


def _now() -> datetime:
    return datetime.now(UTC)


class StreamingWorker(Activations):
    """One worker process's share of the engine: executor partitions and/or activities.

    Args:
        settings: broker, topology and timings.
        workflows: workflow functions this worker can run (or name → function).
        activities: activity functions this worker can run.
        run_executor: consume the commands topic (own executor partitions).
        run_activities: consume the activity tasks of ``settings.task_queue``.
        codec: encodes the payloads this worker writes to topics and tables and
            decodes what it reads; by default the one ``STREAMFLOW_CODEC_KEY_FILE``
            and ``STREAMFLOW_COMPRESS_THRESHOLD`` make. A record it cannot decode
            (no key, an unknown key id) is not dead-lettered: see ``docs/codec.md``.
    """

    def __init__(
        self,
        settings: StreamingSettings,
        workflows: Registrable = (),
        activities: Registrable = (),
        *,
        run_executor: bool = True,
        run_activities: bool = True,
        codec: PayloadCodec | Sequence[PayloadCodec] | None = None,
    ) -> None:
        chain = as_chain(codec, "codec")
        self.settings = settings
        self.wire = WireCodec(chain if chain is not None else codec_from_settings(settings))
        self.topology = topo = settings.topology
        self.workflows = FunctionTable("workflow", workflows)
        self.workflows.add(scheduler)  # schedules are workflows of the engine's own
        self.activities = FunctionTable("activity", activities, "activities")
        self.machine = Machine(self.workflows, self.activities)
        self.metrics = WorkerMetrics()
        self.run_executor = run_executor
        self._owned: set[int] = set()
        self._generation_topics: dict[int, Outbox] = {}
        self._fired: dict[tuple[str, int, int | None], float] = {}
        self._timer_task: asyncio.Task[None] | None = None
        self._started = False
        self.attempts = PendingAttempts(settings.redrive_after, settings.redrive_max)
        self.starts = PendingStarts(settings.redrive_after, settings.redrive_max)
        self.producer = Producer(settings, f"{topo.executor_group}.executor")
        self.commands_out = Outbox(self.producer, topo.commands)
        self.history = Outbox(self.producer, topo.history)
        self.replies = Outbox(self.producer, topo.replies)
        self.dead_letter = Outbox(self.producer, topo.dead_letter)
        self.tasks = Outbox(self.producer, topo.activity_tasks(settings.task_queue))
        self.store = RunStore(
            self.producer, topo, self.machine, self.metrics, settings.cache_size, self.wire.payloads
        )
        self.consumer = GroupConsumer(
            settings, topo.executor_group, topo.commands, self, self.producer
        )
        self.consumer.on_record = self._observe_lag
        self.activity_worker = (
            ActivityWorker(settings, self.activities, self.metrics, self.wire)
            if run_activities
            else None
        )
        self.eager = (
            EagerAttempts(
                self.activity_worker,
                self.consumer,
                settings.eager_activities,
                self._apply_results,
                self._publish,
                self._release,
            )
            if settings.eager_activities > 0 and run_executor and self.activity_worker is not None
            else None
        )

    @property
    def consumers(self) -> list[GroupConsumer]:
        """The consumer group members this worker runs."""
        out = [self.consumer] if self.run_executor else []
        if self.activity_worker is not None:
            out.append(self.activity_worker.consumer)
        return out

    @property
    def ready(self) -> bool:
        """Every group joined and every partition assigned read back."""
        return self._started and all(c.ready for c in self.consumers)

    def status(self) -> list[str]:
        """A line per consumer group member: where it is (for /readyz)."""
        return [c.status() for c in self.consumers]

    async def start(self) -> None:
        """Connect and join the groups; partitions are handled once assigned and read."""
        try:
            if self.run_executor:
                await self.producer.start()
                await self.consumer.start()
                self._timer_task = asyncio.create_task(self._timer_loop(), name="timers")
            if self.activity_worker is not None:
                await self.activity_worker.start()
        except BaseException:
            await self.stop()
            raise
        self._started = True

    async def stop(self) -> None:
        """Stop consuming.

        Running activities may finish and report for ``drain_timeout``; those
        still running then are cancelled, and tasks not yet acknowledged run on
        the next owner.
        """
        self._started = False
        await cancel_and_wait([self._timer_task])
        self._timer_task = None
        if self.eager is not None:
            await self.eager.stop(self.settings.drain_timeout)
        if self.activity_worker is not None:
            await self.activity_worker.stop()
        if self.run_executor:
            await self.consumer.stop()
            await self.producer.stop()
        self.store.close()

    # -- partitions (called by the consumer) ------------------------------------------
    async def gain(self, partitions: set[int]) -> None:
        """Read the tables of ``partitions``, then resume their running workflows."""
        await recover_tables(self.settings, self.store.tables, partitions)
        self._owned |= partitions
        log.info("%s: %s", OWNED, sorted(self._owned))
        await self._resume_runs(partitions)

    def lose(self, partitions: set[int]) -> None:
        """Forget ``partitions``: their next owner reads them from the changelogs."""
        self.store.forget(partitions)
        self.attempts.forget(partitions)
        self.starts.forget(partitions)
        for p in partitions:
            for gauge in (self.metrics.oldest_attempt, self.metrics.oldest_timer):
                with contextlib.suppress(KeyError):
                    gauge.remove(str(p))
            with contextlib.suppress(KeyError):
                self.metrics.consumer_lag.remove(str(p))
        if self._owned & partitions:
            self._owned -= partitions
            log.info("%s: %s", OWNED, sorted(self._owned))

    async def handle(self, record: Record) -> None:
        """Apply one command; what cannot be applied goes to the dead-letter topic."""
        await self._guarded(record, self._on_command(record))

    async def handle_many(self, records: list[Record]) -> None:
        """Apply a partition's records taken together, in order.

        The activity results among them are held per workflow and applied
        together in one activation (one header write), after the workflow's
        commands before them and before its other commands after them.
        """
        held: dict[str, list[tuple[Record, Command]]] = {}
        for record in records:
            cmd = await self._guarded(record, self._decode(record))
            if cmd is None:
                continue
            if cmd.kind == CommandKind.ACTIVITY_RESULT:
                held.setdefault(cmd.workflow_id, []).append((record, cmd))
                continue
            earlier = held.pop(cmd.workflow_id, None)
            if earlier:
                await self._apply_held(earlier)
            await self._guarded(record, self._apply(cmd, record.partition, record))
        for group in held.values():
            await self._apply_held(group)

    async def _apply_held(self, group: list[tuple[Record, Command]]) -> None:
        first = group[0][0]
        if len(group) > 1:
            try:
                if await self._apply_batch(first.partition, [cmd for _, cmd in group]):
                    return
            except (KafkaError, DeliveryError):
                raise
            except Exception:
                log.exception("results at %s@%s... failed together", first.partition, first.offset)
                run = self.store.cache.pop(group[0][1].workflow_id, None)
                if run is not None:
                    run.close()  # read again from the tables: each is applied on its own
        for record, cmd in group:  # one by one, through the usual checks
            await self._guarded(record, self._apply(cmd, record.partition, record))

    async def _guarded(self, record: Record, work: Awaitable[T]) -> T | None:
        """``work``'s value; None when the record went to the dead-letter topic instead."""
        try:
            return await work
        except (KafkaError, DeliveryError):
            raise  # the broker failed us: the consumer goes back to the last commit
        except PayloadCodecError as exc:
            # Not the command's fault but this worker's (no key, an old key missing): a
            # dead letter would lose it. Left uncommitted, it is read again after a rewind.
            log.error(
                "command at %s@%s cannot be decoded by this worker: %s",
                record.partition,
                record.offset,
                exc,
            )
            raise
        except Exception as exc:
            # A bug must not stop the partition: the command is kept with the reason.
            log.exception("command at %s@%s failed", record.partition, record.offset)
            await self._dead_letter(
                record, f"internal error while applying the command: {exc!r}"[:500]
            )
            return None

    # -- executor partitions ---------------------------------------------------------
    async def _on_command(self, record: Record) -> None:
        cmd = await self._decode(record)
        if cmd is not None:
            await self._apply(cmd, record.partition, record)

    async def _decode(self, record: Record) -> Command | None:
        """The record's command, or None when it went to the dead-letter topic."""
        if record.key is None:
            await self._dead_letter(
                record,
                "command has no key: commands must be keyed by workflow id so that "
                "one partition owns each workflow",
            )
            return None
        try:
            cmd = await self.wire.command_in(record.value, record.key)
        except (WireError, InvalidCommandError) as exc:
            await self._dead_letter(record, str(exc))
            return None
        log.debug(
            "command %s %s for %s at %s@%s",
            cmd.kind,
            cmd.command_id,
            cmd.workflow_id,
            record.partition,
            record.offset,
        )
        return cmd

    async def _apply(self, cmd: Command, partition: int, record: Record) -> None:
        if cmd.kind == CommandKind.MIGRATE:
            await self._migrate(cmd, partition)
            return
        if cmd.kind == CommandKind.HANDOVER:
            await self._import(cmd, partition)
            return
        run = await self.store.load(cmd.workflow_id)
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
        if cmd.kind == CommandKind.HEARTBEAT:
            await self._on_heartbeat(run, cmd)
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
            await self._dead_letter(record, f"{cmd.kind} names an {reason}", cmd.workflow_id)
        before_status = run.state.status if run is not None else None
        run, fx = self._handle(run, cmd)
        await self._effects(run, fx, partition, cmd, before_status)

    async def _on_heartbeat(self, run: Run | None, cmd: Command) -> None:
        """An activity worker's heartbeat: move the attempt's deadline, or say it is not wanted."""
        step, attempt = cmd.step, cmd.attempt
        assert step is not None  # checked when decoded
        wid = cmd.workflow_id
        if attempt is not None and self.attempts.heartbeat(wid, step, attempt, cmd.payload):
            return
        wanted = False
        if run is not None and run.running and run.state.run_id == cmd.run_id:
            self.machine.restore(run)
            # pending, but not indexed yet here (a resume after a takeover is on its way)
            pending = self.machine.pending_tasks(run)
            wanted = any((t.step, t.attempt) == (step, attempt) for t in pending)
        if wanted or not cmd.reply_to:
            return
        why = (
            f"the workflow is {run.state.status.value}"
            if run is not None and not run.running
            else "the workflow no longer waits for this attempt"
        )
        reply = Reply(ok=False, error_type="cancelled", error=why)
        await self.replies.send(
            key=cmd.reply_to.encode(),
            value=await self.wire.reply_out(cmd.command_id, cmd.reply_to, wid, reply),
        )

    def _observe_lag(self, record: Record) -> None:
        highwater = self.consumer.highwater(record.partition)
        if highwater is not None:
            lag = max(0, highwater - record.offset - 1)
            self.metrics.consumer_lag.labels(str(record.partition)).set(lag)

    async def _dead_letter(self, record: Record, reason: str, workflow_id: str = "") -> None:
        if not workflow_id and record.key:
            workflow_id = record.key.decode(errors="replace")
        await to_dead_letter(self.dead_letter, self.metrics, record, reason, workflow_id)

    # -- resuming ----------------------------------------------------------------------
    async def _resume_runs(self, partitions: set[int]) -> None:
        """Resume the running workflows of ``partitions``, just gained.

        Through the commands topic, so each resume is applied in order with the
        workflow's other commands, in the partition's own stream.
        """
        resumed = []
        for key, header in self.store.headers():
            if header["p"] not in partitions or header["state"]["status"] != "running":
                continue
            if header.get("moved") is not None:
                continue
            wid = key.decode()
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
            log.info(
                "resuming %d running workflows on partitions %s: %s",
                len(resumed),
                sorted(partitions),
                ", ".join(resumed[:50]) + (" ..." if len(resumed) > 50 else ""),
            )

    # -- timers and re-drives ------------------------------------------------------------
    async def _timer_loop(self) -> None:
        last_redrive = last_gauges = 0.0
        while True:
            await asyncio.sleep(self.settings.timer_tick)
            try:
                await self._fire_timers()
                await self._missed_heartbeats()
                now = time.monotonic()
                if now - last_redrive >= min(1.0, self.settings.redrive_after / 4):
                    last_redrive = now
                    await self._redrive()
                if now - last_gauges >= 1.0:
                    last_gauges = now
                    self._update_ages()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("the timer loop failed; it goes on")

    async def _redrive(self) -> None:
        """Send again the task of every attempt pending past its deadline."""
        now = _now()
        for attempt in self.attempts.due(self.consumer.owned):
            task = attempt.task
            queue = self.tasks
            if attempt.inherited:
                # its result is known to the previous generation's done-tasks table
                queue = self._tasks_of(self.settings.generation - 1)
            log.warning(
                "re-driving %s: attempt %s of step %s (%s) still pending %.1fs after it "
                "started; its task is sent again (re-drive %d)",
                task.workflow_id,
                task.attempt,
                task.step,
                task.activity_name,
                time.time() - attempt.started,
                attempt.redrives,
            )
            self.metrics.redrives.inc()
            task = self._with_details(task)
            await queue.send(key=task.task_id.encode(), value=await self.wire.task_out(task, now))
        for start in self.starts.due(self.consumer.owned):
            cmd = start.command
            assert cmd.parent is not None
            log.warning(
                "re-sending the start of child workflow %s of %s (step %s, attempt %s): no "
                "answer %.1fs after it was sent (re-send %d)",
                cmd.workflow_id,
                cmd.parent.workflow_id,
                cmd.parent.step,
                cmd.parent.attempt,
                self.settings.redrive_after,
                start.redrives,
            )
            self.metrics.redrives.inc()
            await self.commands_out.send(
                key=cmd.workflow_id.encode(), value=await self.wire.command_out(cmd)
            )

    async def _missed_heartbeats(self) -> None:
        """Fail every attempt past its heartbeat timeout, through the commands topic."""
        for attempt in self.attempts.missed(self.consumer.owned, self.settings.timer_refire):
            task = attempt.task
            assert task.heartbeat_timeout is not None
            log.warning(
                "attempt %s of step %s (%s) of %s sent no heartbeat for %.1fs: it fails as "
                "timed out",
                task.attempt,
                task.step,
                task.activity_name,
                task.workflow_id,
                time.time() - (attempt.beat or attempt.started),
            )
            cmd = Command(
                command_id=f"heartbeat-timeout/{task.task_id}",
                kind=CommandKind.ACTIVITY_RESULT,
                workflow_id=task.workflow_id,
                issued_at=_now(),
                run_id=task.run_id,
                step=task.step,
                attempt=task.attempt,
                duration=time.time() - attempt.started,
                payload=self.attempts.details(task.workflow_id, task.step),
                failure=heartbeat_timeout_failure(
                    task.activity_name, task.attempt, task.heartbeat_timeout
                ),
            )
            await self.commands_out.send(
                key=task.workflow_id.encode(), value=await self.wire.command_out(cmd)
            )

    def _update_ages(self) -> None:
        now = time.time()
        owned = self.consumer.owned
        oldest_attempt = self.attempts.oldest()
        oldest_timer: dict[int, float] = {}
        for _, entry in self.store.timers.decoded_items():
            p = entry["p"]
            for _, due, _ in entry["timers"]:
                if due <= now:
                    oldest_timer[p] = min(oldest_timer.get(p, due), due)
        for p in owned:
            started = oldest_attempt.get(p)
            self.metrics.oldest_attempt.labels(str(p)).set(0 if started is None else now - started)
            due = oldest_timer.get(p)
            self.metrics.oldest_timer.labels(str(p)).set(0 if due is None else now - due)

    async def _fire_timers(self) -> None:
        active = self.consumer.owned
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
                if last is not None:
                    log.warning(
                        "re-firing timer %s of %s: fired %.1fs ago and not applied yet",
                        step,
                        wid,
                        now - last,
                    )
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
