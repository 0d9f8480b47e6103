"""Inside the Temporal worker: the activity runner and the workflow driver."""

from __future__ import annotations

import asyncio
import contextvars
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from temporalio import activity as t_activity
from temporalio import workflow as t_workflow
from temporalio.common import RawValue
from temporalio.common import RetryPolicy as TemporalRetryPolicy
from temporalio.exceptions import ActivityError as TemporalActivityError
from temporalio.exceptions import (
    ApplicationError as TemporalApplicationError,
)
from temporalio.exceptions import (
    ApplicationErrorCategory,
)
from temporalio.exceptions import CancelledError as TemporalCancelledError
from temporalio.exceptions import TimeoutError as TemporalTimeoutError
from temporalio.worker import (
    ExecuteWorkflowInput,
    HandleUpdateInput,
    Interceptor,
    WorkflowInboundInterceptor,
    WorkflowInterceptorClassInput,
)

from app.workflow import (
    EventType,
    FailureInfo,
    HistoryEvent,
    QueryNotFoundError,
    UpdateNotFoundError,
    UpdateRejectedError,
    WorkflowError,
    WorkflowStatus,
)
from app.workflow import activity as beluga_activity
from app.workflow._activity_runner import heartbeat_timeout_failure, run_attempt
from app.workflow._converter import (
    describe_failure,
    encode_failure,
)
from app.workflow._core import Outcome, PendingActivity, PendingTimer, TimerKind, WorkflowInstance
from app.workflow._names import FunctionTable

from ._children import ChildRunner
from ._common import (
    _ACTIVITY_ID,
    _WORKER_STOPPED,
    BUILTIN_QUERIES,
    UPDATE_NOT_FOUND,
    UPDATE_REJECTED,
)
from ._history import _failure_from_details, _timeout_failure


# -- inside the worker: activities ----------------------------------------------------
class _ActivityRunner:
    """The one dynamic Temporal activity: runs the registered function named by its type."""

    def __init__(
        self, table: FunctionTable, pool: ThreadPoolExecutor, heartbeat_every: float
    ) -> None:
        self._table = table
        self._pool = pool
        self._heartbeat_every = heartbeat_every

    @t_activity.defn(dynamic=True)
    async def run(self, args: Sequence[RawValue]) -> Any:
        info = t_activity.info()
        name = info.activity_type
        fn = self._table.get(name)
        if fn is None:
            raise TemporalApplicationError(
                f"activity {name!r} is not registered with the executor on task queue "
                f"{info.task_queue!r} (registered: {', '.join(self._table.names()) or 'none'})",
                type="ActivityNotRegistered",
                non_retryable=True,
            )
        match = _ACTIVITY_ID.match(info.activity_id)
        step, attempt = (int(match[1]), int(match[2])) if match else (0, info.attempt)
        converter = t_activity.payload_converter()
        payload = converter.from_payload(args[0].payload) if args else None
        # a second argument: the workflow's heartbeat timeout and the details to resume from
        options: dict[str, Any] = {}
        if len(args) > 1:
            options = converter.from_payload(args[1].payload) or {}
        user_timeout: float | None = options.get("heartbeat_timeout")
        beluga_info = beluga_activity.ActivityInfo(
            workflow_id=info.workflow_id or "",
            run_id=info.workflow_run_id or "",
            activity_id=f"{info.workflow_id}/{step}",
            activity_name=name,
            attempt=attempt,
            step=step,
            heartbeat_timeout=user_timeout,
            heartbeat_details=options.get("heartbeat_details"),
        )
        loop = asyncio.get_running_loop()
        context = contextvars.copy_context()  # Temporal's activity context, for other threads
        last: list[Any] = [options.get("heartbeat_details")]

        def send(details: Any) -> None:
            last[0] = details
            t_activity.heartbeat(details)

        def beat(details: Any) -> None:  # Temporal throttles heartbeats itself
            loop.call_soon_threadsafe(send, details, context=context)

        attempt_ = beluga_activity._Attempt(beluga_info, beat)
        # with no heartbeat timeout of the workflow's, the engine heartbeats on the
        # activity's behalf (so Temporal notices a dead worker); with one, the activity must
        keeper = None if user_timeout is not None else asyncio.ensure_future(self._heartbeat(last))
        try:
            done = await run_attempt(fn, payload, attempt_, self._pool)
        except asyncio.CancelledError:
            attempt_.cancel("Temporal cancelled it (the workflow was canceled or ended)")
            if t_activity.is_worker_shutdown():
                # reported as a failure the workflow recognises and runs again
                raise TemporalApplicationError(
                    "the worker stopped during this attempt", type=_WORKER_STOPPED
                ) from None
            raise
        finally:
            if keeper is not None:
                keeper.cancel()
        if done.failure is not None:
            failure = done.failure
            raise TemporalApplicationError(
                failure.message,
                failure.model_dump(mode="json"),
                {"heartbeat_details": last[0]},
                type=failure.type,
                non_retryable=failure.non_retryable,
                category=ApplicationErrorCategory.BENIGN,  # recorded in history; no log spam
            )
        return done.result

    async def _heartbeat(self, last: list[Any]) -> None:
        # lets Temporal notice a dead worker (heartbeat timeout) and deliver cancels
        while True:
            t_activity.heartbeat(last[0])
            await asyncio.sleep(self._heartbeat_every)


