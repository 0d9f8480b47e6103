"""Temporal provider: workflows run as Temporal workflows, state is read from Temporal.

:class:`TemporalExecutor` implements :class:`~app.workflow.DurableExecutor` on a
Temporal server. Workflow functions and activities are registered with it as
with :class:`~app.workflow.DefaultExecutor`; ``async with`` connects (unless a
``client`` is given) and runs an in-process Temporal worker on the task queue
(``beluga-workflows`` by default).

How the engine maps onto Temporal:

* Each workflow run is a Temporal workflow of the same type name. One dynamic
  Temporal workflow class drives the engine's own deterministic core
  (``WorkflowInstance``), so workflow functions run unchanged and behave as on
  the embedded runtime; Temporal replays that driver, and the core replays the
  code. The class is unsandboxed: the core already runs workflow code on its
  own deterministic loop (no threads, no I/O loop, time and randomness from
  history), and the sandbox would re-import the engine and pydantic for every
  run.
* Each activity *attempt* is one Temporal activity (activity id
  ``"<step>.<attempt>"``, Temporal retry policy of one attempt) and each retry
  backoff is a Temporal timer: retries follow the engine's
  :class:`~app.workflow.RetryPolicy` exactly, jitter included (Temporal's own
  retry policy has no jitter), and every attempt is visible in Temporal's
  history. An attempt interrupted by a stopping worker, or whose worker stops
  heartbeating (``heartbeat_timeout``), is run again as the same attempt.
  ``execute_activity(timeout=)`` is the attempt's start-to-close timeout;
  without one, ``activity_timeout`` applies (Temporal requires a bound).
* ``ctx.sleep`` and other workflow timers are Temporal timers, with a summary
  naming the step; ``WorkflowOptions.timeout`` is Temporal's execution timeout.
* Signals, queries and cancel are Temporal's; a signal's ``sender_id`` travels
  as its second argument.

:class:`TemporalStore` maps Temporal's describe, list and history APIs to
:class:`~app.workflow.WorkflowState` and :class:`~app.workflow.HistoryEvent`;
``save`` and ``delete`` do nothing, because Temporal owns the state.

Hooks fire from the executor that started a workflow (or, for workflows
already running on its task queue when it starts, from that executor, for
events from then on): it follows the workflow's Temporal history (one
long-poll per workflow, only when some hook is set) and calls each hook once
per event after the server recorded it, in history order. ``on_retry`` fires
when the retry backoff timer starts; ``handle.result()`` returns after the
end hooks ran.

Differences from the embedded runtime: Temporal replays a workflow when it has
a workflow task, not when a worker starts, so changed code is reported (as a
failed workflow task, retried by Temporal) at the workflow's next event; an
activity attempt's timeout shows in history as ``activity_failed`` (a
``TimeoutError``), not as ``timer_fired``; and the Temporal worker fails a
workflow task whose activation runs longer than two seconds (its deadlock
detector), so workflow code must not compute for that long between awaits.

Importing this module registers the ``"temporal"`` provider.
"""

from __future__ import annotations

import asyncio
import logging
import re
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from temporalio import activity as t_activity
from temporalio import workflow as t_workflow
from temporalio.api.common.v1 import Payload, WorkflowExecution
from temporalio.api.enums.v1 import TimeoutType, WorkflowTaskFailedCause
from temporalio.api.failure.v1 import Failure
from temporalio.api.history.v1 import HistoryEvent as TemporalEvent
from temporalio.api.workflowservice.v1 import (
    DescribeNamespaceRequest,
    GetWorkflowExecutionHistoryRequest,
    ResetStickyTaskQueueRequest,
)
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowQueryFailedError
from temporalio.common import RawValue
from temporalio.common import RetryPolicy as TemporalRetryPolicy
from temporalio.converter import DataConverter
from temporalio.exceptions import ActivityError as TemporalActivityError
from temporalio.exceptions import (
    ApplicationError as TemporalApplicationError,
)
from temporalio.exceptions import (
    ApplicationErrorCategory,
    WorkflowAlreadyStartedError,
)
from temporalio.exceptions import CancelledError as TemporalCancelledError
from temporalio.exceptions import TimeoutError as TemporalTimeoutError
from temporalio.service import RPCError, RPCStatusCode
from temporalio.worker import (
    ExecuteWorkflowInput,
    Interceptor,
    Worker,
    WorkflowInboundInterceptor,
    WorkflowInterceptorClassInput,
)

