"""What an executor partition does with one command, with no I/O.

A :class:`Run` is one workflow owned by this partition: its state (header and
history), its deterministic instance (rebuilt from history on a cache miss)
and the ids of recent client commands. :meth:`Machine.handle` turns a command
into :class:`Effects`: the history events to append, the activity attempts to
dispatch, the reply to the client. The worker writes the effects to tables and
topics; this module only decides. It follows the embedded runtime step by
step: record the input, apply it, then record the echoes of what the code
asked for (activity_started, the terminal event).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import Any

from app.workflow import _driver as driver
from app.workflow._converter import describe_failure
from app.workflow._core import (
    TERMINATED,
    Outcome,
    PendingActivity,
    PendingTimer,
    WorkflowInstance,
    reset_prefix,
    reset_state,
    terminated_failure,
)
from app.workflow._errors import (
    InvalidArgumentError,
    NonDeterminismError,
    UpdateNotFoundError,
    UpdateRejectedError,
    WorkflowError,
)
from app.workflow._names import FunctionTable
from app.workflow._types import (
    EventType,
    FailureInfo,
    HistoryEvent,
    ParentClosePolicy,
    WorkflowState,
    WorkflowStatus,
)
from app.workflow._updates import completed_update
from app.workflow._visibility import refuse_pause_change

from . import _children as children
from ._commands import Command as Command
from ._commands import CommandKind as CommandKind
from ._commands import ParentRef as ParentRef

log = logging.getLogger("app.streaming.machine")

_PAUSES = {
    CommandKind.PAUSE: EventType.WORKFLOW_PAUSED,
    CommandKind.UNPAUSE: EventType.WORKFLOW_RESUMED,
}
_CLIENT_INPUTS = (CommandKind.SIGNAL, CommandKind.CANCEL, *_PAUSES)
"""Client commands that become an input event, remembered by id and answered."""

SEEN_LIMIT = 512
"""Client command ids remembered per workflow to drop redeliveries."""

DESCRIBE = "__describe__"
"""The query that returns the whole state (header and history)."""
SUMMARY = "__summary__"
"""The query that returns the state with only its first event (what ``result()`` polls:
its size does not grow with the history)."""
STATE_QUERIES = (DESCRIBE, SUMMARY)

BUILTIN_QUERIES = ("result", "status")


@dataclass(frozen=True)
class Task:
    """An activity attempt to dispatch to the activity workers."""

    task_id: str
    workflow_id: str
    run_id: str
    activity_name: str
    step: int
    attempt: int
    input: Any
    timeout: float | None
    heartbeat_timeout: float | None = None
    heartbeat_details: Any = None
    """The last heartbeat details of an earlier attempt of this step (set by the worker)."""


@dataclass(frozen=True)
class Reply:
    """The answer to a command that asked for one."""

    ok: bool
    error_type: str | None = None
    error: str | None = None
    run_id: str | None = None
    payload: Any = None


@dataclass
class Effects:
    """What handling one command produced."""

    events: list[HistoryEvent] = field(default_factory=list)
    retries: set[int] = field(default_factory=set)
    """Ids of events after which the failed or timed-out activity is tried again."""
    tasks: list[Task] = field(default_factory=list)
    reply: Reply | None = None
    replies: list[tuple[str, str, Reply]] = field(default_factory=list)
    """Answers to earlier commands (updates that completed now): (reply_to, command_id, reply)."""
    duplicate: bool = False
    started: bool = False
    successor: Run | None = None
    """The run this command's run continued as (continue-as-new); it replaces it."""
    ended: list[tuple[str, list[HistoryEvent], set[int]]] = field(default_factory=list)
    """Runs that continued as new in this command: each one's run id, the events
    it recorded and their retry ids (``events`` and ``retries`` are the last run's)."""
    commands: list[Command] = field(default_factory=list)
    """Commands to other workflows (child starts, signals, results, closes), sent
    after the events that decided them are written."""
    local: list[Task] = field(default_factory=list)
    """Attempts of ``tasks`` the worker runs itself (eager dispatch; set by the worker)."""

    @property
    def changed(self) -> bool:
        return bool(self.events) or self.started


