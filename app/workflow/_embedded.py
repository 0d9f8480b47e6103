"""The embedded runtime: :class:`DefaultExecutor`, one process, any store.

Each running workflow is a ``_Run``: its stored state, its deterministic
instance and the asyncio tasks and timers carrying out what the instance
wants. Every input (activity result, timer, signal, cancel) is handled under
the run's lock in the same order: record the event durably, apply it to the
instance, then reconcile: record the echoes of new commands (activity_started,
the terminal event) and make the running tasks and armed timers match what
the instance wants. Hooks queued meanwhile run once the lock is released. A
restart rebuilds the instance by applying the stored history (no hooks, no
side effects) and reconciles the same way, so work whose result is recorded
never runs again.
"""

from __future__ import annotations

import asyncio
import builtins
import logging
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from functools import partial
from typing import Any

from . import _driver as driver
from ._codec import PayloadCodec, as_chain
from ._codec_store import CodecStore
from ._converter import (
    check_workflow_call,
    decode_failure,
    to_payload,
)
from ._core import (
    Outcome,
    PendingTimer,
    UpdateState,
    WorkflowInstance,
    check_reason,
    reset_prefix,
    reset_state,
    terminated_failure,
)
from ._embedded_children import EmbeddedChildren
from ._embedded_work import EmbeddedWork
from ._errors import (
    InvalidArgumentError,
    NonDeterminismError,
    QueryNotFoundError,
    WorkflowAlreadyRunningError,
    WorkflowError,
    WorkflowNotFoundError,
)
from ._handle import EmbeddedHandle, failure_error, outcome_value
from ._hooks import Hooks, call_hook
from ._names import FunctionTable, Registrable
from ._payloads import Payloads
from ._schedules import ScheduleMethods, scheduler
from ._store import AppendingStore, StoreConflictError, WorkflowStore
from ._tasks import cancel_and_wait
from ._types import (
    EventType,
    HistoryEvent,
    Signal,
    WorkflowFilter,
    WorkflowOptions,
    WorkflowState,
    WorkflowStatus,
)
from ._updates import answer_of, check_update, completed_update, update_answer
from ._visibility import (
    WorkflowPage,
    WorkflowQuery,
    list_workflows,
    refuse_pause_change,
    started_template,
    status_counts,
)

log = logging.getLogger("app.workflow.embedded")

BUILTIN_QUERIES = ("result", "status")
_WRITE_RETRIES = (0.05, 0.2, 0.8)  # seconds between tries of a failed store write
_RESET_WAIT = 30.0  # seconds a reset waits for the run it terminated to end


class _Unrecorded(Exception):
    """A write of a step failed; the run is parked (see ``DefaultExecutor._step``)."""


class ExecutorStoppedError(WorkflowError):
    """The executor stopped before the workflow ended; it resumes at the next start."""


class _Run:
    """A running workflow in this executor."""

    def __init__(self, state: WorkflowState, fn: Callable[..., Any] | None) -> None:
        self.state = state
        self.fn = fn
        self.instance: WorkflowInstance | None = None
        self.lock = asyncio.Lock()
        self.activity_tasks: dict[int, tuple[int, asyncio.Task[None]]] = {}
        # a watcher per child workflow attempt (step -> attempt, task)
        self.child_tasks: dict[int, tuple[int, asyncio.Task[None]]] = {}
        # the last heartbeat details of each activity step, for its next attempt
        self.heartbeats: dict[int, Any] = {}
        self.timers: dict[int, tuple[PendingTimer, asyncio.TimerHandle]] = {}
        self.done: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        self.parked: WorkflowError | None = None
        self.stuck: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        # hook calls wait here until the run's lock is released, so a hook may call
        # the executor (signal, query, cancel) without deadlocking; FIFO keeps their order
        self.deferred: list[Callable[[], Awaitable[None]]] = []
        self.flushing = False
        # inputs handed over by tasks that do not wait for them to be recorded
        # (activity ends): one drain task records them in order, so a burst of
        # completions is a queue of small closures, not of suspended tasks
        self.inbox: deque[Callable[[_Run], HistoryEvent | None]] = deque()
        self.draining = False
        self.finished = False
        # callers of update() waiting for its update_completed, by update id
        self.updates: dict[str, asyncio.Future[HistoryEvent]] = {}
        self.loop = asyncio.get_running_loop()
        # signals handed over by the run this one continued, not recorded here yet
        self.carried: deque[tuple[str, Any]] = deque()

    @property
    def ended(self) -> bool:
        return self.finished or self.done.done()