from app.workflow import (
    Config,
    EventType,
    FailureInfo,
    HistoryEvent,
    Hooks,
    InvalidArgumentError,
    QueryNotFoundError,
    Signal,
    WorkflowAlreadyRunningError,
    WorkflowError,
    WorkflowFilter,
    WorkflowNotFoundError,
    WorkflowOptions,
    WorkflowState,
    WorkflowStatus,
    WorkflowTimeoutError,
    register,
)
from app.workflow import activity as beluga_activity
from app.workflow._activity_runner import run_attempt
from app.workflow._converter import (
    check_workflow_call,
    decode_failure,
    describe_failure,
    encode_failure,
)
from app.workflow._converter import to_payload as to_json
from app.workflow._core import Outcome, PendingActivity, PendingTimer, TimerKind, WorkflowInstance
from app.workflow._handle import failure_error, outcome_value
from app.workflow._hooks import HOOK_NAMES, call_hook
from app.workflow._names import FunctionTable, Registrable
from app.workflow._types import Duration, to_seconds

__all__ = [
    "DEFAULT_TARGET_HOST",
    "DEFAULT_TASK_QUEUE",
    "TemporalConnectionError",
    "TemporalExecutor",
    "TemporalHandle",
    "TemporalStore",
    "connect",
]

log = logging.getLogger("providers.temporal")

DEFAULT_TASK_QUEUE = "beluga-workflows"
DEFAULT_TARGET_HOST = "localhost:7233"
BUILTIN_QUERIES = ("result", "status")

_PAGE_SIZE = 1000
_LONG_POLL = timedelta(seconds=40)  # above the server's own long-poll expiry (about 20 s)
_RETRY_DELAYS = (0.1, 0.2, 0.4, 0.8, 1.6, 3.2)  # seconds between tries of a failed watch
_WORKER_STOPPED = "BelugaWorkerStopped"  # failure type of an attempt cut short by its worker
_ACTIVITY_ID = re.compile(r"^(\d+)\.(\d+)(?:\.\d+)?$")
_SLEEP_SUMMARY = re.compile(r"^sleep .* \(step (\d+)\)$")
_RETRY_SUMMARY = re.compile(r"^retry backoff of (.+) after attempt (\d+) \(step (\d+)\)$")
_UNKNOWN_QUERY = re.compile(r"has no query (.+); known queries: (.*)$")
_TRANSIENT = frozenset(
    {
        RPCStatusCode.UNAVAILABLE,
        RPCStatusCode.DEADLINE_EXCEEDED,
        RPCStatusCode.RESOURCE_EXHAUSTED,
        RPCStatusCode.ABORTED,
        RPCStatusCode.INTERNAL,
        RPCStatusCode.UNKNOWN,
    }
)


class TemporalConnectionError(WorkflowError, ConnectionError):
    """The Temporal server could not be reached (or lacks the namespace)."""


# -- connecting -------------------------------------------------------------------
async def connect(
    target_host: str = DEFAULT_TARGET_HOST,
    namespace: str = "default",
    *,
    timeout: Duration = 10.0,
) -> Client:
    """Connect to the Temporal frontend at ``target_host``, retrying until ``timeout``.

    A server whose port just opened may refuse gRPC for a few seconds, so
    failed attempts are retried with backoff. Raises
    :class:`TemporalConnectionError` naming the address when the deadline passes.
    """
    seconds = to_seconds(timeout, "connect timeout")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    delay = 0.05
    last: BaseException | None = None
    while True:
        left = deadline - loop.time()
        if left <= 0:
            break
        try:
            return await asyncio.wait_for(
                Client.connect(target_host, namespace=namespace), timeout=left
            )
        except (TimeoutError, RuntimeError, RPCError, OSError) as exc:
            last = exc
        await asyncio.sleep(min(delay, max(0.0, deadline - loop.time())))
        delay = min(delay * 2, 1.0)
    raise TemporalConnectionError(
        f"cannot reach the Temporal server at {target_host} (namespace {namespace!r}) "
        f"within {seconds:g}s: {last or 'timed out'}. Start one (e.g. "
        "`temporal server start-dev`) or pass the right target_host"
    )


def _rpc_error(err: RPCError, address: str, what: str) -> WorkflowError:
    if err.status is RPCStatusCode.UNAVAILABLE:
        return TemporalConnectionError(
            f"the Temporal server at {address} is unavailable ({what}): {err.message}"
        )
    return WorkflowError(f"Temporal server at {address} refused to {what}: {err.message}")


def _address(client: Client) -> str:
    return str(client.service_client.config.target_host)


# -- history: Temporal events -> engine events --------------------------------------
@dataclass
class _Act:
    name: str
    step: int
    attempt: int
    scheduled_at: datetime
    timeout: float