@dataclass
class Run:
    """A workflow owned by this partition."""

    state: WorkflowState
    instance: WorkflowInstance | None = None
    parked: str | None = None
    parked_error: WorkflowError | None = None
    seen: deque[str] = field(default_factory=lambda: deque(maxlen=SEEN_LIMIT))
    start_command: str | None = None
    moved_to: int | None = None
    """The generation this run was handed over to; commands for it are forwarded there."""
    partition: int | None = None
    """The commands partition that owns the run (where its state is written)."""
    archived: int = 0
    """Events up to this id are in the worker's history table (later ones in the header)."""
    archiving: tuple[int, list[asyncio.Future[Any]]] | None = None
    """Events up to this id written to the history table, and the acknowledgements
    of those records: once all are in, the header stops repeating the events."""
    encoded: dict[int, str] = field(default_factory=dict)
    """JSON of the events in the header's tail, by id (serialized once)."""
    sealed_input: Any = None
    """The run's input as the tables store it (encoded by the codec), once computed."""
    inherited: set[tuple[int, int]] = field(default_factory=set)
    """Attempts (step, attempt) pending at a handover from the previous generation:
    its activity workers run them, so they are never dispatched in this one."""
    update_waiters: dict[str, dict[str, str]] = field(default_factory=dict)
    """Clients waiting for a running update: update id -> {reply_to: command_id}. Kept
    in memory only: a client resends its update command until it gets the answer."""
    carried: deque[tuple[str, Any]] = field(default_factory=deque)
    """Signals handed over by the run this one continued, not recorded here yet."""
    closing: list[tuple[str, ParentClosePolicy]] = field(default_factory=list)
    ended_by: str | None = None
    """The command whose step ended the run and left ``closing`` (children to cancel
    or terminate). A copy of it, read again after a crash that lost those
    commands, sends them again (their ids are fixed, so a child applies them once)."""

    @property
    def running(self) -> bool:
        return self.state.status is WorkflowStatus.RUNNING

    def close(self) -> None:
        if self.instance is not None:
            self.instance.close()
            self.instance = None


def parked_info(err: WorkflowError | None) -> dict[str, Any] | None:
    """Why a run is stuck, in a form a client turns back into the same error."""
    if err is None:
        return None
    if isinstance(err, NonDeterminismError):
        return {
            "type": "non_determinism",
            "event_id": err.event_id,
            "expected": err.expected,
            "recorded": err.recorded,
        }
    return {"type": "error", "message": str(err)}


def parked_error(workflow_id: str, info: dict[str, Any]) -> WorkflowError:
    """The error :func:`parked_info` describes."""
    if info.get("type") == "non_determinism":
        return NonDeterminismError(
            workflow_id, int(info["event_id"]), str(info["expected"]), str(info["recorded"])
        )
    return WorkflowError(str(info.get("message", "the workflow is stuck")))


def _update_reply(run: Run, result: Any, failure: FailureInfo | None) -> Reply:
    if failure is not None:
        return Reply(
            ok=False,
            error_type="update_failed",
            error=failure.message,
            run_id=run.state.run_id,
            payload=failure.model_dump(mode="json"),
        )
    return Reply(ok=True, run_id=run.state.run_id, payload=result)


def run_id_for(command_id: str) -> str:
    """A run id derived from the start command, so a redelivered start makes the same run."""
    return hashlib.sha256(command_id.encode()).hexdigest()[:32]


def task_id(workflow_id: str, run_id: str, step: int, attempt: int) -> str:
    return f"{workflow_id}/{run_id[:8]}/{step}/{attempt}"