class DefaultExecutor(ScheduleMethods):
    """Runs workflows in this process, durably, on a :class:`WorkflowStore`.

    ``store=None`` uses the SQLite default (``$WORKFLOWS_DB`` or
    ``workflows.db``). ``workflows`` and ``activities`` (functions, or a
    mapping of name to function) are looked up by name when a restarted
    executor resumes the workflows its store says are running. Use it as
    ``async with DefaultExecutor(...) as ex:``; leaving the block stops its
    tasks but ends no workflow.

    ``activity_threads`` sizes the pool that runs plain (non-async)
    activities. ``always_replay=True`` rebuilds every workflow from its
    history after each step and parks it with a :class:`NonDeterminismError`
    if the rebuilt state differs: slow (quadratic), meant for tests.
    ``close_store=True`` makes the executor close a store it was given (as
    it always closes the default store it opened itself).

    ``codec`` (a :class:`PayloadCodec`, or several applied in order, e.g.
    compression then encryption) encodes every payload before it reaches the
    store and decodes it when read; ``store`` then holds encoded data.
    """

    def __init__(
        self,
        store: WorkflowStore | None = None,
        hooks: Hooks | None = None,
        workflows: Registrable = (),
        activities: Registrable = (),
        *,
        activity_threads: int = 32,
        always_replay: bool = False,
        clock: Callable[[], datetime] | None = None,
        close_store: bool = False,
        codec: PayloadCodec | Sequence[PayloadCodec] | None = None,
    ) -> None:
        if store is not None and not isinstance(store, WorkflowStore):
            raise InvalidArgumentError(
                f"store must implement WorkflowStore (save/load/list/delete), "
                f"got {type(store).__name__}"
            )
        if hooks is not None and not isinstance(hooks, Hooks):
            raise InvalidArgumentError(f"hooks must be a Hooks, got {type(hooks).__name__}")
        if isinstance(activity_threads, bool) or not isinstance(activity_threads, int):
            raise InvalidArgumentError("activity_threads must be an int")
        if activity_threads < 1:
            raise InvalidArgumentError(f"activity_threads must be >= 1, got {activity_threads}")
        self._store_arg = store
        self._close_store = close_store
        self._store: WorkflowStore | None = store
        self._codec = as_chain(codec, "codec")
        self._io_store: WorkflowStore | None = None
        self._appending = False
        self._hooks = hooks or Hooks()
        self._workflows = FunctionTable("workflow", workflows)
        self._workflows.add(scheduler)  # schedules are workflows of the engine's own
        self._activities = FunctionTable("activity", activities, "activities")
        self._clock = clock or (lambda: datetime.now(UTC))
        self._threads = activity_threads
        self._always_replay = always_replay
        self._pool: ThreadPoolExecutor | None = None
        self._runs: dict[str, _Run] = {}
        # ids whose run is being saved and registered: set once it is in _runs (or failed)
        self._starting: dict[str, asyncio.Event] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._start_task: asyncio.Future[None] | None = None
        self._closed = False
        self._children = EmbeddedChildren(self)
        self._work = EmbeddedWork(self)

    # -- lifecycle ------------------------------------------------------------
    async def __aenter__(self) -> DefaultExecutor:
        try:
            await self.start()
        except BaseException:
            await self.aclose()  # a failed start (e.g. a payload it cannot decode) leaks nothing
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    @property
    def store(self) -> WorkflowStore:
        """The store in use (created at start when none was given)."""
        if self._store is None:
            raise RuntimeError("the executor has not started; use `async with` or start()")
        return self._store

    @property
    def _io(self) -> WorkflowStore:
        # the store as the executor sees it: through the codec, when there is one
        if self._io_store is None:
            raise RuntimeError("the executor has not started; use `async with` or start()")
        return self._io_store

    async def start(self) -> None:
        """Open the store and resume every workflow it says is running."""
        if self._closed:
            raise RuntimeError("this executor was closed; create a new one")
        if self._start_task is None:
            self._start_task = asyncio.ensure_future(self._start())
        await asyncio.shield(self._start_task)

    async def _start(self) -> None:
        if self._store is None:
            from providers.sqlite import SQLiteStore

            self._store = SQLiteStore()
        # the executor reads and writes through the codec; the store holds encoded data
        self._io_store = CodecStore(self._store, Payloads(self._codec))
        self._appending = isinstance(self._io_store, AppendingStore)
        self._pool = ThreadPoolExecutor(self._threads, thread_name_prefix="activity")
        running = await self._io.list(WorkflowFilter(status=WorkflowStatus.RUNNING))
        # a run that continued as new but whose next run was not saved (a crash between)
        running += await self._io.list(WorkflowFilter(status=WorkflowStatus.CONTINUED_AS_NEW))
        for state in running:
            await self._resume(state)
        await self._children.close_orphans()

    async def aclose(self) -> None:
        """Stop every task and timer; running workflows stay running in the store."""
        if self._closed:
            return
        self._closed = True
        if self._start_task is not None and not self._start_task.done():
            self._start_task.cancel()
        for run in list(self._runs.values()):
            self._halt(run)
            if not run.done.done():
                run.done.set_exception(
                    ExecutorStoppedError(
                        f"the executor stopped before workflow {run.state.workflow_id!r} "
                        "ended; it resumes when an executor on this store starts"
                    )
                )
                run.done.exception()
            for update_id, waiter in run.updates.items():
                if not waiter.done():
                    waiter.set_exception(
                        ExecutorStoppedError(
                            f"the executor stopped before update {update_id!r} of workflow "
                            f"{run.state.workflow_id!r} finished; call update again with "
                            "this update_id on a started executor to get its answer"
                        )
                    )
                    waiter.exception()
            run.updates.clear()
        self._runs.clear()
        await cancel_and_wait(list(self._tasks))
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
        if (self._store_arg is None or self._close_store) and self._store is not None:
            close = getattr(self._store, "close", None)
            if close is not None:
                await close()

    def _halt(self, run: _Run) -> None:
        for _, task in run.activity_tasks.values():
            task.cancel()
        run.activity_tasks.clear()
        for _, task in run.child_tasks.values():
            task.cancel()
        run.child_tasks.clear()
        for _, handle in run.timers.values():
            handle.cancel()
        run.timers.clear()
        if run.instance is not None:
            run.instance.close()

    def _spawn(self, coro: Awaitable[Any]) -> asyncio.Task[Any]:
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("executor task failed", exc_info=task.exception())

    # -- the DurableExecutor API ---------------------------------------------
    async def execute(self, fn: Callable[..., Any], options: WorkflowOptions) -> EmbeddedHandle:
        """Start ``fn`` as a new workflow run and return its handle."""
        check_workflow_call(fn, options)
        name = self._workflows.name_of(fn)
        payload = to_payload(options.input, "workflow input")
        await self.start()
        run = await self._start_run(
            fn,
            name,
            options.id,
            payload,
            options.timeout_seconds,
            options.continue_as_new_suggested_after,
            started_template(options, self._clock()),
            options.input,
        )
        return EmbeddedHandle(self, options.id, run.state.run_id, fn)

    async def _start_run(
        self,
        fn: Callable[..., Any],
        name: str,
        wid: str,
        payload: Any,
        timeout: float | None,
        suggest_after: int | None,
        template: HistoryEvent | None,
        hook_input: Any = None,
    ) -> _Run:
        """Save and start a new run; ``template`` is a child's ``workflow_started``."""
        if wid in self._runs or wid in self._starting:
            current = self._runs.get(wid)
            raise WorkflowAlreadyRunningError(wid, current.state.run_id if current else "starting")
        registered = self._starting[wid] = asyncio.Event()
        try:
            existing = await self._io.load(wid)
            if existing is not None and existing.status is WorkflowStatus.RUNNING:
                raise WorkflowAlreadyRunningError(wid, existing.run_id)
            now = self._clock()
            started = (
                template or HistoryEvent(id=1, type=EventType.WORKFLOW_STARTED, timestamp=now)
            ).model_copy(
                update={
                    "timestamp": now,
                    "input": payload,
                    "continue_as_new_suggested_after": suggest_after,
                }
            )
            state = WorkflowState(
                workflow_id=wid,
                run_id=uuid.uuid4().hex,
                workflow_type=name,
                input=payload,
                timeout=timeout,
                history=[started],
                created_at=now,
                updated_at=now,
            )
            await self._io.save(state)
            run = _Run(state, fn)
            run.instance = self._new_instance(state, fn)
            await run.lock.acquire()
            self._runs[wid] = run
        finally:
            del self._starting[wid]
            registered.set()
        try:
            if template is not None:
                hook_input = payload  # a child's input, as recorded
            self._defer(run, self._hooks.on_workflow_start, wid, hook_input)
            self._apply(run, started)
            await self._reconcile(run)
        finally:
            run.lock.release()
        await self._flush(run)
        return run

    async def describe(self, workflow_id: str) -> WorkflowState:
        """The latest run of ``workflow_id``: status, result or error, and its history."""
        await self.start()
        run = self._runs.get(workflow_id)
        if run is not None:
            return run.state.model_copy(deep=True)
        state = await self._io.load(workflow_id)
        if state is None:
            raise WorkflowNotFoundError(workflow_id)
        return state

    async def describe_waiting(
        self, workflow_id: str
    ) -> tuple[WorkflowState, dict[str, Any] | None]:
        """Like :meth:`describe`, with what a running run waits on (as the streaming
        client's ``describe_waiting``: ``activities``, ``timers``, ``paused``)."""
        state = await self.describe(workflow_id)
        run = self._runs.get(workflow_id)
        if run is None or run.ended or run.instance is None:
            return state, None
        instance = run.instance
        started = driver.attempt_starts(state.history)
        waiting = {
            "activities": [
                {
                    "activity": a.name,
                    "step": a.step,
                    "attempt": a.attempt,
                    "started": started.get((a.step, a.attempt)),
                }
                for a in instance.pending_activities()
                if a.recorded
            ],
            "timers": [
                {"step": t.step, "kind": t.kind.value, "due": t.due, "attempt": t.attempt}
                for t in sorted(instance.pending_timers().values(), key=lambda t: t.due)
            ],
            "paused": instance.paused,
        }
        return state, waiting

    async def status_counts(self) -> dict[WorkflowStatus, int]:
        """How many workflows the store holds in each status."""
        await self.start()
        return await status_counts(self.store)

    def get_handle(self, workflow_id: str) -> EmbeddedHandle:
        """A handle on the latest run of ``workflow_id`` (e.g. after a restart)."""
        run = self._runs.get(workflow_id)
        return EmbeddedHandle(
            self, workflow_id, run.state.run_id if run else None, run.fn if run else None
        )

    async def signal(self, workflow_id: str, signal: Signal) -> None:
        """Record ``signal`` for the running workflow; returns once it is durable."""
        if not isinstance(signal, Signal):
            raise InvalidArgumentError(f"signal must be a Signal, got {type(signal).__name__}")
        payload = to_payload(signal.payload, f"payload of signal {signal.name!r}")
        await self.start()
        run = await self._running(workflow_id, "signal")

        def make(r: _Run) -> HistoryEvent:
            return self._event(
                r,
                EventType.SIGNAL_RECEIVED,
                signal_name=signal.name,
                signal_payload=payload,
                sender_id=signal.sender_id,
            )

        while not await self._input(
            run,
            make,
            raise_errors=True,
            on_recorded=lambda r: self._defer(r, self._hooks.on_signal, workflow_id, signal),
        ):
            run = self._successor(run, "it ended before the signal was recorded")

    async def update(
        self, workflow_id: str, name: str, arg: Any = None, update_id: str | None = None
    ) -> Any:
        """Run the workflow's update handler ``name`` with ``arg``; returns its result.

        A validator's refusal raises :class:`UpdateRejectedError` and an
        unknown name :class:`UpdateNotFoundError`, both recording nothing;
        a handler that raises gives :class:`UpdateFailedError`. The same
        ``update_id`` again (even after a restart) returns the recorded
        answer without running the handler again.

        It waits as long as the handler runs: bound it with
        ``asyncio.wait_for``; the update goes on, and a later call with the
        same ``update_id`` waits for (or gets) its answer.
        """
        uid = check_update(workflow_id, name, update_id)
        payload = to_payload(arg, f"argument of update {name!r}")
        await self.start()
        run = await self._live(workflow_id)
        if run is None or run.ended:
            return await self._ended_update(workflow_id, uid)
        answered: builtins.list[UpdateState] = []
        waiters: builtins.list[asyncio.Future[HistoryEvent]] = []

        def make(r: _Run) -> HistoryEvent | None:
            if r.parked is not None:
                raise r.parked
            assert r.instance is not None
            known = r.instance.update(uid)
            if known is not None:
                if known.recorded:
                    answered.append(known)
                else:
                    waiters.append(r.updates.setdefault(uid, r.loop.create_future()))
                return None
            r.instance.validate_update(name, payload)
            waiters.append(r.updates.setdefault(uid, r.loop.create_future()))
            return self._event(
                r,
                EventType.UPDATE_ACCEPTED,
                signal_name=name,
                signal_payload=payload,
                change_id=uid,
            )

        if not await self._input(run, make, raise_errors=True):
            return await self._ended_update(workflow_id, uid)
        if answered:
            return update_answer(workflow_id, name, answered[0].result, answered[0].failure)
        waiter = waiters[0]
        waits: builtins.list[asyncio.Future[Any]] = [waiter, run.stuck]
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        if not waiter.done():
            assert run.parked is not None
            raise run.parked
        return answer_of(workflow_id, waiter.result())

    async def _ended_update(self, workflow_id: str, update_id: str) -> Any:
        state = await self._io.load(workflow_id)
        if state is None:
            raise WorkflowNotFoundError(workflow_id)
        event = completed_update(state.history, update_id)
        if event is not None:
            return answer_of(workflow_id, event)
        raise WorkflowNotFoundError(
            workflow_id, f"cannot update: it is not running (it is {state.status.value})"
        )

    async def cancel(self, workflow_id: str) -> None:
        """Ask the workflow to stop: ``CancelledError`` is raised at its current await."""
        await self.start()
        run = await self._running(workflow_id, "cancel")
        while not await self._input(
            run, lambda r: self._event(r, EventType.CANCEL_REQUESTED), raise_errors=True
        ):
            run = self._successor(run, "it ended before the cancel was recorded")

    async def terminate(self, workflow_id: str, reason: str = "") -> None:
        """End the run at once: none of its code runs again, no cleanup.

        Recorded as a ``cancel_requested`` and a ``workflow_canceled`` whose
        failure has type ``Terminated`` and ``reason`` as its message; its
        children follow their parent-close policy.
        """
        failure = terminated_failure(check_reason(reason, "terminate"))
        await self.start()
        run = await self._running(workflow_id, "terminate")
        while not await self._input(
            run,
            lambda r: self._event(r, EventType.CANCEL_REQUESTED, failure=failure),
            raise_errors=True,
        ):
            run = self._successor(run, "it ended before the terminate was recorded")

    async def pause(self, workflow_id: str, reason: str = "") -> None:
        """Hold the workflow: no new activity attempt or child starts, due timers wait.

        Signals, updates and results of running attempts are recorded and held
        (queries still answer); :meth:`resume` applies them in order. Recorded
        as ``workflow_paused`` with ``reason``. Pausing a paused workflow raises.
        """
        await self._pause_input(workflow_id, EventType.WORKFLOW_PAUSED, reason)

    async def resume(self, workflow_id: str, reason: str = "") -> None:
        """Undo :meth:`pause`: what was held is applied in order, then the run goes on."""
        await self._pause_input(workflow_id, EventType.WORKFLOW_RESUMED, reason)

    async def _pause_input(self, workflow_id: str, kind: EventType, reason: str) -> None:
        action = "pause" if kind is EventType.WORKFLOW_PAUSED else "resume"
        why = check_reason(reason, action)
        await self.start()
        run = await self._running(workflow_id, action)

        def make(r: _Run) -> HistoryEvent:
            refuse_pause_change(r.state, kind)
            return self._event(r, kind, reason=why)

        while not await self._input(run, make, raise_errors=True):
            run = self._successor(run, f"it ended before the {action} was recorded")

    async def reset(self, workflow_id: str, to_event_id: int, reason: str = "") -> EmbeddedHandle:
        """Start a new run whose history is the latest run's up to ``to_event_id``.

        For a run that failed on a bug: once the fix is deployed, it goes on from
        just before the bug. A running run is terminated first. The new run
        replays the copied events, then records ``workflow_reset`` (naming the
        old run) and carries on live from there.
        """
        why = check_reason(reason, "reset")
        await self.start()
        state = await self._io.load(workflow_id)
        if state is None:
            raise WorkflowNotFoundError(workflow_id, "cannot reset: it is not stored")
        new_run_id = uuid.uuid4().hex
        prefix = reset_prefix(state, to_event_id)
        run = self._runs.get(workflow_id)
        if run is not None and not run.ended:
            await self.terminate(workflow_id, f"reset to event {to_event_id} as run {new_run_id}")
            await asyncio.wait_for(asyncio.shield(run.done), _RESET_WAIT)
        fn = self._workflows.get(state.workflow_type)
        new = reset_state(state, prefix, new_run_id, self._clock(), why)
        await self._io.save(new)
        await self._resume(new)
        return EmbeddedHandle(self, workflow_id, new_run_id, fn)

    async def list(self, query: WorkflowQuery | None = None) -> WorkflowPage:
        """Workflow headers (no histories) matching ``query``, newest start first.

        The store's own index answers it when it has one (SQLite); any other
        store is scanned in full (see the README's store table).
        """
        await self.start()
        return await list_workflows(self.store, WorkflowQuery() if query is None else query)

    async def query(self, workflow_id: str, query_type: str) -> Any:
        """``"status"``, ``"result"``, or a handler the workflow registered."""
        if not isinstance(query_type, str) or not query_type:
            raise InvalidArgumentError(f"query_type must be a non-empty string, got {query_type!r}")
        await self.start()
        run = self._runs.get(workflow_id)
        state = run.state if run is not None else await self._io.load(workflow_id)
        if state is None:
            raise WorkflowNotFoundError(workflow_id)
        if query_type == "status":
            return state.status
        if query_type == "result":
            return state.result
        instance = run.instance if run is not None else None
        replayed = instance is None
        if instance is None:
            instance = self._replay_for_query(state, query_type)
        try:
            if query_type not in instance.query_names:
                raise QueryNotFoundError(
                    workflow_id, query_type, [*BUILTIN_QUERIES, *instance.query_names]
                )
            return instance.query(query_type)
        finally:
            if replayed:
                instance.close()

    def _replay_for_query(self, state: WorkflowState, query_type: str) -> WorkflowInstance:
        fn = self._workflows.get(state.workflow_type)
        if fn is None:
            reason = WorkflowError(f"workflow type {state.workflow_type!r} is not registered here")
            raise QueryNotFoundError(state.workflow_id, query_type, BUILTIN_QUERIES) from reason
        instance = self._new_instance(state, fn)
        instance.replaying = True
        instance.replay(state.history)
        return instance

    def _successor(self, run: _Run, reason: str) -> _Run:
        """The run that continued ``run`` as new, for an input that found it ended."""
        wid = run.state.workflow_id
        nxt = self._runs.get(wid)
        if nxt is None or nxt is run or nxt.ended:
            raise WorkflowNotFoundError(wid, reason)
        return nxt

    async def _live(self, workflow_id: str) -> _Run | None:
        """The run of ``workflow_id`` in this executor, once a start of it in progress
        has registered it (a child's is saved, and seen by ``describe``, just before)."""
        starting = self._starting.get(workflow_id)
        if starting is not None:
            await starting.wait()
        return self._runs.get(workflow_id)

    async def _running(self, workflow_id: str, action: str) -> _Run:
        run = await self._live(workflow_id)
        if run is None or run.ended:
            raise WorkflowNotFoundError(workflow_id, f"cannot {action}: it is not running")
        return run

    # -- results --------------------------------------------------------------
    async def _status(self, workflow_id: str, run_id: str | None) -> WorkflowStatus:
        run = self._runs.get(workflow_id)
        if run is not None and run_id in (None, run.state.run_id):
            return run.state.status
        if run is not None and run_id in run.state.previous_run_ids:
            return WorkflowStatus.CONTINUED_AS_NEW
        state = await self._load_run(workflow_id, run_id)
        if run_id is not None and run_id != state.run_id:
            return WorkflowStatus.CONTINUED_AS_NEW
        return state.status

    async def _load_run(self, workflow_id: str, run_id: str | None) -> WorkflowState:
        await self.start()
        state = await self._io.load(workflow_id)
        if state is None:
            raise WorkflowNotFoundError(workflow_id)
        if run_id is not None and state.run_id != run_id and run_id not in state.previous_run_ids:
            raise WorkflowNotFoundError(
                workflow_id, f"run {run_id} was replaced by run {state.run_id}"
            )
        return state

    async def _result(
        self,
        workflow_id: str,
        run_id: str | None,
        fn: Callable[..., Any] | None,
        timeout: float | None,
    ) -> Any:
        await self.start()
        async with asyncio.timeout(timeout):
            while True:  # a run that continued as new: follow the chain to its last run
                run = self._runs.get(workflow_id)
                if run is None or (
                    run_id not in (None, run.state.run_id)
                    and run_id not in run.state.previous_run_ids
                ):
                    break
                waits: builtins.list[asyncio.Future[Any]] = [run.done, run.stuck]
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
                if not run.done.done() and run.parked is not None:
                    raise run.parked
                outcome = run.done.result()
                if outcome.status is not WorkflowStatus.CONTINUED_AS_NEW:
                    fn = fn or self._workflows.get(run.state.workflow_type)
                    return outcome_value(run.state, outcome, fn)
                run_id = outcome.next_run_id
        state = await self._load_run(workflow_id, run_id)
        if state.status in (WorkflowStatus.RUNNING, WorkflowStatus.CONTINUED_AS_NEW):
            raise WorkflowError(
                f"workflow {workflow_id!r} is running but not in this executor "
                f"({state.error or 'no error recorded'}); start an executor that "
                "registers its workflow type to resume it"
            )
        fn = fn or self._workflows.get(state.workflow_type)
        return outcome_value(state, None, fn)

    # -- the run loop ---------------------------------------------------------
    def _new_instance(self, state: WorkflowState, fn: Callable[..., Any]) -> WorkflowInstance:
        return WorkflowInstance(
            workflow_id=state.workflow_id,
            run_id=state.run_id,
            workflow_type=state.workflow_type,
            fn=fn,
            timeout=state.timeout,
            activity_namer=self._activities.name_of,
            workflow_namer=self._workflows.name_of,
        )

    def _event(self, run: _Run, kind: EventType, **fields: Any) -> HistoryEvent:
        return HistoryEvent(
            id=len(run.state.history) + 1, type=kind, timestamp=self._clock(), **fields
        )

    async def _step(
        self,
        run: _Run,
        event: HistoryEvent | None,
        *,
        raise_errors: bool = False,
        on_recorded: Callable[[_Run], None] | None = None,
    ) -> bool:
        """One step of ``run`` through the shared driver (see ``_driver``), under its lock.

        Records ``event`` (an input; None: only reconcile) and the echoes it
        causes, each batch durable before it is applied; then starts what the
        code asked for. False when ``event`` could not be recorded.
        """
        instance = run.instance
        if event is not None and instance is not None and run.parked is None:
            self._input_hooks(run, instance, event)  # they read the state before the event
        batches = 0

        async def write(batch: builtins.list[HistoryEvent]) -> None:
            nonlocal batches
            batches += 1
            try:
                await self._write(run.state, batch)
            except Exception as exc:
                if raise_errors and event is not None and batches == 1:
                    raise
                self._park(run, WorkflowError(f"could not record {batch[0].type.value}: {exc}"))
                raise _Unrecorded() from exc
            self._recorded(run, batch)
            if batches == 1 and event is not None and on_recorded is not None:
                on_recorded(run)

        steps = driver.step(
            run.state,
            instance,
            event,
            self._clock,
            parked=run.parked is not None,
            check=partial(self._check_replay, run) if self._always_replay else None,
        )
        try:
            settled = await driver.run_step(steps, write)
        except _Unrecorded:
            return event is None or batches > 1
        if settled.diverged is not None:
            self._park(run, settled.diverged)
        wid = run.state.workflow_id
        for echo in settled.echoes:
            if echo.type is EventType.ACTIVITY_STARTED:
                self._defer(run, self._hooks.on_activity_start, wid, echo.input)
            elif echo.type is EventType.CHILD_WORKFLOW_SIGNALED:
                self._children.deliver(run, echo)
        if run.parked is not None or instance is None:
            return True
        outcome = settled.outcome
        if outcome is not None and outcome.status is WorkflowStatus.CONTINUED_AS_NEW:
            await self._continue(run, instance, outcome)
        elif outcome is not None:
            self._finish(run, outcome)
        else:
            self._work.sync(run, instance)
            self._children.sync(run)
        return True

    def _recorded(self, run: _Run, events: builtins.list[HistoryEvent]) -> None:
        """Answer the callers of ``update`` whose answer was just made durable."""
        for event in events:
            if event.type is EventType.UPDATE_COMPLETED and event.change_id in run.updates:
                waiter = run.updates.pop(event.change_id)
                if not waiter.done():
                    waiter.set_result(event)

    async def _write(self, state: WorkflowState, events: builtins.list[HistoryEvent]) -> None:
        """One durable write, retried a few times unless it lost a race (a conflict)."""
        for delay in (*_WRITE_RETRIES, None):
            try:
                if self._appending:
                    await self._io.append(state, events)  # type: ignore[attr-defined]
                else:
                    await self._io.save(state)
                return
            except StoreConflictError:
                raise
            except Exception:
                if delay is None or self._closed:
                    raise
                log.warning("store write for %s failed; retrying", state.workflow_id, exc_info=True)
                await asyncio.sleep(delay)

    async def _input(
        self,
        run: _Run,
        make: Callable[[_Run], HistoryEvent | None],
        *,
        raise_errors: bool = False,
        on_recorded: Callable[[_Run], None] | None = None,
    ) -> bool:
        """Record and apply one input event built by ``make`` (None: nothing to do)."""
        try:
            return await self._locked_input(run, make, raise_errors, on_recorded)
        finally:
            await self._flush(run)

    def _post(self, run: _Run, make: Callable[[_Run], HistoryEvent | None]) -> None:
        """Record the input built by ``make`` later, in order, without waiting for it."""
        run.inbox.append(make)
        if not run.draining:
            run.draining = True
            self._spawn(self._drain(run))

    async def _drain(self, run: _Run) -> None:
        try:
            while run.inbox:
                await self._input(run, run.inbox.popleft())
        finally:
            run.draining = False

    async def _locked_input(
        self,
        run: _Run,
        make: Callable[[_Run], HistoryEvent | None],
        raise_errors: bool,
        on_recorded: Callable[[_Run], None] | None,
    ) -> bool:
        async with run.lock:
            if run.ended or self._closed:
                return False
            event = make(run)
            if event is None:
                return True
            return await self._step(run, event, raise_errors=raise_errors, on_recorded=on_recorded)

    def _check_replay(self, run: _Run) -> bool:
        """Rebuild the run from its history and demand the same state (always-replay mode).

        False when it did not match: the run is parked.
        """
        live = run.instance
        if live is None or run.parked is not None or run.fn is None:
            return run.parked is None
        fresh = self._new_instance(run.state, run.fn)
        fresh.replaying = True
        try:
            fresh.replay(run.state.history)
            replayed, replayed_summary = fresh.snapshot(), fresh.summary()
        except NonDeterminismError as err:
            self._park(run, err)
            return False
        finally:
            fresh.close()
        if replayed != live.snapshot():
            self._park(
                run,
                NonDeterminismError(
                    run.state.workflow_id,
                    run.state.history[-1].id,
                    f"{replayed_summary} when replayed",
                    f"{live.summary()} when run live",
                ),
            )
            return False
        return True

    def _apply(self, run: _Run, event: HistoryEvent) -> None:
        assert run.instance is not None
        try:
            run.instance.apply(event)
        except NonDeterminismError as err:
            self._park(run, err)

    def _park(self, run: _Run, err: WorkflowError) -> None:
        """Leave the workflow running but stuck, with the reason visible."""
        log.error("workflow %s is stuck: %s", run.state.workflow_id, err)
        run.parked = err
        if not run.stuck.done():
            run.stuck.set_result(None)
        run.state.error = f"{type(err).__name__}: {err}"
        self._halt(run)
        self._spawn(self._store_header(run))

    async def _store_header(self, run: _Run) -> None:
        async with run.lock:
            await self._write(run.state, [])

    def _defer(self, run: _Run, hook: Any, *args: Any) -> None:
        if hook is not None:
            run.deferred.append(lambda: call_hook(hook, *args))

    async def _flush(self, run: _Run) -> None:
        """Call the hooks queued while the run's lock was held, in order.

        One task drains the queue at a time; a hook that calls the executor
        queues more and returns, and the drain already running calls them next.
        """
        if run.flushing:
            return
        run.flushing = True
        try:
            while run.deferred:
                await run.deferred.pop(0)()
        finally:
            run.flushing = False

    def _input_hooks(self, run: _Run, instance: WorkflowInstance, event: HistoryEvent) -> None:
        wid = run.state.workflow_id
        kind = event.type
        if kind is EventType.ACTIVITY_COMPLETED:
            self._defer(run, self._hooks.on_activity_complete, wid, event.result)
        elif (
            kind is EventType.ACTIVITY_FAILED
            and event.failure is not None
            and driver.will_retry(instance, event)
        ):
            self._defer(run, self._hooks.on_retry, wid, decode_failure(event.failure))
        elif kind is EventType.TIMER_FIRED and event.step is not None:
            timer = instance.pending_timers().get(event.step)
            if timer is not None and driver.will_retry(instance, event):
                self._defer(
                    run,
                    self._hooks.on_retry,
                    wid,
                    TimeoutError(f"activity {timer.activity_name!r} timed out"),
                )

    async def _reconcile(self, run: _Run) -> None:
        """Record echoes of new commands, then align tasks and timers with the instance."""
        if run.instance is not None and run.parked is None:
            await self._step(run, None)

    async def _continue(self, run: _Run, instance: WorkflowInstance, outcome: Outcome) -> None:
        """Start the run that ``run`` continued as, handing it the unconsumed signals.

        Called under ``run``'s lock once its ``workflow_continued_as_new`` is
        recorded. The new run is registered (its lock held) before the old one
        is finished, so an input that finds the old run ended waits for the new
        one and is recorded there. The carried signals are recorded one at a
        time after its ``workflow_started``: if it continues as new again, the
        rest go on to the next run.
        """
        old = run.state
        nxt = driver.next_run(old, instance, outcome, self._clock(), run.carried)
        run.carried.clear()
        state, started = nxt.state, nxt.started
        state.history.append(started)
        new = _Run(state, run.fn)
        new.carried = nxt.carried
        await new.lock.acquire()
        try:
            self._runs[old.workflow_id] = new
            self._finish(run, outcome)
            try:
                await self._io.save(state)
            except Exception as exc:
                self._park(new, WorkflowError(f"could not start the next run: {exc}"))
                return
            if run.fn is None:
                return
            new.instance = self._new_instance(state, run.fn)
            self._apply(new, started)
            await self._reconcile(new)
            while new.carried and not new.ended and new.parked is None:
                name, payload = new.carried.popleft()
                event = self._event(
                    new, EventType.SIGNAL_RECEIVED, signal_name=name, signal_payload=payload
                )
                if not await self._step(new, event):
                    new.carried.appendleft((name, payload))
                    return
        finally:
            new.lock.release()
            self._spawn(self._flush(new))

    def _finish(self, run: _Run, outcome: Outcome) -> None:
        run.finished = True
        self._halt(run)
        self._children.close(run)
        wid = run.state.workflow_id
        if self._runs.get(wid) is run:
            del self._runs[wid]
        if outcome.status is WorkflowStatus.COMPLETED:
            self._defer(run, self._hooks.on_workflow_complete, wid, outcome.result)
        elif outcome.status is WorkflowStatus.FAILED:
            self._defer(run, self._hooks.on_workflow_fail, wid, failure_error(run.state, outcome))
        # resolve waiters only after the end hooks ran, so result() sees them done
        self._defer(run, self._resolve, run, outcome)

    @staticmethod
    def _resolve(run: _Run, outcome: Outcome) -> None:
        if not run.done.done():
            run.done.set_result(outcome)

    # -- recovery -------------------------------------------------------------
    async def _resume(self, state: WorkflowState) -> None:
        fn = self._workflows.get(state.workflow_type)
        run = _Run(state, fn)
        self._runs[state.workflow_id] = run
        if fn is None:
            known = ", ".join(self._workflows.names()) or "none"
            self._park(
                run,
                WorkflowError(
                    f"workflow type {state.workflow_type!r} of {state.workflow_id!r} is not "
                    f"registered with this executor (registered: {known}); pass it in "
                    "DefaultExecutor(workflows=[...]) to resume it"
                ),
            )
            return
        instance = self._new_instance(state, fn)
        run.instance = instance
        instance.replaying = True
        try:
            instance.replay(state.history)
        except NonDeterminismError as err:
            self._park(run, err)
            return
        except Exception as exc:  # a broken history must not stop the other workflows
            self._park(run, WorkflowError(f"could not replay its history: {exc!r}"))
            return
        finally:
            instance.replaying = False
        async with run.lock:
            await self._reconcile(run)
        self._children.redeliver(run)
        await self._flush(run)