@dataclass
class _Timer:
    step: int
    kind: TimerKind
    duration: float
    attempt: int | None = None
    name: str | None = None


@dataclass(frozen=True)
class _Retry:
    """An activity attempt failed and its retry backoff began (the ``on_retry`` point)."""

    error: BaseException


def _seconds(duration: Any) -> float:
    return float(duration.ToTimedelta().total_seconds())


def _when(event: TemporalEvent) -> datetime:
    return event.event_time.ToDatetime(tzinfo=UTC)


def _timeout_failure(name: str, attempt: int, timeout: float) -> FailureInfo:
    # the same wording as the embedded runtime's attempt timeout
    return FailureInfo(
        type="builtins.TimeoutError",
        message=(
            f"activity {name!r} attempt {attempt} did not finish within its timeout of {timeout:g}s"
        ),
        timeout=timeout,
    )


def _failure_from_details(details: Sequence[Any], type_: str, message: str) -> FailureInfo:
    if details and isinstance(details[0], dict):
        try:
            return FailureInfo.model_validate(details[0])
        except ValueError:
            pass
    return FailureInfo(type=type_ or "ApplicationError", message=message)


class _HistoryMapper:
    """Turns one run's Temporal history, event by event, into the engine's history."""

    def __init__(self, converter: DataConverter, workflow_id: str, run_id: str) -> None:
        self._converter = converter
        self.workflow_id = workflow_id
        self.run_id = run_id
        self.events: list[HistoryEvent] = []
        self.workflow_type = ""
        self.input: Any = None
        self.result: Any = None
        self.error: str | None = None
        self.timeout: float | None = None
        self.status = WorkflowStatus.RUNNING
        self.created_at: datetime | None = None
        self.updated_at: datetime | None = None
        self.stuck: str | None = None  # why the latest workflow task failed, if it did
        self.stuck_by = ""  # the identity of the worker whose workflow task failed
        self.last_event_id = 0
        self._acts: dict[int, _Act] = {}
        self._started: set[tuple[int, int]] = set()
        self._abandoned: set[int] = set()
        self._timers: dict[str, _Timer] = {}
        self._failures: dict[int, FailureInfo] = {}

    @property
    def closed(self) -> bool:
        return self.status is not WorkflowStatus.RUNNING

    def state(self) -> WorkflowState:
        now = datetime.now(UTC)
        error = self.error
        if error is None and self.stuck is not None and not self.closed:
            error = self.stuck
        return WorkflowState(
            workflow_id=self.workflow_id,
            run_id=self.run_id,
            workflow_type=self.workflow_type,
            status=self.status,
            input=self.input,
            result=self.result,
            error=error,
            timeout=self.timeout,
            history=list(self.events),
            created_at=self.created_at or now,
            updated_at=self.updated_at or self.created_at or now,
        )

    async def _values(self, payloads: Sequence[Payload]) -> list[Any]:
        if not payloads:
            return []
        return await self._converter.decode(payloads)

    async def _first(self, payloads: Sequence[Payload]) -> Any:
        values = await self._values(payloads)
        return values[0] if values else None

    async def _failure(self, failure: Failure) -> FailureInfo:
        if failure.HasField("application_failure_info"):
            info = failure.application_failure_info
            details = await self._values(info.details.payloads)
            found = _failure_from_details(details, info.type, failure.message)
            if info.non_retryable and not found.non_retryable and not details:
                found = found.model_copy(update={"non_retryable": True})
            return found
        if failure.HasField("timeout_failure_info"):
            return FailureInfo(type="builtins.TimeoutError", message=failure.message)
        if failure.HasField("canceled_failure_info"):
            return FailureInfo(type="asyncio.CancelledError", message=failure.message)
        return FailureInfo(type="ApplicationError", message=failure.message)

    def _emit(self, event: TemporalEvent, kind: EventType, **fields: Any) -> HistoryEvent:
        made = HistoryEvent(id=len(self.events) + 1, type=kind, timestamp=_when(event), **fields)
        self.events.append(made)
        return made

    async def feed(self, event: TemporalEvent) -> list[HistoryEvent | _Retry]:
        """Map the next Temporal event; returns the engine events (and retry points) it made."""
        self.last_event_id = event.event_id
        self.updated_at = _when(event)
        kind = event.WhichOneof("attributes")
        handler = getattr(self, f"_on_{kind}", None)
        if handler is None:
            return []
        made: list[HistoryEvent | _Retry] = await handler(event)
        return made

    # workflow-level events
    async def _on_workflow_execution_started_event_attributes(
        self, event: TemporalEvent
    ) -> list[HistoryEvent | _Retry]:
        attrs = event.workflow_execution_started_event_attributes
        self.workflow_type = attrs.workflow_type.name
        self.input = await self._first(attrs.input.payloads)
        if attrs.HasField("workflow_execution_timeout"):
            self.timeout = _seconds(attrs.workflow_execution_timeout) or None
        self.created_at = _when(event)
        return [self._emit(event, EventType.WORKFLOW_STARTED, input=self.input)]

    async def _on_workflow_execution_signaled_event_attributes(
        self, event: TemporalEvent
    ) -> list[HistoryEvent | _Retry]:
        attrs = event.workflow_execution_signaled_event_attributes
        values = await self._values(attrs.input.payloads)
        sender = values[1] if len(values) > 1 and isinstance(values[1], str) else None
        return [
            self._emit(
                event,
                EventType.SIGNAL_RECEIVED,
                signal_name=attrs.signal_name,
                signal_payload=values[0] if values else None,
                sender_id=sender,
            )
        ]

    async def _on_workflow_execution_cancel_requested_event_attributes(
        self, event: TemporalEvent
    ) -> list[HistoryEvent | _Retry]:
        return [self._emit(event, EventType.CANCEL_REQUESTED)]

    async def _on_workflow_execution_completed_event_attributes(
        self, event: TemporalEvent
    ) -> list[HistoryEvent | _Retry]:
        attrs = event.workflow_execution_completed_event_attributes
        self.result = await self._first(attrs.result.payloads)
        self.status = WorkflowStatus.COMPLETED
        return [self._emit(event, EventType.WORKFLOW_COMPLETED, result=self.result)]

    async def _on_workflow_execution_continued_as_new_event_attributes(
        self, event: TemporalEvent
    ) -> list[HistoryEvent | _Retry]:
        self.status = WorkflowStatus.COMPLETED
        return [self._emit(event, EventType.WORKFLOW_COMPLETED)]

    async def _on_workflow_execution_failed_event_attributes(
        self, event: TemporalEvent
    ) -> list[HistoryEvent | _Retry]:
        failure = await self._failure(event.workflow_execution_failed_event_attributes.failure)
        return [self._failed(event, failure)]

    def _failed(self, event: TemporalEvent, failure: FailureInfo) -> HistoryEvent:
        self.status = WorkflowStatus.FAILED
        self.error = describe_failure(failure)
        return self._emit(event, EventType.WORKFLOW_FAILED, error=self.error, failure=failure)

    async def _on_workflow_execution_timed_out_event_attributes(
        self, event: TemporalEvent
    ) -> list[HistoryEvent | _Retry]:
        # Temporal's execution timeout is the engine's workflow timeout timer (step 0)
        timeout = self.timeout or 0.0
        fired = self._emit(event, EventType.TIMER_FIRED, step=0, duration=timeout)
        failure = encode_failure(WorkflowTimeoutError(self.workflow_id, timeout))
        return [fired, self._failed(event, failure)]

    async def _on_workflow_execution_terminated_event_attributes(
        self, event: TemporalEvent
    ) -> list[HistoryEvent | _Retry]:
        reason = event.workflow_execution_terminated_event_attributes.reason
        failure = FailureInfo(
            type="WorkflowTerminated",
            message=f"terminated in Temporal: {reason or 'no reason given'}",
            non_retryable=True,
        )
        return [self._failed(event, failure)]

    async def _on_workflow_execution_canceled_event_attributes(
        self, event: TemporalEvent
    ) -> list[HistoryEvent | _Retry]:
        self.status = WorkflowStatus.CANCELED
        return [self._emit(event, EventType.WORKFLOW_CANCELED)]

    async def _on_workflow_task_failed_event_attributes(
        self, event: TemporalEvent
    ) -> list[HistoryEvent | _Retry]:
        attrs = event.workflow_task_failed_event_attributes
        failure = attrs.failure
        self.stuck_by = attrs.identity
        if (
            attrs.cause
            == WorkflowTaskFailedCause.WORKFLOW_TASK_FAILED_CAUSE_NON_DETERMINISTIC_ERROR
        ):
            self.stuck = f"NonDeterminismError: {failure.message}"
        elif (
            attrs.cause
            == WorkflowTaskFailedCause.WORKFLOW_TASK_FAILED_CAUSE_WORKFLOW_WORKER_UNHANDLED_FAILURE
        ):
            kind = failure.application_failure_info.type or "WorkflowError"
            self.stuck = f"{kind}: {failure.message}"
        return []

    async def _on_workflow_task_completed_event_attributes(
        self, event: TemporalEvent
    ) -> list[HistoryEvent | _Retry]:
        self.stuck = None
        return []

    # activities
    async def _on_activity_task_scheduled_event_attributes(
        self, event: TemporalEvent
    ) -> list[HistoryEvent | _Retry]:
        attrs = event.activity_task_scheduled_event_attributes
        match = _ACTIVITY_ID.match(attrs.activity_id)
        step, attempt = (int(match[1]), int(match[2])) if match else (0, 1)
        act = _Act(
            attrs.activity_type.name,
            step,
            attempt,
            _when(event),
            _seconds(attrs.start_to_close_timeout),
        )
        self._acts[event.event_id] = act
        if (step, attempt) in self._started:
            return []  # the same attempt again, after its worker stopped
        self._started.add((step, attempt))
        value = await self._first(attrs.input.payloads)
        return [
            self._emit(
                event,
                EventType.ACTIVITY_STARTED,
                activity_name=act.name,
                input=value,
                step=step,
                attempt=attempt,
            )
        ]

    def _act(self, scheduled_event_id: int) -> _Act | None:
        if scheduled_event_id in self._abandoned:
            return None
        return self._acts.get(scheduled_event_id)

    def _attempt_failed(
        self, event: TemporalEvent, act: _Act, failure: FailureInfo
    ) -> list[HistoryEvent | _Retry]:
        self._failures[act.step] = failure
        made = self._emit(
            event,
            EventType.ACTIVITY_FAILED,
            activity_name=act.name,
            error=describe_failure(failure),
            failure=failure,
            step=act.step,
            attempt=act.attempt,
            duration=(_when(event) - act.scheduled_at).total_seconds(),
        )
        return [made]

    async def _on_activity_task_completed_event_attributes(
        self, event: TemporalEvent
    ) -> list[HistoryEvent | _Retry]:
        attrs = event.activity_task_completed_event_attributes
        act = self._act(attrs.scheduled_event_id)
        if act is None:
            return []
        return [
            self._emit(
                event,
                EventType.ACTIVITY_COMPLETED,
                activity_name=act.name,
                result=await self._first(attrs.result.payloads),
                step=act.step,
                attempt=act.attempt,
                duration=(_when(event) - act.scheduled_at).total_seconds(),
            )
        ]

    async def _on_activity_task_failed_event_attributes(
        self, event: TemporalEvent
    ) -> list[HistoryEvent | _Retry]:
        attrs = event.activity_task_failed_event_attributes
        act = self._act(attrs.scheduled_event_id)
        if act is None or attrs.failure.application_failure_info.type == _WORKER_STOPPED:
            return []
        return self._attempt_failed(event, act, await self._failure(attrs.failure))

    async def _on_activity_task_timed_out_event_attributes(
        self, event: TemporalEvent
    ) -> list[HistoryEvent | _Retry]:
        attrs = event.activity_task_timed_out_event_attributes
        act = self._act(attrs.scheduled_event_id)
        timeout_type = attrs.failure.timeout_failure_info.timeout_type
        if act is None or timeout_type == TimeoutType.TIMEOUT_TYPE_HEARTBEAT:
            return []  # heartbeats stopped: the worker is gone, the attempt runs again
        return self._attempt_failed(
            event, act, _timeout_failure(act.name, act.attempt, act.timeout)
        )

    async def _on_activity_task_cancel_requested_event_attributes(
        self, event: TemporalEvent
    ) -> list[HistoryEvent | _Retry]:
        # the workflow gave up on this attempt: whatever it reports later is not history
        self._abandoned.add(
            event.activity_task_cancel_requested_event_attributes.scheduled_event_id
        )
        return []

    # timers
    async def _on_timer_started_event_attributes(
        self, event: TemporalEvent
    ) -> list[HistoryEvent | _Retry]:
        attrs = event.timer_started_event_attributes
        summary = ""
        if event.HasField("user_metadata") and event.user_metadata.HasField("summary"):
            value = await self._first([event.user_metadata.summary])
            summary = value if isinstance(value, str) else ""
        duration = _seconds(attrs.start_to_fire_timeout)
        retry = _RETRY_SUMMARY.match(summary)
        if retry is not None:
            step = int(retry[3])
            self._timers[attrs.timer_id] = _Timer(
                step, TimerKind.RETRY, duration, int(retry[2]), retry[1].strip("'\"")
            )
            failure = self._failures.get(step)
            return [_Retry(decode_failure(failure))] if failure is not None else []
        sleep = _SLEEP_SUMMARY.match(summary)
        step = int(sleep[1]) if sleep is not None else 0
        self._timers[attrs.timer_id] = _Timer(step, TimerKind.USER, duration)
        return []

    async def _on_timer_fired_event_attributes(
        self, event: TemporalEvent
    ) -> list[HistoryEvent | _Retry]:
        timer = self._timers.pop(event.timer_fired_event_attributes.timer_id, None)
        if timer is None:
            return []
        return [
            self._emit(
                event,
                EventType.TIMER_FIRED,
                step=timer.step,
                attempt=timer.attempt,
                activity_name=timer.name,
                duration=timer.duration,
            )
        ]

    async def _on_timer_canceled_event_attributes(
        self, event: TemporalEvent
    ) -> list[HistoryEvent | _Retry]:
        self._timers.pop(event.timer_canceled_event_attributes.timer_id, None)
        return []