class Machine:
    """Decides what each command does to the workflows of one worker."""

    def __init__(
        self,
        workflows: FunctionTable,
        activities: FunctionTable,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.workflows = workflows
        self.activities = activities
        self.clock = clock or (lambda: datetime.now(UTC))

    # -- building runs ---------------------------------------------------------
    def _new_instance(self, state: WorkflowState, fn: Callable[..., Any]) -> WorkflowInstance:
        return WorkflowInstance(
            workflow_id=state.workflow_id,
            run_id=state.run_id,
            workflow_type=state.workflow_type,
            fn=fn,
            timeout=state.timeout,
            activity_namer=self.activities.name_of,
            workflow_namer=self.workflows.name_of,
        )

    def restore(self, run: Run) -> None:
        """Rebuild ``run.instance`` from its history (no effects); parks it on failure."""
        if run.instance is not None or not run.running:
            return
        fn = self.workflows.get(run.state.workflow_type)
        if fn is None:
            known = ", ".join(self.workflows.names()) or "none"
            self._park(
                run,
                WorkflowError(
                    f"workflow type {run.state.workflow_type!r} of {run.state.workflow_id!r} "
                    f"is not registered with this worker (registered: {known}); deploy a "
                    "worker whose --app module lists it"
                ),
            )
            return
        instance = self._new_instance(run.state, fn)
        instance.replaying = True
        try:
            instance.replay(run.state.history)
        except NonDeterminismError as err:
            instance.close()
            self._park(run, err)
            return
        instance.replaying = False
        run.instance = instance
        run.parked = None
        run.parked_error = None
        if run.state.error and run.state.status is WorkflowStatus.RUNNING:
            run.state.error = None

    def _resume(self, run: Run, fx: Effects) -> None:
        """Rebuild the run, record what replay left unrecorded, dispatch pending attempts."""
        self.restore(run)
        if run.instance is None:
            return
        dispatched = {t.task_id for t in self.pending_tasks(run)}
        starts = {c.command_id for c in self.child_starts(run)}
        self._input(run, None, fx)
        fx.tasks.extend(
            t
            for t in self.pending_tasks(run)
            if t.task_id in dispatched and (t.step, t.attempt) not in run.inherited
        )
        fx.commands.extend(c for c in self.child_starts(run) if c.command_id in starts)
        fx.commands.extend(self._child_signals(run))

    def child_starts(self, run: Run) -> list[Command]:
        """The starts of the children the run waits on (to send again until they answer)."""
        if run.instance is None or run.parked is not None or not run.running:
            return []
        now = self.clock()
        return [children.start(run.state, c, now) for c in run.instance.pending_children()]

    def _child_signals(self, run: Run) -> list[Command]:
        """The recorded signals to children still pending (a resume delivers them again)."""
        instance = run.instance
        if instance is None or run.parked is not None or not run.running:
            return []
        pending = {c.workflow_id for c in instance.pending_children()}
        now = self.clock()
        return [
            children.signal(run.state, sig, now)
            for sig in instance.children.signals.values()
            if sig.recorded and sig.workflow_id in pending
        ]

    def pending_tasks(self, run: Run) -> list[Task]:
        """The attempts that should be running now (to dispatch again after a takeover)."""
        if run.instance is None or run.parked is not None or not run.running:
            return []
        return [self._task(run, act) for act in run.instance.pending_activities() if act.recorded]

    def pending_timers(self, run: Run) -> dict[int, PendingTimer]:
        if run.instance is None or run.parked is not None or not run.running:
            return {}
        return run.instance.pending_timers()

    def describe_timers(self, run: Run) -> list[dict[str, Any]]:
        """The run's pending timers, in due order, for ``describe``."""
        return [
            {
                "step": t.step,
                "kind": t.kind.value,
                "due": t.due,
                "attempt": t.attempt,
                "activity": t.activity_name,
            }
            for t in sorted(self.pending_timers(run).values(), key=lambda t: t.due)
        ]

    def waiting_children(self, run: Run) -> list[dict[str, Any]]:
        """The child workflows the run waits on, for ``describe``."""
        if run.instance is None or not run.running:
            return []
        return [
            {
                "workflow_id": c.workflow_id,
                "type": c.workflow_type,
                "step": c.step,
                "attempt": c.attempt,
                "backing_off": c.backing_off,
                "command_id": children.start_id(run.state.run_id, c.step, c.attempt),
            }
            for c in sorted(run.instance.children.children.values(), key=lambda c: c.step)
        ]

    def awaited_signals(self, run: Run) -> list[str]:
        """The signal names the run's code waits on."""
        if run.instance is None or not run.running:
            return []
        return run.instance.awaited_signals()

    def backing_off(self, run: Run) -> list[dict[str, Any]]:
        """Failed attempts waiting out a retry backoff."""
        if run.instance is None or not run.running:
            return []
        return [
            {"activity": a.name, "step": a.step, "attempt": a.attempt}
            for a in run.instance.backing_off()
        ]

    # -- commands --------------------------------------------------------------
    def handle(self, run: Run | None, cmd: Command) -> tuple[Run | None, Effects]:
        """Apply ``cmd`` to ``run`` (None: the workflow is unknown here).

        The run returned replaces ``run``: a new one after a start, or after
        a continue-as-new (``fx.ended`` then holds the old run's events).
        """
        run, fx = self._handle(run, cmd)
        return fx.successor or run, fx

    def _handle(self, run: Run | None, cmd: Command) -> tuple[Run | None, Effects]:
        kind = cmd.kind
        if kind == CommandKind.START:
            return self._start(run, cmd)
        fx = Effects()
        if kind == CommandKind.QUERY:
            fx.reply = self._query(run, cmd)
            return run, fx
        if kind == CommandKind.UPDATE:
            fx.reply = self._update(run, cmd, fx)
            return run, fx
        if kind == CommandKind.RESUME:
            if run is not None and run.running:
                self._resume(run, fx)
            return run, fx
        if kind == CommandKind.RESET:
            return self._reset(run, cmd, fx)
        if run is not None and run.ended_by == cmd.command_id:
            fx.commands.extend(children.closing(run.state, run.closing, self.clock()))
        if run is not None and cmd.command_id in run.seen:
            fx.duplicate = True
            fx.reply = Reply(ok=True, run_id=run.state.run_id)
            return run, fx
        if run is None or not run.running:
            if kind in _CLIENT_INPUTS:
                action = {"unpause": "resume"}.get(kind, kind)
                fx.reply = Reply(
                    ok=False,
                    error_type="not_found",
                    error=f"cannot {action}: it is not running",
                )
            return run, fx
        if cmd.run_id is not None and cmd.run_id != run.state.run_id:
            return run, fx  # an engine command of an earlier run
        if kind == CommandKind.CANCEL and children.closes_another(run.state, cmd):
            return run, fx  # a parent closing its child, but this run is not its child
        if kind in _PAUSES:
            try:
                refuse_pause_change(run.state, _PAUSES[kind])
            except WorkflowError as exc:
                fx.reply = Reply(ok=False, error_type="invalid", error=str(exc))
                return run, fx
        if kind in _CLIENT_INPUTS:
            run.seen.append(cmd.command_id)
        self.restore(run)
        event = self._input_event(run, cmd)
        if event is not None:
            self._input(run, event, fx)
            if not run.running and run.closing:
                run.ended_by = cmd.command_id
        if kind in _CLIENT_INPUTS:
            fx.reply = Reply(ok=True, run_id=run.state.run_id)
            fx.started = True  # ``seen`` changed: the header must be written
        return run, fx

    def _reset(self, run: Run | None, cmd: Command, fx: Effects) -> tuple[Run | None, Effects]:
        """Replace the latest run by one that starts from its events up to ``cmd.step``.

        A running run is terminated first (in this command). The new run's
        history is the copied events and a ``workflow_reset``; it is rebuilt
        and resumed as after a takeover, so what the copy left running or
        pending is dispatched again.
        """
        if run is None:
            fx.reply = Reply(ok=False, error_type="not_found", error="cannot reset: not stored")
            return run, fx
        if run.start_command == cmd.command_id:  # a resend: this reset made the run
            fx.duplicate = True
            fx.reply = Reply(ok=True, run_id=run.state.run_id)
            return run, fx
        try:
            prefix = reset_prefix(run.state, cmd.step)
        except InvalidArgumentError as exc:
            fx.reply = Reply(ok=False, error_type="invalid_argument", error=str(exc))
            return run, fx
        new_run_id = run_id_for(cmd.command_id)
        reason = cmd.payload if isinstance(cmd.payload, str) else ""
        if run.running:
            self.restore(run)
            why = f"reset to event {cmd.step} as run {new_run_id}"
            ended = self._event(run, EventType.CANCEL_REQUESTED, failure=terminated_failure(why))
            self._input(run, ended, fx)
            if run.closing:
                run.ended_by = cmd.command_id
        old = run.state
        fn = self.workflows.get(old.workflow_type)
        run.close()
        state = reset_state(old, prefix, new_run_id, self.clock(), reason)
        new = Run(state=state, seen=run.seen, start_command=cmd.command_id, partition=run.partition)
        fx.ended.append((old.run_id, fx.events, fx.retries))
        fx.events, fx.retries, fx.tasks = list(state.history), set(), []
        fx.successor = new
        fx.started = True
        if fn is not None:
            self._resume(new, fx)
        else:
            self.restore(new)  # parks it, naming the type this worker lacks
        fx.reply = Reply(ok=True, run_id=new_run_id)
        return new, fx

    def _start(self, run: Run | None, cmd: Command) -> tuple[Run | None, Effects]:
        fx = Effects()
        if run is not None and run.start_command == cmd.command_id:
            fx.duplicate = True
            fx.reply = Reply(ok=True, run_id=run.state.run_id)
            if cmd.parent is not None and not run.running:
                # a parent that missed the answer asks again: the child has ended
                answer = children.result(run.state, self.clock())
                fx.commands.extend([answer] if answer is not None else [])
            return run, fx
        if run is not None and run.running:
            refused = children.refusal(
                cmd,
                f"cannot start child workflow {cmd.workflow_id!r}: a workflow of that id is "
                f"already running (run {run.state.run_id}); give the child an id of its own",
                children.ALREADY_RUNNING,
                self.clock(),
            )
            fx.commands.extend([refused] if refused is not None else [])
            fx.reply = Reply(
                ok=False,
                error_type="already_running",
                error=f"workflow {cmd.workflow_id!r} is already running",
                run_id=run.state.run_id,
            )
            return run, fx
        if run is not None:
            run.close()
        name = cmd.name or ""
        fn = self.workflows.get(name)
        if fn is None:
            known = ", ".join(self.workflows.names()) or "none"
            why = f"workflow type {name!r} is not registered with this worker (registered: {known})"
            fx.reply = Reply(ok=False, error_type="invalid", error=why)
            refused = children.refusal(
                cmd, f"cannot start child workflow: {why}", children.NOT_REGISTERED, self.clock()
            )
            fx.commands.extend([refused] if refused is not None else [])
            return run, fx
        now = self.clock()
        # a start command carries continue_as_new_suggested_after in ``step``
        started = HistoryEvent(
            id=1,
            type=EventType.WORKFLOW_STARTED,
            timestamp=now,
            input=cmd.payload,
            continue_as_new_suggested_after=cmd.step,
            search_attributes=cmd.search_attributes,
            memo=cmd.memo,
            **children.started_fields(cmd.parent),
        )
        state = WorkflowState(
            workflow_id=cmd.workflow_id,
            run_id=run_id_for(cmd.command_id),
            workflow_type=name,
            input=cmd.payload,
            timeout=cmd.timeout_seconds,
            history=[],
            created_at=now,
            updated_at=now,
        )
        new = Run(state=state, instance=self._new_instance(state, fn), start_command=cmd.command_id)
        fx.started = True
        self._input(new, started, fx)
        fx.reply = Reply(ok=True, run_id=state.run_id)
        return new, fx

    def _input_event(self, run: Run, cmd: Command) -> HistoryEvent | None:
        kind = cmd.kind
        if kind == CommandKind.SIGNAL:
            return self._event(
                run,
                EventType.SIGNAL_RECEIVED,
                signal_name=cmd.name,
                signal_payload=cmd.payload,
                sender_id=cmd.sender_id,
            )
        if kind == CommandKind.CANCEL:
            # a cancel with a Terminated failure terminates (a parent-close policy)
            failure = cmd.failure if cmd.failure and cmd.failure.type == TERMINATED else None
            return self._event(run, EventType.CANCEL_REQUESTED, failure=failure)
        if kind in _PAUSES:
            reason = cmd.payload if isinstance(cmd.payload, str) else ""
            return self._event(run, _PAUSES[kind], reason=reason)
        instance = run.instance
        if instance is None or cmd.step is None:
            return None
        if kind == CommandKind.ACTIVITY_RESULT:
            if cmd.attempt is None or not instance.is_current_attempt(cmd.step, cmd.attempt):
                return None  # a stale or redelivered result
            act = next(a for a in instance.pending_activities() if a.step == cmd.step)
            if not act.recorded:
                return None
            if cmd.failure is None:
                return self._event(
                    run,
                    EventType.ACTIVITY_COMPLETED,
                    activity_name=act.name,
                    result=cmd.payload,
                    step=cmd.step,
                    attempt=cmd.attempt,
                    duration=cmd.duration,
                )
            return self._event(
                run,
                EventType.ACTIVITY_FAILED,
                activity_name=act.name,
                # a failure the executor found (a missed heartbeat) carries the details
                heartbeat_details=cmd.payload,
                error=describe_failure(cmd.failure),
                failure=cmd.failure,
                step=cmd.step,
                attempt=cmd.attempt,
                duration=cmd.duration,
            )
        if kind == CommandKind.CHILD_RESULT:
            child = instance.children.children.get(cmd.step)
            ended = children.end_event_fields(cmd)
            if child is None or ended is None or cmd.attempt is None:
                return None
            if not instance.children.is_current(cmd.step, cmd.attempt):
                return None  # a duplicate, or the answer to an earlier attempt
            return self._event(
                run,
                ended[0],
                step=cmd.step,
                attempt=cmd.attempt,
                child_workflow_id=child.workflow_id,
                **ended[1],
            )
        if kind == CommandKind.TIMER_FIRED:
            timer = instance.pending_timers().get(cmd.step)
            if timer is None or timer.attempt != cmd.attempt:
                return None
            if timer.due > self.clock().timestamp():
                return None  # fired early by a clock that runs ahead; it fires again
            return self._event(
                run,
                EventType.TIMER_FIRED,
                step=timer.step,
                attempt=timer.attempt,
                activity_name=timer.activity_name,
                duration=timer.duration,
            )
        return None

    def _update(self, run: Run | None, cmd: Command, fx: Effects) -> Reply | None:
        """Accept, answer or wait for update ``cmd.command_id``; None: the answer comes later."""
        uid, name = cmd.command_id, cmd.name or ""
        if run is None:
            return Reply(ok=False, error_type="not_found", error="no such workflow")
        if not run.running:
            done = completed_update(run.state.history, uid)
            if done is not None:
                return _update_reply(run, done.result, done.failure)
            return Reply(
                ok=False,
                error_type="not_found",
                error=f"cannot update: it is not running (it is {run.state.status.value})",
            )
        self.restore(run)
        instance = run.instance
        if instance is None:
            return Reply(ok=False, error_type="error", error=run.parked or "the workflow is stuck")
        known = instance.update(uid)
        if known is not None and known.recorded:
            return _update_reply(run, known.result, known.failure)
        if known is None:
            try:
                instance.validate_update(name, cmd.payload)
            except UpdateNotFoundError as err:
                return Reply(
                    ok=False, error_type="update_not_found", error=str(err), payload=err.known
                )
            except UpdateRejectedError as err:
                return Reply(ok=False, error_type="update_rejected", error=err.message)
        if cmd.reply_to:
            run.update_waiters.setdefault(uid, {})[cmd.reply_to] = cmd.command_id
        if known is None:
            event = self._event(
                run,
                EventType.UPDATE_ACCEPTED,
                signal_name=name,
                signal_payload=cmd.payload,
                change_id=uid,
            )
            self._input(run, event, fx)
        return None

    def _query(self, run: Run | None, cmd: Command) -> Reply:
        name = cmd.name or ""
        if run is None:
            return Reply(ok=False, error_type="not_found", error="no such workflow")
        if name in STATE_QUERIES:
            state = run.state.model_copy()
            if name == SUMMARY:
                state.history = state.history[:1]  # it names the runs before this one
            if run.parked is not None:
                state.error = run.parked
            return Reply(
                ok=True,
                run_id=state.run_id,
                payload={
                    "state": state.model_dump(mode="json"),
                    "parked": parked_info(run.parked_error),
                },
            )
        if name == "status":
            return Reply(ok=True, run_id=run.state.run_id, payload=run.state.status.value)
        if name == "result":
            return Reply(ok=True, run_id=run.state.run_id, payload=run.state.result)
        self.restore(run) if run.running else None
        instance = run.instance
        replayed = None
        if instance is None:
            replayed = self._replay_for_query(run)
            instance = replayed
        try:
            if instance is None or name not in instance.query_names:
                known = [*BUILTIN_QUERIES, *(instance.query_names if instance else [])]
                return Reply(
                    ok=False, error_type="query_not_found", error=",".join(known), payload=known
                )
            try:
                return Reply(ok=True, run_id=run.state.run_id, payload=instance.query(name))
            except Exception as exc:
                return Reply(ok=False, error_type="query_failed", error=f"{exc}")
        finally:
            if replayed is not None:
                replayed.close()

    def _replay_for_query(self, run: Run) -> WorkflowInstance | None:
        fn = self.workflows.get(run.state.workflow_type)
        if fn is None:
            return None
        instance = self._new_instance(run.state, fn)
        instance.replaying = True
        try:
            instance.replay(run.state.history)
        except NonDeterminismError:
            instance.close()
            return None
        return instance

    # -- the step --------------------------------------------------------------
    def _event(self, run: Run, kind: EventType, **fields: Any) -> HistoryEvent:
        return HistoryEvent(
            id=len(run.state.history) + 1, type=kind, timestamp=self.clock(), **fields
        )

    def _recorded(self, run: Run, fx: Effects, events: list[HistoryEvent]) -> None:
        """The driver's write: the events go out with the command's effects."""
        fx.events.extend(events)
        for event in events:
            if event.type is EventType.UPDATE_COMPLETED and run.update_waiters:
                waiting = run.update_waiters.pop(event.change_id or "", {})
                answer = _update_reply(run, event.result, event.failure)
                fx.replies.extend((to, cid, answer) for to, cid in waiting.items())

    def _input(self, run: Run, event: HistoryEvent | None, fx: Effects) -> None:
        """One step of ``run`` through the shared driver (``app.workflow._driver``).

        Records ``event`` (an input; None: only reconcile) and the echoes it
        causes, then turns what the code asked for into effects: activity
        tasks, commands to children and parents, the next run of a chain.
        """
        instance = run.instance
        parked = run.parked is not None
        if (
            event is not None
            and instance is not None
            and not parked
            and (driver.will_retry(instance, event))
        ):
            fx.retries.add(event.id)
        steps = driver.step(run.state, instance, event, self.clock, parked=run.parked is not None)
        settled = driver.run_step_sync(steps, partial(self._recorded, run, fx))
        if settled.diverged is not None:
            self._park(run, settled.diverged)
            return
        if instance is None or run.parked is not None:
            return  # kept in history; applied when the code is fixed and the run restored
        now = self.clock()
        for echo in settled.echoes:
            if echo.type is EventType.CHILD_WORKFLOW_STARTED:
                fx.commands.append(children.start(run.state, echo, now))
            elif echo.type is EventType.CHILD_WORKFLOW_SIGNALED:
                fx.commands.append(children.signal(run.state, echo, now))
        outcome = settled.outcome
        if outcome is not None and run.state.status is not WorkflowStatus.RUNNING:
            run.closing = [
                (child_id, policy)
                for child_id, policy in instance.children.closing()
                if policy is not ParentClosePolicy.ABANDON
            ]
            fx.commands.extend(children.closing(run.state, run.closing, now))
        if outcome is not None and outcome.status is WorkflowStatus.CONTINUED_AS_NEW:
            self._continue(run, instance, outcome, fx)
        elif outcome is not None:
            answer = children.result(run.state, now)
            fx.commands.extend([answer] if answer is not None else [])
            run.close()
        else:
            fx.tasks.extend(self._task(run, act) for act in settled.new_attempts)

    def _park(self, run: Run, err: WorkflowError) -> None:
        log.error("workflow %s is stuck: %s", run.state.workflow_id, err)
        run.parked = f"{type(err).__name__}: {err}"
        run.parked_error = err
        run.state.error = run.parked
        if run.instance is not None:
            run.instance.close()
            run.instance = None

    def _continue(
        self, run: Run, instance: WorkflowInstance, outcome: Outcome, fx: Effects
    ) -> None:
        """Replace ``run``, which continued as new, by its next run (the embedded runtime's way).

        The next run starts with its workflow_started and a signal_received
        for each signal the old run did not consume; commands that follow
        this one find it in the old run's place.
        """
        old = run.state
        nxt = driver.next_run(old, instance, outcome, self.clock(), run.carried)
        run.carried.clear()
        run.close()
        fn = self.workflows.get(old.workflow_type)
        if fn is None:
            return
        new = Run(
            state=nxt.state,
            instance=self._new_instance(nxt.state, fn),
            seen=run.seen,
            start_command=run.start_command,
            partition=run.partition,
            carried=nxt.carried,
        )
        fx.ended.append((old.run_id, fx.events, fx.retries))
        fx.events, fx.retries, fx.tasks = [], set(), []
        fx.successor = new
        fx.started = True
        self._input(new, nxt.started, fx)
        # one at a time: if the new run continues as new again, the rest go on with it
        while new.carried and new.running and new.instance is not None and fx.successor is new:
            name, payload = new.carried.popleft()
            self._input(
                new,
                self._event(
                    new, EventType.SIGNAL_RECEIVED, signal_name=name, signal_payload=payload
                ),
                fx,
            )

    def _task(self, run: Run, act: PendingActivity) -> Task:
        state = run.state
        return Task(
            task_id=task_id(state.workflow_id, state.run_id, act.step, act.attempt),
            workflow_id=state.workflow_id,
            run_id=state.run_id,
            activity_name=act.name,
            step=act.step,
            attempt=act.attempt,
            input=act.input,
            timeout=act.timeout,
            heartbeat_timeout=act.heartbeat_timeout,
            heartbeat_details=act.heartbeat_details,
        )
