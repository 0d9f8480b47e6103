"""``TemporalExecutor`` and its handles: start, signal, query, cancel; hooks from history."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

from temporalio.api.common.v1 import WorkflowExecution
from temporalio.api.workflowservice.v1 import (
    DescribeNamespaceRequest,
    ResetStickyTaskQueueRequest,
)
from temporalio.client import (
    Client,
    WorkflowExecutionStatus,
    WorkflowQueryFailedError,
    WorkflowUpdateFailedError,
    WorkflowUpdateRPCTimeoutOrCancelledError,
)
from temporalio.exceptions import ApplicationError as TemporalApplicationError
from temporalio.exceptions import (
    WorkflowAlreadyStartedError,
)
from temporalio.service import RPCError, RPCStatusCode
from temporalio.worker import (
    Worker,
)

from app.workflow import (
    EventType,
    HistoryEvent,
    Hooks,
    InvalidArgumentError,
    QueryNotFoundError,
    Signal,
    UpdateFailedError,
    UpdateNotFoundError,
    UpdateRejectedError,
    WorkflowAlreadyRunningError,
    WorkflowError,
    WorkflowNotFoundError,
    WorkflowOptions,
    WorkflowState,
    WorkflowStatus,
)
from app.workflow._codec import PayloadCodec, as_chain
from app.workflow._converter import (
    check_workflow_call,
    decode_failure,
)
from app.workflow._converter import to_payload as to_json
from app.workflow._core import check_reason
from app.workflow._handle import RunHandle, failure_error, outcome_value
from app.workflow._hooks import HOOK_NAMES, call_hook
from app.workflow._names import FunctionTable, Registrable
from app.workflow._types import Duration, FailureInfo, to_seconds
from app.workflow._updates import answer_of, check_update, completed_update
from app.workflow._visibility import WorkflowPage, WorkflowQuery, list_workflows

from ._codec import data_converter, with_codec
from ._common import (
    _UNKNOWN_QUERY,
    DEFAULT_TARGET_HOST,
    DEFAULT_TASK_QUEUE,
    TERMINATE_PREFIX,
    UPDATE_NOT_FOUND,
    UPDATE_REJECTED,
    TemporalConnectionError,
    _address,
    _rpc_error,
    connect,
)
from ._history import _history_pages, _HistoryMapper, _Retry, _status_of
from ._store import TemporalStore
from ._worker import BelugaWorkflow, _ActivityRunner, _Settings, _SettingsInterceptor

log = logging.getLogger("providers.temporal")


# -- the executor -----------------------------------------------------------------------
class _Watch:
    """Follows one run's history until it closes; fires hooks for events past ``fire_after``."""

    def __init__(
        self,
        executor: TemporalExecutor,
        workflow_id: str,
        run_id: str,
        *,
        hooks: Hooks | None,
        fire_after: int = 0,
        start_input: Any = None,
    ) -> None:
        self.executor = executor
        self.workflow_id = workflow_id
        self.run_id = run_id
        self.mapper = _HistoryMapper(executor.client.data_converter, workflow_id, run_id)
        self.hooks = hooks
        self.fire_after = fire_after
        self.start_input = start_input
        self.caught_up = False
        self.error: BaseException | None = None
        self._wake = asyncio.Event()
        self.task = asyncio.ensure_future(self._follow())

    async def _follow(self) -> None:
        try:
            async for events, caught_up in _history_pages(
                self.executor.client,
                self.workflow_id,
                self.run_id,
                wait=True,
                rpc_timeout=self.executor.rpc_timeout,
            ):
                for event in events:
                    made = await self.mapper.feed(event)
                    if self.hooks is not None and event.event_id > self.fire_after:
                        for item in made:
                            await self._fire(item)
                self.caught_up = caught_up
                self._wake.set()
        except RPCError as err:
            self.error = _rpc_error(
                err, self.executor.address, f"follow workflow {self.workflow_id!r}"
            )
        finally:
            self._wake.set()

    async def _fire(self, item: HistoryEvent | _Retry) -> None:
        hooks = self.hooks
        assert hooks is not None
        wid = self.workflow_id
        if isinstance(item, _Retry):
            await call_hook(hooks.on_retry, wid, item.error)
            return
        kind = item.type
        if kind is EventType.WORKFLOW_STARTED:
            value = self.start_input if self.fire_after == 0 else item.input
            await call_hook(hooks.on_workflow_start, wid, value)
        elif kind is EventType.ACTIVITY_STARTED:
            await call_hook(hooks.on_activity_start, wid, item.input)
        elif kind is EventType.ACTIVITY_COMPLETED:
            await call_hook(hooks.on_activity_complete, wid, item.result)
        elif kind is EventType.SIGNAL_RECEIVED:
            signal = Signal(
                name=item.signal_name or "?",
                payload=item.signal_payload,
                sent_at=item.timestamp,
                sender_id=item.sender_id,
            )
            await call_hook(hooks.on_signal, wid, signal)
        elif kind is EventType.WORKFLOW_COMPLETED:
            await call_hook(hooks.on_workflow_complete, wid, item.result)
        elif kind is EventType.WORKFLOW_FAILED:
            await call_hook(hooks.on_workflow_fail, wid, failure_error(self.mapper.state(), None))

    async def wait_end(self) -> WorkflowState:
        """The run's final state; raises when following failed or the run cannot progress here."""
        while True:
            if self.task.done() and self.mapper.closed:
                return self.mapper.state()
            if self.error is not None:
                raise self.error
            if self.task.done():
                raise WorkflowError(f"stopped following workflow {self.workflow_id!r}")
            if self.caught_up:
                blocked = self.executor._blocked(self.mapper)
                if blocked is not None:
                    raise blocked
            self._wake.clear()
            await self._wake.wait()

    def close(self) -> None:
        self.task.cancel()