async def _history_pages(
    client: Client,
    workflow_id: str,
    run_id: str,
    *,
    wait: bool,
    rpc_timeout: timedelta,
) -> AsyncIterator[tuple[list[TemporalEvent], bool]]:
    """Pages of a run's history as ``(events, caught_up)``; with ``wait``, until it closes.

    Transient server errors are retried with backoff; ``caught_up`` says the
    page reached the end of the history recorded so far.
    """
    token = b""
    failures = 0
    while True:
        request = GetWorkflowExecutionHistoryRequest(
            namespace=client.namespace,
            execution=WorkflowExecution(workflow_id=workflow_id, run_id=run_id),
            maximum_page_size=_PAGE_SIZE,
            next_page_token=token,
            wait_new_event=wait,
        )
        try:
            response = await client.workflow_service.get_workflow_execution_history(
                request, retry=True, timeout=_LONG_POLL if wait else rpc_timeout
            )
        except RPCError as err:
            if err.status not in _TRANSIENT or failures >= len(_RETRY_DELAYS):
                raise
            await asyncio.sleep(_RETRY_DELAYS[failures])
            failures += 1
            continue
        failures = 0
        events = list(response.history.events)
        token = response.next_page_token
        yield events, len(events) < _PAGE_SIZE
        if not token:
            return