# -- inside the worker: the workflow driver ------------------------------------------
@dataclass(frozen=True)
class _Settings:
    workflows: FunctionTable
    activities: FunctionTable
    activity_timeout: float
    heartbeat_timeout: float
    # runs this worker has taken on and not seen end (it may hold them in its sticky cache)
    runs: set[tuple[str, str]] = field(default_factory=set)
    task_timeout: float | None = None  # Temporal's workflow task timeout, for child workflows
    # the instances of those runs whose code has not ended, closed when the worker stops
    instances: set[WorkflowInstance] = field(default_factory=set)


_Input = Callable[[], HistoryEvent | None]


def _no_upserts(changes: dict[str, Any]) -> None:
    raise WorkflowError(
        "ctx.upsert_search_attributes is not supported on the Temporal provider (Temporal "
        "needs each search attribute registered on its namespace first); set the "
        "attributes at start with WorkflowOptions(search_attributes=...), or run this "
        "workflow on the embedded or streaming runtime"
    )


def _temporal_patcher() -> Callable[[str, bool], bool]:
    """``ctx.patched`` / ``ctx.deprecate_patch`` as Temporal's own (it records the marker).

    ``workflow.patched`` finds the run through the running event loop, but the
    workflow code runs on the core's loop; the run's Temporal runtime is taken
    here, on Temporal's loop, and called directly.
    """
    runtime = t_workflow._Runtime.current()

    def patch(change_id: str, deprecated: bool) -> bool:
        taken = runtime.workflow_patch(change_id, deprecated=deprecated)
        return True if deprecated else taken

    return patch