class TemporalHandle(RunHandle):
    """A workflow run on a :class:`TemporalExecutor`."""


class TemporalExecutor:
    """A :class:`~app.workflow.DurableExecutor` whose workflows run on a Temporal server.

    Pass a connected ``client``, or a ``target_host`` and ``namespace`` to
    connect to at start (retried for ``connect_timeout`` seconds). Use it as
    ``async with TemporalExecutor(...) as ex:``: entering starts a Temporal
    worker in this process on ``task_queue`` for the registered ``workflows``
    and ``activities``; leaving stops it and ends no workflow. Several
    executors (processes) may serve one task queue; all must register the
    same workflow and activity names.

    ``activity_timeout`` bounds each activity attempt started without a
    ``timeout``; ``heartbeat_timeout`` is how soon Temporal notices that a
    worker running an attempt is gone (the attempt then runs again);
    ``workflow_task_timeout`` (Temporal's, for the runs this executor starts)
    is how soon a workflow task held by a worker that died, or that stopped
    while the task was in flight, goes to another worker.
    ``rpc_timeout`` bounds every call to the server (transient errors are
    retried by the Temporal client with backoff).
    ``codec`` (a :class:`~app.workflow.PayloadCodec`, or several applied in
    order) becomes the client's Temporal ``payload_codec``, with failure
    messages encoded too: Temporal then stores and sends only encoded payloads.
    """

    def __init__(
        self,
        client: Client | None = None,
        *,
        target_host: str = DEFAULT_TARGET_HOST,
        namespace: str = "default",
        task_queue: str = DEFAULT_TASK_QUEUE,
        workflows: Registrable = (),
        activities: Registrable = (),
        hooks: Hooks | None = None,
        activity_threads: int = 32,
        activity_timeout: Duration = timedelta(hours=24),
        heartbeat_timeout: Duration = 30.0,
        workflow_task_timeout: Duration = 10.0,
        connect_timeout: Duration = 10.0,
        rpc_timeout: Duration = 10.0,
        codec: PayloadCodec | Sequence[PayloadCodec] | None = None,
    ) -> None:
        if client is not None and not isinstance(client, Client):
            raise InvalidArgumentError(
                f"client must be a temporalio.client.Client, got {type(client).__name__}"
            )
        if hooks is not None and not isinstance(hooks, Hooks):
            raise InvalidArgumentError(f"hooks must be a Hooks, got {type(hooks).__name__}")
        if not isinstance(task_queue, str) or not task_queue:
            raise InvalidArgumentError(f"task_queue must be a non-empty string, got {task_queue!r}")
        if isinstance(activity_threads, bool) or not isinstance(activity_threads, int):
            raise InvalidArgumentError("activity_threads must be an int")
        if activity_threads < 1:
            raise InvalidArgumentError(f"activity_threads must be >= 1, got {activity_threads}")
        self._codec = as_chain(codec, "codec")
        self._client = None if client is None else with_codec(client, self._codec)
        self._target_host = target_host
        self._namespace = client.namespace if client is not None else namespace
        self.task_queue = task_queue
        self._hooks = hooks
        self._hooked = hooks is not None and any(getattr(hooks, n) for n in HOOK_NAMES)
        self._workflows = FunctionTable("workflow", workflows)
        self._activities = FunctionTable("activity", activities, "activities")
        self._threads = activity_threads
        self._activity_timeout = to_seconds(activity_timeout, "activity_timeout")
        self._heartbeat_timeout = to_seconds(heartbeat_timeout, "heartbeat_timeout")
        self._task_timeout = timedelta(
            seconds=to_seconds(workflow_task_timeout, "workflow_task_timeout")
        )
        self._connect_timeout = to_seconds(connect_timeout, "connect_timeout")
        self.rpc_timeout = timedelta(seconds=to_seconds(rpc_timeout, "rpc_timeout"))
        self.identity = ""  # the worker's, set at start
        self._pool: ThreadPoolExecutor | None = None
        self._settings: _Settings | None = None
        self._worker: Worker | None = None
        self._worker_task: asyncio.Task[None] | None = None
        self._store: TemporalStore | None = None
        self._watches: dict[str, _Watch] = {}
        self._start_task: asyncio.Future[None] | None = None
        self._closed = False

    # -- lifecycle ------------------------------------------------------------
    async def __aenter__(self) -> TemporalExecutor:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    @property
    def client(self) -> Client:
        """The Temporal client (connected at start when none was given)."""
        if self._client is None:
            raise RuntimeError("the executor has not started; use `async with` or start()")
        return self._client

    @property
    def address(self) -> str:
        """The Temporal frontend this executor talks to."""
        return _address(self._client) if self._client is not None else self._target_host

    @property
    def store(self) -> TemporalStore:
        """A :class:`TemporalStore` over this executor's client."""
        if self._store is None:
            self._store = TemporalStore(self.client, rpc_timeout=self.rpc_timeout)
        return self._store

    async def start(self) -> None:
        """Connect if needed, check the namespace, start the worker, follow running workflows."""
        if self._closed:
            raise RuntimeError("this executor was closed; create a new one")
        if self._start_task is None:
            self._start_task = asyncio.ensure_future(self._start())
        await asyncio.shield(self._start_task)

    async def _start(self) -> None:
        if self._client is None:
            self._client = await connect(
                self._target_host,
                self._namespace,
                timeout=self._connect_timeout,
                data_converter=data_converter(self._codec),
            )
        client = self._client
        try:
            await client.workflow_service.describe_namespace(
                DescribeNamespaceRequest(namespace=client.namespace),
                retry=True,
                timeout=self.rpc_timeout,
            )
        except RPCError as err:
            if err.status is RPCStatusCode.NOT_FOUND:
                raise TemporalConnectionError(
                    f"namespace {client.namespace!r} does not exist on the Temporal server at "
                    f"{self.address}; create it (temporal operator namespace create) first"
                ) from err
            raise _rpc_error(err, self.address, "describe its namespace") from err
        self._pool = ThreadPoolExecutor(self._threads, thread_name_prefix="activity")
        settings = _Settings(
            self._workflows,
            self._activities,
            self._activity_timeout,
            self._heartbeat_timeout,
            task_timeout=self._task_timeout.total_seconds(),
        )
        runner = _ActivityRunner(
            self._activities, self._pool, max(0.1, self._heartbeat_timeout / 3)
        )
        self.identity = f"{client.identity}/{uuid.uuid4().hex[:8]}"
        self._settings = settings
        self._worker = Worker(
            client,
            identity=self.identity,
            task_queue=self.task_queue,
            workflows=[BelugaWorkflow],
            activities=[runner.run],
            interceptors=[_SettingsInterceptor(settings)],
            graceful_shutdown_timeout=timedelta(0),
        )
        self._worker_task = asyncio.ensure_future(self._worker.run())
        if self._hooked:
            await self._follow_running()

    async def _follow_running(self) -> None:
        """Follow the workflows already running on the task queue, from their next event."""
        query = f"TaskQueue = '{self.task_queue}' AND ExecutionStatus = 'Running'"
        try:
            async for execution in self.client.list_workflows(query, rpc_timeout=self.rpc_timeout):
                if execution.id in self._watches:
                    continue
                handle = self.client.get_workflow_handle(execution.id, run_id=execution.run_id)
                description = await handle.describe(rpc_timeout=self.rpc_timeout)
                length = description.raw_description.workflow_execution_info.history_length
                self._watches[execution.id] = _Watch(
                    self, execution.id, execution.run_id, hooks=self._hooks, fire_after=length
                )
        except RPCError as err:
            raise _rpc_error(err, self.address, "list running workflows") from err

    async def aclose(self) -> None:
        """Stop the worker and stop following workflows; they keep running in Temporal."""
        if self._closed:
            return
        self._closed = True
        if self._start_task is not None and not self._start_task.done():
            self._start_task.cancel()
        watches = list(self._watches.values())
        self._watches.clear()
        for watch in watches:
            watch.close()
        if self._worker is not None:
            try:
                await asyncio.wait_for(self._worker.shutdown(), timeout=30)
            except Exception:
                log.warning("the Temporal worker did not stop cleanly", exc_info=True)
        if self._worker_task is not None and not self._worker_task.done():
            self._worker_task.cancel()
        if self._settings is not None:
            # runs still cached when the worker stopped (a child terminated in Temporal
            # never gets another task): stop their code now, not when it is collected
            for instance in list(self._settings.instances):
                instance.close()
            self._settings.instances.clear()
        if self._settings is not None and self._settings.runs:
            await self._release_sticky(list(self._settings.runs))
        if watches:
            await asyncio.wait([w.task for w in watches], timeout=5)
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)

    async def _release_sticky(self, runs: list[tuple[str, str]]) -> None:
        """Send the next workflow tasks of these runs to any worker, not to this stopped one.

        Temporal routes a run's tasks to the worker that has it cached; without
        this, they wait out the sticky schedule-to-start timeout first.
        """
        client = self.client

        async def release(workflow_id: str, run_id: str) -> None:
            try:
                await client.workflow_service.reset_sticky_task_queue(
                    ResetStickyTaskQueueRequest(
                        namespace=client.namespace,
                        execution=WorkflowExecution(workflow_id=workflow_id, run_id=run_id),
                    ),
                    timeout=self.rpc_timeout,
                )
            except RPCError as err:  # ended meanwhile, or the server is gone: nothing to do
                log.debug("could not reset the sticky queue of %s: %s", workflow_id, err)

        await asyncio.gather(*(release(wid, run) for wid, run in runs))

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("this executor was closed; create a new one")

    # -- the DurableExecutor API ---------------------------------------------
    async def execute(self, fn: Callable[..., Any], options: WorkflowOptions) -> TemporalHandle:
        """Start ``fn`` as a new Temporal workflow run and return its handle."""
        check_workflow_call(fn, options)
        name = self._workflows.name_of(fn)
        payload = to_json(options.input, "workflow input")
        await self.start()
        self._check_open()
        timeout = options.timeout_seconds
        args: list[Any] = [payload]
        extra = {
            "suggest_after": options.continue_as_new_suggested_after,
            "search_attributes": dict(options.search_attributes or {}) or None,
            "memo": dict(options.memo or {}) or None,
        }
        if any(v is not None for v in extra.values()):
            # a second argument only then, so other histories stay as they were
            args.append({k: v for k, v in extra.items() if v is not None})
        try:
            handle = await self.client.start_workflow(
                name,
                args=args,
                id=options.id,
                task_queue=self.task_queue,
                execution_timeout=timedelta(seconds=timeout) if timeout is not None else None,
                task_timeout=self._task_timeout,
                rpc_timeout=self.rpc_timeout,
            )
        except WorkflowAlreadyStartedError as err:
            raise WorkflowAlreadyRunningError(options.id, err.run_id or "?") from err
        except RPCError as err:
            raise _rpc_error(err, self.address, f"start workflow {options.id!r}") from err
        run_id = handle.result_run_id or ""
        if self._hooked:
            old = self._watches.pop(options.id, None)
            if old is not None:
                old.close()
            self._watches[options.id] = _Watch(
                self, options.id, run_id, hooks=self._hooks, start_input=options.input
            )
        return TemporalHandle(self, options.id, run_id, fn)

    async def describe(self, workflow_id: str) -> WorkflowState:
        """The latest run of ``workflow_id``: status, result or error, and its history."""
        await self.start()
        state = await self.store.load(workflow_id)
        if state is None:
            raise WorkflowNotFoundError(workflow_id)
        return state

    def get_handle(self, workflow_id: str) -> TemporalHandle:
        """A handle on the latest run of ``workflow_id``."""
        watch = self._watches.get(workflow_id)
        return TemporalHandle(self, workflow_id, watch.run_id if watch else None, None)

    async def signal(self, workflow_id: str, signal: Signal) -> None:
        """Send ``signal`` to the running workflow; returns once Temporal recorded it."""
        if not isinstance(signal, Signal):
            raise InvalidArgumentError(f"signal must be a Signal, got {type(signal).__name__}")
        payload = to_json(signal.payload, f"payload of signal {signal.name!r}")
        args = [payload] if signal.sender_id is None else [payload, signal.sender_id]
        await self.start()
        handle = self.client.get_workflow_handle(workflow_id)
        try:
            await handle.signal(signal.name, args=args, rpc_timeout=self.rpc_timeout)
        except RPCError as err:
            raise self._not_running(err, workflow_id, "signal") from err

    async def cancel(self, workflow_id: str) -> None:
        """Request cancellation: ``CancelledError`` is raised at the workflow's current await."""
        await self.start()
        # Temporal accepts a cancel request for a closed run without complaint
        if await self._status(workflow_id, None) is not WorkflowStatus.RUNNING:
            raise WorkflowNotFoundError(workflow_id, "cannot cancel: it is not running")
        handle = self.client.get_workflow_handle(workflow_id)
        try:
            await handle.cancel(rpc_timeout=self.rpc_timeout)
        except RPCError as err:
            raise self._not_running(err, workflow_id, "cancel") from err

    async def pause(self, workflow_id: str, reason: str = "") -> None:
        """Not available on Temporal: raises :class:`WorkflowError` naming the feature."""
        raise WorkflowError(
            f"cannot pause {workflow_id!r}: pause and resume are not supported on the "
            "Temporal provider (its own workflow pause is not in the Python SDK); signal "
            "the workflow to wait instead, or run it on the embedded or streaming runtime"
        )

    async def reset(self, workflow_id: str, to_event_id: int, reason: str = "") -> Any:
        """Not available on Temporal: raises :class:`WorkflowError` naming the feature."""
        raise WorkflowError(
            f"cannot reset {workflow_id!r}: reset is not supported on the Temporal provider "
            "(the engine's event ids are not Temporal's); use `temporal workflow reset` "
            "on the server, or run the workflow on the embedded or streaming runtime"
        )

    async def resume(self, workflow_id: str, reason: str = "") -> None:
        """Not available on Temporal (see :meth:`pause`)."""
        raise WorkflowError(
            f"cannot resume {workflow_id!r}: pause and resume are not supported on the "
            "Temporal provider"
        )

    async def terminate(self, workflow_id: str, reason: str = "") -> None:
        """End the run at once (Temporal's own terminate); it reads as canceled, ``Terminated``."""
        why = check_reason(reason, "terminate")
        await self.start()
        if await self._status(workflow_id, None) is not WorkflowStatus.RUNNING:
            raise WorkflowNotFoundError(workflow_id, "cannot terminate: it is not running")
        handle = self.client.get_workflow_handle(workflow_id)
        try:
            await handle.terminate(reason=TERMINATE_PREFIX + why, rpc_timeout=self.rpc_timeout)
        except RPCError as err:
            raise self._not_running(err, workflow_id, "terminate") from err

    async def update(
        self, workflow_id: str, name: str, arg: Any = None, update_id: str | None = None
    ) -> Any:
        """Run update handler ``name`` as a Temporal update (its validator as Temporal's).

        Temporal dedupes by ``update_id`` itself; for a run that has ended, an
        update it answered is found in its history.
        """
        uid = check_update(workflow_id, name, update_id)
        payload = to_json(arg, f"argument of update {name!r}")
        await self.start()
        handle = self.client.get_workflow_handle(workflow_id)
        try:
            return await handle.execute_update(name, payload, id=uid, rpc_timeout=self.rpc_timeout)
        except WorkflowUpdateFailedError as err:
            raise _update_error(workflow_id, name, err.cause) from None
        except WorkflowUpdateRPCTimeoutOrCancelledError as err:
            if isinstance(err.__cause__, asyncio.CancelledError):
                raise err.__cause__ from None  # the caller was cancelled: not an error
            raise WorkflowError(
                f"update {name!r} of {workflow_id!r} got no answer within "
                f"{self.rpc_timeout.total_seconds():g}s (is a worker polling "
                f"{self.task_queue!r}?); send it again with update_id={uid!r}"
            ) from err
        except RPCError as err:
            if err.status is not RPCStatusCode.NOT_FOUND:
                raise _rpc_error(err, self.address, f"update {workflow_id!r}") from err
        state = await self.describe(workflow_id)  # not running: answered before it ended?
        done = completed_update(state.history, uid)
        if done is not None:
            return answer_of(workflow_id, done)
        raise WorkflowNotFoundError(
            workflow_id, f"cannot update: it is not running (it is {state.status.value})"
        )

    def _not_running(self, err: RPCError, workflow_id: str, action: str) -> WorkflowError:
        if err.status is RPCStatusCode.NOT_FOUND:
            return WorkflowNotFoundError(workflow_id, f"cannot {action}: it is not running")
        return _rpc_error(err, self.address, f"{action} {workflow_id!r}")

    async def list(self, query: WorkflowQuery | None = None) -> WorkflowPage:
        """Workflow headers matching ``query``, newest start first.

        Read through :attr:`store`: every workflow's history is fetched from
        Temporal and scanned (Temporal's own visibility needs search attributes
        registered on the namespace; this needs nothing).
        """
        await self.start()
        return await list_workflows(self.store, WorkflowQuery() if query is None else query)

    async def query(self, workflow_id: str, query_type: str) -> Any:
        """``"status"``, ``"result"``, or a handler the workflow registered (a Temporal query)."""
        if not isinstance(query_type, str) or not query_type:
            raise InvalidArgumentError(f"query_type must be a non-empty string, got {query_type!r}")
        await self.start()
        if query_type == "status":
            return await self._status(workflow_id, None)
        if query_type == "result":
            return (await self.describe(workflow_id)).result
        handle = self.client.get_workflow_handle(workflow_id)
        try:
            return await handle.query(query_type, rpc_timeout=self.rpc_timeout)
        except WorkflowQueryFailedError as err:
            unknown = _UNKNOWN_QUERY.search(err.message)
            if unknown is not None:
                known = [k for k in unknown[2].split(", ") if k]
                raise QueryNotFoundError(workflow_id, query_type, known) from None
            raise WorkflowError(
                f"query {query_type!r} of workflow {workflow_id!r} failed: {err.message}"
            ) from err
        except RPCError as err:
            if err.status is RPCStatusCode.NOT_FOUND:
                raise WorkflowNotFoundError(workflow_id) from err
            if err.status is RPCStatusCode.DEADLINE_EXCEEDED:
                seconds = self.rpc_timeout.total_seconds()
                raise WorkflowError(
                    f"no worker on task queue {self.task_queue!r} answered query "
                    f"{query_type!r} of {workflow_id!r} within {seconds:g}s"
                ) from err
            raise _rpc_error(err, self.address, f"query {workflow_id!r}") from err

    # -- results --------------------------------------------------------------
    async def _status(self, workflow_id: str, run_id: str | None) -> WorkflowStatus:
        await self.start()
        handle = self.client.get_workflow_handle(workflow_id, run_id=run_id)
        try:
            description = await handle.describe(rpc_timeout=self.rpc_timeout)
        except RPCError as err:
            if err.status is RPCStatusCode.NOT_FOUND:
                raise WorkflowNotFoundError(workflow_id) from err
            raise _rpc_error(err, self.address, f"describe {workflow_id!r}") from err
        if description.status is WorkflowExecutionStatus.TERMINATED:
            # canceled when a parent's close policy terminated it, failed otherwise: only
            # the history's terminate reason tells, as it does for ``describe``
            state = await self.store.load_run(workflow_id, description.run_id)
            if state is not None:
                return state.status
        return _status_of(description.status)

    async def _result(
        self,
        workflow_id: str,
        run_id: str | None,
        fn: Callable[..., Any] | None,
        timeout: float | None,
    ) -> Any:
        await self.start()
        watch = self._watches.get(workflow_id)
        private: _Watch | None = None
        if watch is None or (run_id is not None and watch.run_id != run_id):
            if run_id is None:
                run_id = await self._latest_run(workflow_id)
            watch = private = _Watch(self, workflow_id, run_id, hooks=None)
        try:
            async with asyncio.timeout(timeout):
                state = await watch.wait_end()
                # a run that continued as new: follow the chain to its last run
                while state.status is WorkflowStatus.CONTINUED_AS_NEW:
                    if private is not None:
                        private.close()
                    next_run = state.history[-1].new_run_id or await self._latest_run(workflow_id)
                    watch = private = _Watch(self, workflow_id, next_run, hooks=None)
                    state = await watch.wait_end()
        finally:
            if private is not None:
                private.close()
        fn = fn or self._workflows.get(state.workflow_type)
        return outcome_value(state, None, fn)

    def _blocked(self, mapper: _HistoryMapper) -> WorkflowError | None:
        """Why a running workflow cannot progress on this executor, if it cannot.

        Its type is not registered here (this executor's worker would fail it),
        or this executor's worker failed its latest workflow task. A failure
        recorded by another worker may be gone here (new code), so it is not
        reported: Temporal retries the task on this worker at the next event.
        """
        if mapper.closed or not mapper.workflow_type:
            return None
        if self._workflows.get(mapper.workflow_type) is None:
            known = ", ".join(self._workflows.names()) or "none"
            return WorkflowError(
                f"workflow {mapper.workflow_id!r} is running, but its type "
                f"{mapper.workflow_type!r} is not registered with this executor "
                f"(registered: {known}); start an executor that registers it to resume it"
            )
        if mapper.stuck is not None and mapper.stuck_by == self.identity:
            return WorkflowError(
                f"workflow {mapper.workflow_id!r} is running but cannot progress: {mapper.stuck}"
            )
        return None

    async def _latest_run(self, workflow_id: str) -> str:
        handle = self.client.get_workflow_handle(workflow_id)
        try:
            description = await handle.describe(rpc_timeout=self.rpc_timeout)
        except RPCError as err:
            if err.status is RPCStatusCode.NOT_FOUND:
                raise WorkflowNotFoundError(workflow_id) from err
            raise _rpc_error(err, self.address, f"describe {workflow_id!r}") from err
        return description.run_id


def _update_error(workflow_id: str, name: str, cause: BaseException | None) -> WorkflowError:
    """The engine's error for a Temporal update that failed or was refused."""
    if isinstance(cause, TemporalApplicationError):
        details = list(cause.details)
        if cause.type == UPDATE_NOT_FOUND:
            known = details[0] if details and isinstance(details[0], list) else []
            return UpdateNotFoundError(workflow_id, name, [str(k) for k in known])
        if cause.type == UPDATE_REJECTED:
            return UpdateRejectedError(workflow_id, name, cause.message)
        if details and isinstance(details[0], dict):
            try:
                failure = FailureInfo.model_validate(details[0])
            except ValueError:
                failure = FailureInfo(type=cause.type or "Error", message=cause.message)
        else:
            failure = FailureInfo(type=cause.type or "Error", message=cause.message)
    else:
        failure = FailureInfo(type="Error", message=str(cause))
    err = UpdateFailedError(workflow_id, name, failure.message)
    err.__cause__ = decode_failure(failure)
    return err