def _status_of(status: WorkflowExecutionStatus | None) -> WorkflowStatus:
    if status is None or status is WorkflowExecutionStatus.RUNNING:
        return WorkflowStatus.RUNNING
    if status in (WorkflowExecutionStatus.COMPLETED, WorkflowExecutionStatus.CONTINUED_AS_NEW):
        return WorkflowStatus.COMPLETED
    if status is WorkflowExecutionStatus.CANCELED:
        return WorkflowStatus.CANCELED
    return WorkflowStatus.FAILED


_STATUS_QUERY = {
    WorkflowStatus.RUNNING: "ExecutionStatus = 'Running'",
    WorkflowStatus.COMPLETED: "ExecutionStatus = 'Completed'",
    WorkflowStatus.CANCELED: "ExecutionStatus = 'Canceled'",
    WorkflowStatus.FAILED: (
        "(ExecutionStatus = 'Failed' OR ExecutionStatus = 'TimedOut' "
        "OR ExecutionStatus = 'Terminated')"
    ),
}


# -- the store ------------------------------------------------------------------------
class TemporalStore:
    """A :class:`~app.workflow.WorkflowStore` that reads workflows from Temporal.

    ``load`` and ``list`` map Temporal's describe, visibility and history to
    :class:`~app.workflow.WorkflowState` (the latest run of each workflow id)
    and its :class:`~app.workflow.HistoryEvent` list. ``save`` and ``delete``
    are no-ops: Temporal records the history itself and keeps closed runs for
    the namespace's retention period. ``task_queue`` limits ``list`` to the
    workflows of one task queue.
    """

    def __init__(
        self,
        client: Client,
        *,
        task_queue: str | None = None,
        rpc_timeout: Duration = 10.0,
    ) -> None:
        if not isinstance(client, Client):
            raise InvalidArgumentError(
                f"client must be a temporalio.client.Client, got {type(client).__name__}"
            )
        self.client = client
        self.task_queue = task_queue
        self._rpc_timeout = timedelta(seconds=to_seconds(rpc_timeout, "rpc_timeout"))

    async def save(self, state: WorkflowState) -> None:
        """Do nothing: Temporal records every event as it happens."""

    async def delete(self, workflow_id: str) -> None:
        """Do nothing: closed runs leave Temporal after the namespace's retention period."""

    async def load(self, workflow_id: str) -> WorkflowState | None:
        """The latest run of ``workflow_id`` with its history, or ``None``."""
        return await self._load(workflow_id, "")

    async def _load(self, workflow_id: str, run_id: str) -> WorkflowState | None:
        handle = self.client.get_workflow_handle(workflow_id, run_id=run_id or None)
        try:
            description = await handle.describe(rpc_timeout=self._rpc_timeout)
        except RPCError as err:
            if err.status is RPCStatusCode.NOT_FOUND:
                return None
            raise _rpc_error(err, _address(self.client), f"describe {workflow_id!r}") from err
        mapper = _HistoryMapper(self.client.data_converter, workflow_id, description.run_id)
        try:
            async for events, _ in _history_pages(
                self.client,
                workflow_id,
                description.run_id,
                wait=False,
                rpc_timeout=self._rpc_timeout,
            ):
                for event in events:
                    await mapper.feed(event)
        except RPCError as err:
            raise _rpc_error(err, _address(self.client), f"read {workflow_id!r}") from err
        return mapper.state()

    async def list(self, filter: WorkflowFilter) -> list[WorkflowState]:
        """The latest runs matching ``filter``, newest first, each with its history."""
        clauses = []
        if self.task_queue is not None:
            clauses.append(f"TaskQueue = '{self.task_queue}'")
        if filter.status is not None:
            clauses.append(_STATUS_QUERY[filter.status])
        found: list[WorkflowState] = []
        seen: set[str] = set()
        try:
            async for execution in self.client.list_workflows(
                " AND ".join(clauses) or None, rpc_timeout=self._rpc_timeout
            ):
                if execution.id in seen:
                    continue  # an older run of a workflow already listed
                seen.add(execution.id)
                state = await self._load(execution.id, "")
                if state is None or state.run_id != execution.run_id:
                    continue
                if filter.status is not None and state.status is not filter.status:
                    continue
                found.append(state)
                if filter.limit and len(found) >= filter.limit:
                    break
        except RPCError as err:
            raise _rpc_error(err, _address(self.client), "list workflows") from err
        found.sort(key=lambda s: s.created_at, reverse=True)
        return found


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
        beluga_info = beluga_activity.ActivityInfo(
            workflow_id=info.workflow_id or "",
            run_id=info.workflow_run_id or "",
            activity_id=f"{info.workflow_id}/{step}",
            activity_name=name,
            attempt=attempt,
            step=step,
        )
        beat = asyncio.ensure_future(self._heartbeat())
        try:
            done = await run_attempt(fn, payload, beluga_info, self._pool)
        except asyncio.CancelledError:
            if t_activity.is_worker_shutdown():
                # reported as a failure the workflow recognises and runs again
                raise TemporalApplicationError(
                    "the worker stopped during this attempt", type=_WORKER_STOPPED
                ) from None
            raise
        finally:
            beat.cancel()
        if done.failure is not None:
            failure = done.failure
            raise TemporalApplicationError(
                failure.message,
                failure.model_dump(mode="json"),
                type=failure.type,
                non_retryable=failure.non_retryable,
                category=ApplicationErrorCategory.BENIGN,  # recorded in history; no log spam
            )
        return done.result

    async def _heartbeat(self) -> None:
        # lets Temporal notice a dead worker (heartbeat timeout) and deliver cancels
        while True:
            t_activity.heartbeat()
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