class _Driver:
    """Runs one workflow run: Temporal activations in, engine core events through.

    Every input Temporal delivers (start, activity result, timer, signal,
    cancel) becomes an engine event applied to the run's ``WorkflowInstance``;
    what the instance then wants (activity attempts, timers, the end) becomes
    Temporal commands. Temporal replays this driver deterministically, so the
    instance sees the same events, with the same timestamps, on every replay.
    """

    def __init__(self) -> None:
        self.settings: _Settings | None = None  # set by _SettingsInterceptor before the run
        self._instance: WorkflowInstance | None = None
        self._memo: dict[str, Any] | None = None  # carried to a run continued as new
        self._children: ChildRunner | None = None
        self._inbox: deque[_Input] = deque()
        self._next_id = 0
        self._activities: dict[int, tuple[int, t_workflow.ActivityHandle[Any]]] = {}
        self._timers: dict[int, tuple[PendingTimer, asyncio.Task[None]]] = {}
        self._reruns: dict[tuple[int, int], int] = {}
        # the last heartbeat details of each activity step, for its next attempt
        self._heartbeats: dict[int, Any] = {}
        self._waiters: set[asyncio.Future[None]] = set()
        self._cancel_seen = False
        self._args: Sequence[RawValue] = ()  # the run's input, for _begin before the run

    # -- the run -------------------------------------------------------------
    async def _run(self, args: Sequence[RawValue]) -> Any:
        instance = self._begin(args)
        info = t_workflow.info()
        settings = self.settings
        assert settings is not None
        try:
            while instance.outcome is None:
                try:
                    await t_workflow.wait_condition(lambda: bool(self._inbox))
                except asyncio.CancelledError:
                    if self._cancel_seen or t_workflow.cancellation_reason() is None:
                        raise  # eviction, not a cancel request
                    self._cancel_seen = True
                    self._inbox.append(lambda: self._event(EventType.CANCEL_REQUESTED))
                while self._inbox and instance.outcome is None:
                    event = self._inbox.popleft()()
                    if event is not None:
                        self._apply(event)
        finally:
            settings.instances.discard(instance)
            if instance.outcome is None:
                # evicted (or the task failed): stop the code now, while its loop is
                # open, rather than when its coroutines are collected (a terminated
                # child's cleanup code would then run outside its loop)
                instance.close()
        settings.runs.discard((info.workflow_id, info.run_id))
        return self._finish(instance.outcome)

    def _begin(self, args: Sequence[RawValue]) -> WorkflowInstance:
        """Build the run's instance and apply workflow_started, once.

        Called by the run, or earlier by an update's validator or handler:
        Temporal delivers an update that came with the start before the run
        begins, and the code must have registered its handlers by then.
        """
        if self._instance is not None:
            return self._instance
        info = t_workflow.info()
        settings = self.settings
        assert settings is not None, "the worker must use _SettingsInterceptor"
        workflows = settings.workflows
        fn = workflows.get(info.workflow_type)
        if fn is None:
            # a plain exception fails the workflow task: Temporal retries it, so the
            # workflow resumes once a worker that registers the type polls this queue
            raise WorkflowError(
                f"workflow type {info.workflow_type!r} of {info.workflow_id!r} is not "
                f"registered with this executor (registered: "
                f"{', '.join(workflows.names()) or 'none'}); pass it in "
                "TemporalExecutor(workflows=[...]) to resume it"
            )
        converter = t_workflow.payload_converter()
        payload = converter.from_payload(args[0].payload) if args else None
        # a second argument: the run options (continue_as_new_suggested_after, and for a
        # run begun by continue-as-new, the runs before it and the signals handed over)
        extra: dict[str, Any] = {}
        if len(args) > 1:
            extra = converter.from_payload(args[1].payload) or {}
        self._memo = extra.get("memo")
        instance = WorkflowInstance(
            workflow_id=info.workflow_id,
            run_id=info.run_id,
            workflow_type=info.workflow_type,
            fn=fn,
            activity_namer=settings.activities.name_of,
            patcher=_temporal_patcher(),
            upserter=_no_upserts,
        )
        self._instance = instance
        self._children = ChildRunner(
            instance, self._event, self._inbox.append, settings.task_timeout
        )
        settings.runs.add((info.workflow_id, info.run_id))
        settings.instances.add(instance)
        parent = info.parent
        self._apply(
            self._event(
                EventType.WORKFLOW_STARTED,
                input=payload,
                previous_run_ids=extra.get("previous_run_ids"),
                continue_as_new_suggested_after=extra.get("suggest_after"),
                search_attributes=extra.get("search_attributes"),
                memo=extra.get("memo"),
                parent_workflow_id=parent.workflow_id if parent is not None else None,
                parent_run_id=parent.run_id if parent is not None else None,
            )
        )
        # the signals the previous run left unconsumed come before any sent to this one
        self._inbox.extendleft(
            reversed([_SignalInput(self, name, value) for name, value in extra.get("carried", [])])
        )
        return instance

    def _finish(self, outcome: Outcome) -> Any:
        if outcome.status is WorkflowStatus.CONTINUED_AS_NEW:
            # Temporal's own continue-as-new; the signals the code did not consume (and
            # those delivered but not applied yet) go to the next run as its argument
            instance = self._instance
            assert instance is not None
            carried = instance.carried_signals() + [
                (item.name, item.payload) for item in self._inbox if isinstance(item, _SignalInput)
            ]
            info = t_workflow.info()
            extra = {
                "previous_run_ids": [*instance.previous_run_ids, info.run_id],
                "suggest_after": instance.suggest_after,
                "carried": carried,
                "search_attributes": instance.search_attributes or None,
                "memo": self._memo,
            }
            t_workflow.continue_as_new(args=[outcome.result, extra])
        if outcome.status is WorkflowStatus.COMPLETED:
            return outcome.result
        if outcome.status is WorkflowStatus.CANCELED:
            raise asyncio.CancelledError()
        failure = outcome.failure or FailureInfo(type="WorkflowError", message="failed")
        raise TemporalApplicationError(
            failure.message,
            failure.model_dump(mode="json"),
            type=failure.type,
            non_retryable=True,
        )

    def _event(self, kind: EventType, **fields: Any) -> HistoryEvent:
        self._next_id += 1
        return HistoryEvent(id=self._next_id, type=kind, timestamp=t_workflow.now(), **fields)

    def _apply(self, event: HistoryEvent) -> None:
        instance = self._instance
        assert instance is not None
        instance.apply(event)  # a NonDeterminismError fails the workflow task
        if instance.outcome is not None:
            return
        for act in instance.pending_activities():
            if not act.recorded:
                self._schedule(act)
                instance.apply(
                    self._event(
                        EventType.ACTIVITY_STARTED,
                        activity_name=act.name,
                        input=act.input,
                        step=act.step,
                        attempt=act.attempt,
                    )
                )
        self._start_children(instance)
        wanted = {a.step: a for a in instance.pending_activities()}
        for step, (attempt, handle) in list(self._activities.items()):
            want = wanted.get(step)
            if want is None or want.attempt != attempt:
                handle.cancel()
                del self._activities[step]
        timers = {
            step: timer
            for step, timer in instance.pending_timers().items()
            if timer.kind in (TimerKind.USER, TimerKind.RETRY)
        }
        for step, (timer, task) in list(self._timers.items()):
            if timers.get(step) != timer:
                task.cancel()
                del self._timers[step]
        for step, timer in timers.items():
            if step not in self._timers:
                task = asyncio.ensure_future(self._timer(timer))
                self._timers[step] = (timer, task)

    # -- child workflows -----------------------------------------------------
    def _start_children(self, instance: WorkflowInstance) -> None:
        """Start the child attempts and send the child signals the code asked for."""
        children = self._children
        assert children is not None
        for child in instance.children.pending():
            if not child.recorded:
                children.start(child)
                instance.apply(
                    self._event(
                        EventType.CHILD_WORKFLOW_STARTED,
                        child_workflow_id=child.workflow_id,
                        child_workflow_type=child.workflow_type,
                        input=child.input,
                        step=child.step,
                        attempt=child.attempt,
                        duration=child.timeout,
                        parent_close_policy=child.policy,
                    )
                )
        for sig in list(instance.children.signals.values()):
            if not sig.recorded:
                children.signal(sig)
                instance.apply(
                    self._event(
                        EventType.CHILD_WORKFLOW_SIGNALED,
                        child_workflow_id=sig.workflow_id,
                        signal_name=sig.name,
                        signal_payload=sig.payload,
                        step=sig.step,
                    )
                )

    # -- activities ----------------------------------------------------------
    def _schedule(self, act: PendingActivity) -> None:
        key = (act.step, act.attempt)
        rerun = self._reruns.get(key, 0)
        activity_id = f"{act.step}.{act.attempt}" + (f".{rerun}" if rerun else "")
        settings = self.settings
        assert settings is not None
        timeout = act.timeout if act.timeout is not None else settings.activity_timeout
        args: list[Any] = [act.input]
        details = self._heartbeats.get(act.step)
        if act.heartbeat_timeout is not None or details is not None:
            # only then a second argument, so histories of other activities stay as they were
            args.append({"heartbeat_timeout": act.heartbeat_timeout, "heartbeat_details": details})
        beat = act.heartbeat_timeout or settings.heartbeat_timeout
        handle = t_workflow.start_activity(
            act.name,
            args=args,
            activity_id=activity_id,
            start_to_close_timeout=timedelta(seconds=timeout),
            heartbeat_timeout=timedelta(seconds=beat),
            retry_policy=TemporalRetryPolicy(maximum_attempts=1),
        )
        self._activities[act.step] = (act.attempt, handle)
        waiter = asyncio.ensure_future(self._await_activity(act, timeout, handle))
        self._waiters.add(waiter)
        waiter.add_done_callback(self._waiters.discard)

    def _current(self, act: PendingActivity, handle: t_workflow.ActivityHandle[Any]) -> bool:
        mine = self._activities.get(act.step)
        return mine is not None and mine[1] is handle

    async def _await_activity(
        self, act: PendingActivity, timeout: float, handle: t_workflow.ActivityHandle[Any]
    ) -> None:
        step, attempt, name = act.step, act.attempt, act.name
        try:
            result = await handle
        except asyncio.CancelledError:
            return
        except TemporalActivityError as err:
            cause = err.cause
            if isinstance(cause, TemporalCancelledError):
                return
            missed = (
                isinstance(cause, TemporalTimeoutError)
                and cause.type is not None
                and cause.type.name == "HEARTBEAT"
            )
            self._keep_details(step, cause)
            lost = (missed and act.heartbeat_timeout is None) or (
                isinstance(cause, TemporalApplicationError) and cause.type == _WORKER_STOPPED
            )
            if lost:
                self._inbox.append(lambda: self._rerun(act, handle))
                return
            if missed and act.heartbeat_timeout is not None:
                failure = heartbeat_timeout_failure(name, attempt, act.heartbeat_timeout)
            elif isinstance(cause, TemporalTimeoutError):
                failure = _timeout_failure(name, attempt, timeout)
            elif isinstance(cause, TemporalApplicationError):
                failure = _failure_from_details(cause.details, cause.type or "", cause.message)
            else:
                failure = encode_failure(cause or err)

            def failed() -> HistoryEvent | None:
                if not self._current(act, handle):
                    return None
                del self._activities[step]
                return self._event(
                    EventType.ACTIVITY_FAILED,
                    activity_name=name,
                    error=describe_failure(failure),
                    failure=failure,
                    step=step,
                    attempt=attempt,
                )

            self._inbox.append(failed)
            return

        def completed() -> HistoryEvent | None:
            if not self._current(act, handle):
                return None
            del self._activities[step]
            return self._event(
                EventType.ACTIVITY_COMPLETED,
                activity_name=name,
                result=result,
                step=step,
                attempt=attempt,
            )

        self._inbox.append(completed)

    def _keep_details(self, step: int, cause: BaseException | None) -> None:
        """Keep the failed attempt's last heartbeat details for the next one."""
        details: Sequence[Any] = ()
        if isinstance(cause, TemporalTimeoutError):
            details = cause.last_heartbeat_details
        elif isinstance(cause, TemporalApplicationError) and len(cause.details) > 1:
            extra = cause.details[1]
            details = [extra.get("heartbeat_details")] if isinstance(extra, dict) else ()
        if details and details[0] is not None:
            self._heartbeats[step] = details[0]

    def _rerun(self, act: PendingActivity, handle: t_workflow.ActivityHandle[Any]) -> None:
        if self._current(act, handle):
            key = (act.step, act.attempt)
            self._reruns[key] = self._reruns.get(key, 0) + 1
            self._schedule(act)

    # -- timers --------------------------------------------------------------
    async def _timer(self, timer: PendingTimer) -> None:
        if timer.kind is TimerKind.RETRY:
            summary = (
                f"retry backoff of {timer.activity_name!r} after attempt {timer.attempt} "
                f"(step {timer.step})"
            )
        else:
            summary = f"sleep {timer.duration:g}s (step {timer.step})"
        try:
            # Temporal timers need a positive duration; the engine's zero-delay timers still
            # wait for the next workflow task, as on the embedded runtime
            await t_workflow.sleep(max(timer.duration, 0.001), summary=summary)
        except asyncio.CancelledError:
            return

        def fired() -> HistoryEvent | None:
            current = self._timers.get(timer.step)
            instance = self._instance
            if current is None or current[0] != timer or instance is None:
                return None
            if not instance.is_current_timer(timer.step, timer.attempt):
                return None
            del self._timers[timer.step]
            return self._event(
                EventType.TIMER_FIRED,
                step=timer.step,
                attempt=timer.attempt,
                activity_name=timer.activity_name,
                duration=timer.duration,
            )

        self._inbox.append(fired)

    # -- signals and queries -------------------------------------------------
    def _on_signal(self, name: str, args: Sequence[RawValue]) -> None:
        converter = t_workflow.payload_converter()
        values = [converter.from_payload(arg.payload) for arg in args]
        sender = values[1] if len(values) > 1 and isinstance(values[1], str) else None
        payload = values[0] if values else None
        self._inbox.append(_SignalInput(self, name, payload, sender))

    def _on_validate_update(self, name: str, args: Sequence[RawValue]) -> None:
        """Temporal's validator: a refusal records nothing, as on the other runtimes."""
        instance = self._begin(self._args)
        converter = t_workflow.payload_converter()
        payload = converter.from_payload(args[0].payload) if args else None
        if instance.outcome is not None:
            info = t_workflow.info()
            raise TemporalApplicationError(
                f"workflow {info.workflow_id!r} takes no update now", [], type=UPDATE_NOT_FOUND
            )
        try:
            instance.validate_update(name, payload)
        except UpdateNotFoundError as err:
            raise TemporalApplicationError(str(err), err.known, type=UPDATE_NOT_FOUND) from None
        except UpdateRejectedError as err:
            raise TemporalApplicationError(err.message, type=UPDATE_REJECTED) from None

    async def _on_update(self, name: str, args: Sequence[RawValue]) -> Any:
        """Temporal's update handler: an update_accepted input, then wait for its answer."""
        instance = self._begin(self._args)
        converter = t_workflow.payload_converter()
        payload = converter.from_payload(args[0].payload) if args else None
        uid = t_workflow.current_update_info().id  # type: ignore[union-attr]
        self._inbox.append(
            lambda: self._event(
                EventType.UPDATE_ACCEPTED, signal_name=name, signal_payload=payload, change_id=uid
            )
        )

        def answered() -> bool:
            update = instance.update(uid)
            return update is not None and update.done

        await t_workflow.wait_condition(answered)
        update = instance.update(uid)
        assert update is not None
        if update.failure is not None:
            raise TemporalApplicationError(
                update.failure.message,
                update.failure.model_dump(mode="json"),
                type=update.failure.type,
                non_retryable=True,
            )
        return update.result

    def _on_query(self, name: str, args: Sequence[RawValue]) -> Any:
        instance = self._instance
        outcome = instance.outcome if instance is not None else None
        if name == "status":
            return (outcome.status if outcome is not None else WorkflowStatus.RUNNING).value
        if name == "result":
            return outcome.result if outcome is not None else None
        handlers = instance.query_names if instance is not None else []
        if instance is None or name not in handlers:
            info = t_workflow.info()
            raise QueryNotFoundError(info.workflow_id, name, [*BUILTIN_QUERIES, *handlers])
        return instance.query(name)