_Input = Callable[[], HistoryEvent | None]


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
        self._inbox: deque[_Input] = deque()
        self._next_id = 0
        self._activities: dict[int, tuple[int, t_workflow.ActivityHandle[Any]]] = {}
        self._timers: dict[int, tuple[PendingTimer, asyncio.Task[None]]] = {}
        self._reruns: dict[tuple[int, int], int] = {}
        self._waiters: set[asyncio.Future[None]] = set()
        self._cancel_seen = False

    # -- the run -------------------------------------------------------------
    async def _run(self, args: Sequence[RawValue]) -> Any:
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
        instance = WorkflowInstance(
            workflow_id=info.workflow_id,
            run_id=info.run_id,
            workflow_type=info.workflow_type,
            fn=fn,
            activity_namer=settings.activities.name_of,
        )
        self._instance = instance
        settings.runs.add((info.workflow_id, info.run_id))
        self._apply(self._event(EventType.WORKFLOW_STARTED, input=payload))
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
        settings.runs.discard((info.workflow_id, info.run_id))
        return self._finish(instance.outcome)

    def _finish(self, outcome: Outcome) -> Any:
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

    # -- activities ----------------------------------------------------------
    def _schedule(self, act: PendingActivity) -> None:
        key = (act.step, act.attempt)
        rerun = self._reruns.get(key, 0)
        activity_id = f"{act.step}.{act.attempt}" + (f".{rerun}" if rerun else "")
        settings = self.settings
        assert settings is not None
        timeout = act.timeout if act.timeout is not None else settings.activity_timeout
        handle = t_workflow.start_activity(
            act.name,
            act.input,
            activity_id=activity_id,
            start_to_close_timeout=timedelta(seconds=timeout),
            heartbeat_timeout=timedelta(seconds=settings.heartbeat_timeout),
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
            lost = (
                isinstance(cause, TemporalTimeoutError)
                and cause.type is not None
                and cause.type.name == "HEARTBEAT"
            ) or (isinstance(cause, TemporalApplicationError) and cause.type == _WORKER_STOPPED)
            if lost:
                self._inbox.append(lambda: self._rerun(act, handle))
                return
            if isinstance(cause, TemporalTimeoutError):
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
        self._inbox.append(
            lambda: self._event(
                EventType.SIGNAL_RECEIVED,
                signal_name=name,
                signal_payload=payload,
                sender_id=sender,
            )
        )

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


@t_workflow.defn(dynamic=True, sandboxed=False)
class BelugaWorkflow(_Driver):
    """The dynamic Temporal workflow that runs every registered workflow function."""

    @t_workflow.run
    async def run(self, args: Sequence[RawValue]) -> Any:
        return await self._run(args)

    @t_workflow.signal(dynamic=True)
    def signal(self, name: str, args: Sequence[RawValue]) -> None:
        self._on_signal(name, args)

    @t_workflow.query(dynamic=True)
    def query(self, name: str, args: Sequence[RawValue]) -> Any:
        return self._on_query(name, args)


class _SettingsInterceptor(Interceptor):
    """Hands each workflow run the function tables of the executor whose worker runs it."""

    def __init__(self, settings: _Settings) -> None:
        self._settings = settings

    def workflow_interceptor_class(
        self, input: WorkflowInterceptorClassInput
    ) -> type[WorkflowInboundInterceptor] | None:
        settings = self._settings

        class Inject(WorkflowInboundInterceptor):
            async def execute_workflow(self, input: ExecuteWorkflowInput) -> Any:
                driver = t_workflow.instance()
                if isinstance(driver, _Driver):
                    driver.settings = settings
                return await self.next.execute_workflow(input)

        return Inject


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


class TemporalHandle:
    """A workflow run on a :class:`TemporalExecutor`."""

    def __init__(
        self,
        executor: TemporalExecutor,
        workflow_id: str,
        run_id: str | None,
        fn: Callable[..., Any] | None,
    ) -> None:
        self._executor = executor
        self._id = workflow_id
        self._run_id = run_id
        self._fn = fn

    @property
    def id(self) -> str:
        return self._id

    @property
    def run_id(self) -> str:
        return self._run_id or ""

    async def status(self) -> WorkflowStatus:
        return await self._executor._status(self._id, self._run_id)

    async def result(self, timeout: Duration | None = None) -> Any:
        """Wait for the end of the run; see :class:`app.workflow.WorkflowHandle`."""
        seconds = None if timeout is None else to_seconds(timeout, "result timeout")
        return await self._executor._result(self._id, self._run_id, self._fn, seconds)

    def __repr__(self) -> str:
        return f"TemporalHandle(id={self._id!r}, run_id={self._run_id!r})"


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
        self._client = client
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
                self._target_host, self._namespace, timeout=self._connect_timeout
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
            self._workflows, self._activities, self._activity_timeout, self._heartbeat_timeout
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
        try:
            handle = await self.client.start_workflow(
                name,
                payload,
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

    def _not_running(self, err: RPCError, workflow_id: str, action: str) -> WorkflowError:
        if err.status is RPCStatusCode.NOT_FOUND:
            return WorkflowNotFoundError(workflow_id, f"cannot {action}: it is not running")
        return _rpc_error(err, self.address, f"{action} {workflow_id!r}")

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
            state = await asyncio.wait_for(watch.wait_end(), timeout)
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


# -- the registry ---------------------------------------------------------------------
_EXTRA_KEYS = frozenset(
    {
        "client",
        "target_host",
        "namespace",
        "task_queue",
        "workflows",
        "activities",
        "hooks",
        "activity_threads",
    }
)


def _factory(config: Config) -> TemporalExecutor:
    unknown = set(config.extra) - _EXTRA_KEYS
    if unknown:
        raise InvalidArgumentError(
            f"unknown Config.extra keys for provider 'temporal': {', '.join(sorted(unknown))} "
            f"(accepted: {', '.join(sorted(_EXTRA_KEYS))})"
        )
    if config.store is not None:
        raise InvalidArgumentError(
            "the 'temporal' provider keeps workflow state in Temporal; leave Config.store unset "
            "(read it back with TemporalStore)"
        )
    return TemporalExecutor(**config.extra)


register("temporal", _factory)