class _SignalInput:
    """A signal in the driver's inbox; kept recognisable so continue-as-new can hand it on."""

    def __init__(self, driver: _Driver, name: str, payload: Any, sender: str | None = None):
        self._driver = driver
        self.name = name
        self.payload = payload
        self.sender = sender

    def __call__(self) -> HistoryEvent:
        return self._driver._event(
            EventType.SIGNAL_RECEIVED,
            signal_name=self.name,
            signal_payload=self.payload,
            sender_id=self.sender,
        )


@t_workflow.defn(dynamic=True, sandboxed=False)
class BelugaWorkflow(_Driver):
    """The dynamic Temporal workflow that runs every registered workflow function."""

    @t_workflow.init
    def __init__(self, args: Sequence[RawValue]) -> None:
        super().__init__()
        self._args = args

    @t_workflow.run
    async def run(self, args: Sequence[RawValue]) -> Any:
        return await self._run(args)

    @t_workflow.signal(dynamic=True)
    def signal(self, name: str, args: Sequence[RawValue]) -> None:
        self._on_signal(name, args)

    @t_workflow.query(dynamic=True)
    def query(self, name: str, args: Sequence[RawValue]) -> Any:
        return self._on_query(name, args)

    @t_workflow.update(dynamic=True)
    async def update(self, name: str, args: Sequence[RawValue]) -> Any:
        return await self._on_update(name, args)

    @update.validator
    def validate_update(self, name: str, args: Sequence[RawValue]) -> None:
        self._on_validate_update(name, args)


class _SettingsInterceptor(Interceptor):
    """Hands each workflow run the function tables of the executor whose worker runs it."""

    def __init__(self, settings: _Settings) -> None:
        self._settings = settings

    def workflow_interceptor_class(
        self, input: WorkflowInterceptorClassInput
    ) -> type[WorkflowInboundInterceptor] | None:
        settings = self._settings

        class Inject(WorkflowInboundInterceptor):
            def handle_update_validator(self, input: HandleUpdateInput) -> None:
                # an update can come before the run begins: its handlers need the tables too
                driver = t_workflow.instance()
                if isinstance(driver, _Driver):
                    driver.settings = settings
                self.next.handle_update_validator(input)

            async def handle_update_handler(self, input: HandleUpdateInput) -> Any:
                driver = t_workflow.instance()
                if isinstance(driver, _Driver):
                    driver.settings = settings
                return await self.next.handle_update_handler(input)

            async def execute_workflow(self, input: ExecuteWorkflowInput) -> Any:
                driver = t_workflow.instance()
                if isinstance(driver, _Driver):
                    driver.settings = settings
                return await self.next.execute_workflow(input)

        return Inject
