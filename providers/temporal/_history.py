"""Temporal's history and status, read as the engine's events and states."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from temporalio.api.common.v1 import Payload, WorkflowExecution
from temporalio.api.enums.v1 import TimeoutType, WorkflowTaskFailedCause
from temporalio.api.failure.v1 import Failure
from temporalio.api.history.v1 import HistoryEvent as TemporalEvent
from temporalio.api.workflowservice.v1 import (
    GetWorkflowExecutionHistoryRequest,
)
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.converter import DataConverter
from temporalio.service import RPCError

from app.workflow import (
    EventType,
    FailureInfo,
    HistoryEvent,
    WorkflowState,
    WorkflowStatus,
    WorkflowTimeoutError,
)
from app.workflow._activity_runner import heartbeat_timeout_failure
from app.workflow._converter import (
    decode_failure,
    describe_failure,
    encode_failure,
)
from app.workflow._core import CANCEL_SIGNAL, TERMINATED, TimerKind, terminated_failure

from ._codec import plain_failure
from ._common import (
    _ACTIVITY_ID,
    _LONG_POLL,
    _PAGE_SIZE,
    _RETRY_DELAYS,
    _RETRY_SUMMARY,
    _SLEEP_SUMMARY,
    _TRANSIENT,
    _WORKER_STOPPED,
    CHILD_MEMO,
    PARENT_CLOSE_REASON,
    TERMINATE_PREFIX,
)


# -- history: Temporal events -> engine events --------------------------------------
@dataclass
class _Act:
    name: str
    step: int
    attempt: int
    scheduled_at: datetime
    timeout: float
    heartbeat_timeout: float | None = None
    """Set when the workflow gave the activity a heartbeat timeout (not the engine's own)."""


@dataclass
class _Timer:
    step: int
    kind: TimerKind
    duration: float
    attempt: int | None = None
    name: str | None = None


@dataclass(frozen=True)
class _Child:
    """A child workflow start this run initiated (one attempt of the engine's child)."""

    workflow_id: str
    workflow_type: str
    step: int | None
    attempt: int | None
    timeout: float | None


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
        self._children: dict[int, _Child] = {}  # by the initiated event's id

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
        failure = await plain_failure(self._converter, failure)
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
        values = await self._values(attrs.input.payloads)
        self.input = values[0] if values else None
        # a second argument: the engine's run options (continue-as-new), see _worker
        extra = values[1] if len(values) > 1 and isinstance(values[1], dict) else {}
        if attrs.HasField("workflow_execution_timeout"):
            self.timeout = _seconds(attrs.workflow_execution_timeout) or None
        self.created_at = _when(event)
        parent: dict[str, Any] = {}
        if attrs.HasField("parent_workflow_execution"):
            memo = await self._memo(attrs.memo.fields.get(CHILD_MEMO))
            parent = {
                "parent_workflow_id": attrs.parent_workflow_execution.workflow_id,
                "parent_run_id": attrs.parent_workflow_execution.run_id,
                "step": memo.get("step"),
                "attempt": memo.get("attempt"),
                "parent_close_policy": memo.get("parent_close_policy"),
            }
        made: list[HistoryEvent | _Retry] = [
            self._emit(
                event,
                EventType.WORKFLOW_STARTED,
                input=self.input,
                previous_run_ids=extra.get("previous_run_ids"),
                continue_as_new_suggested_after=extra.get("suggest_after"),
                search_attributes=extra.get("search_attributes"),
                memo=extra.get("memo"),
                **parent,
            )
        ]
        # signals handed over by the run this one continued, as the other runtimes record them
        for name, payload in extra.get("carried") or []:
            made.append(
                self._emit(
                    event, EventType.SIGNAL_RECEIVED, signal_name=name, signal_payload=payload
                )
            )
        return made

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

    async def _on_workflow_execution_update_accepted_event_attributes(
        self, event: TemporalEvent
    ) -> list[HistoryEvent | _Retry]:
        request = event.workflow_execution_update_accepted_event_attributes.accepted_request
        values = await self._values(request.input.args.payloads)
        return [
            self._emit(
                event,
                EventType.UPDATE_ACCEPTED,
                signal_name=request.input.name,
                signal_payload=values[0] if values else None,
                change_id=request.meta.update_id,
            )
        ]

    async def _on_workflow_execution_update_completed_event_attributes(
        self, event: TemporalEvent
    ) -> list[HistoryEvent | _Retry]:
        attrs = event.workflow_execution_update_completed_event_attributes
        uid = attrs.meta.update_id
        name = next(
            (
                e.signal_name
                for e in self.events
                if e.type is EventType.UPDATE_ACCEPTED and e.change_id == uid
            ),
            None,
        )
        if attrs.outcome.HasField("failure"):
            failure = await self._failure(attrs.outcome.failure)
            return [
                self._emit(
                    event,
                    EventType.UPDATE_COMPLETED,
                    signal_name=name,
                    change_id=uid,
                    error=describe_failure(failure),
                    failure=failure,
                )
            ]
        result = await self._first(attrs.outcome.success.payloads)
        return [
            self._emit(
                event, EventType.UPDATE_COMPLETED, signal_name=name, change_id=uid, result=result
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
        attrs = event.workflow_execution_continued_as_new_event_attributes
        self.status = WorkflowStatus.CONTINUED_AS_NEW
        return [
            self._emit(
                event,
                EventType.WORKFLOW_CONTINUED_AS_NEW,
                input=await self._first(attrs.input.payloads),
                new_run_id=attrs.new_execution_run_id,
            )
        ]

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
        if reason == PARENT_CLOSE_REASON:
            # the engine's terminate (a parent-close policy): the run ends canceled
            self.status = WorkflowStatus.CANCELED
            failure = terminated_failure(f"terminated {reason}")
            return [self._emit(event, EventType.WORKFLOW_CANCELED, failure=failure)]
        if reason.startswith(TERMINATE_PREFIX):
            # TemporalExecutor.terminate: as the other runtimes record a terminate
            self.status = WorkflowStatus.CANCELED
            failure = terminated_failure(reason[len(TERMINATE_PREFIX) :])
            return [
                self._emit(event, EventType.CANCEL_REQUESTED, failure=failure),
                self._emit(event, EventType.WORKFLOW_CANCELED, failure=failure),
            ]
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
        failure = await plain_failure(self._converter, attrs.failure)
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
        values = await self._values(attrs.input.payloads)
        # a second argument: the workflow's heartbeat options (see _worker._schedule)
        beat = values[1] if len(values) > 1 and isinstance(values[1], dict) else {}
        act = _Act(
            attrs.activity_type.name,
            step,
            attempt,
            _when(event),
            _seconds(attrs.start_to_close_timeout),
            beat.get("heartbeat_timeout"),
        )
        self._acts[event.event_id] = act
        if (step, attempt) in self._started:
            return []  # the same attempt again, after its worker stopped
        self._started.add((step, attempt))
        value = values[0] if values else None
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
        if act is None:
            return []
        if timeout_type == TimeoutType.TIMEOUT_TYPE_HEARTBEAT:
            if act.heartbeat_timeout is None:
                return []  # the engine's heartbeats stopped: the worker is gone, run it again
            return self._attempt_failed(
                event,
                act,
                heartbeat_timeout_failure(act.name, act.attempt, act.heartbeat_timeout),
            )
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

    async def _on_marker_recorded_event_attributes(
        self, event: TemporalEvent
    ) -> list[HistoryEvent | _Retry]:
        # ctx.patched / deprecate_patch run as Temporal's own patches: a "core_patch"
        # marker whose "patch-data" detail is JSON {"id": ..., "deprecated": ...}
        attrs = event.marker_recorded_event_attributes
        data = attrs.details.get("patch-data")
        if attrs.marker_name != _PATCH_MARKER or data is None or not data.payloads:
            return []
        try:
            change_id = json.loads(data.payloads[0].data)["id"]
        except (ValueError, KeyError, TypeError):
            return []
        if not isinstance(change_id, str):
            return []
        return [self._emit(event, EventType.MARKER_RECORDED, change_id=change_id)]

    async def _on_timer_canceled_event_attributes(
        self, event: TemporalEvent
    ) -> list[HistoryEvent | _Retry]:
        self._timers.pop(event.timer_canceled_event_attributes.timer_id, None)
        return []

    # child workflows
    async def _memo(self, payload: Payload | None) -> dict[str, Any]:
        value = await self._first([payload]) if payload is not None else None
        return value if isinstance(value, dict) else {}

    async def _on_start_child_workflow_execution_initiated_event_attributes(
        self, event: TemporalEvent
    ) -> list[HistoryEvent | _Retry]:
        attrs = event.start_child_workflow_execution_initiated_event_attributes
        memo = await self._memo(attrs.memo.fields.get(CHILD_MEMO))
        timeout = None
        if attrs.HasField("workflow_execution_timeout"):
            timeout = _seconds(attrs.workflow_execution_timeout) or None
        child = _Child(
            attrs.workflow_id,
            attrs.workflow_type.name,
            memo.get("step"),
            memo.get("attempt"),
            timeout,
        )
        self._children[event.event_id] = child
        return [
            self._emit(
                event,
                EventType.CHILD_WORKFLOW_STARTED,
                child_workflow_id=child.workflow_id,
                child_workflow_type=child.workflow_type,
                input=await self._first(attrs.input.payloads),
                step=child.step,
                attempt=child.attempt,
                duration=timeout,
                parent_close_policy=memo.get("parent_close_policy"),
            )
        ]

    def _child_end(
        self, event: TemporalEvent, initiated: int, failure: FailureInfo | None, **fields: Any
    ) -> list[HistoryEvent | _Retry]:
        child = self._children.pop(initiated, None)
        if child is None:
            return []
        common: dict[str, Any] = {
            "child_workflow_id": child.workflow_id,
            "child_workflow_type": child.workflow_type,
            "step": child.step,
            "attempt": child.attempt,
        }
        if failure is None:
            return [self._emit(event, EventType.CHILD_WORKFLOW_COMPLETED, **common, **fields)]
        if child.step is not None:
            self._failures[child.step] = failure  # for on_retry, when its backoff starts
        return [
            self._emit(
                event,
                EventType.CHILD_WORKFLOW_FAILED,
                failure=failure,
                error=describe_failure(failure),
                **common,
                **fields,
            )
        ]

    async def _on_start_child_workflow_execution_failed_event_attributes(
        self, event: TemporalEvent
    ) -> list[HistoryEvent | _Retry]:
        attrs = event.start_child_workflow_execution_failed_event_attributes
        failure = FailureInfo(
            type="app.workflow._errors.WorkflowAlreadyRunningError",
            message=f"workflow {attrs.workflow_id!r} is already running; Temporal refused "
            f"to start it as a child ({attrs.cause})",
            non_retryable=True,
        )
        return self._child_end(event, attrs.initiated_event_id, failure)

    async def _on_child_workflow_execution_completed_event_attributes(
        self, event: TemporalEvent
    ) -> list[HistoryEvent | _Retry]:
        attrs = event.child_workflow_execution_completed_event_attributes
        return self._child_end(
            event,
            attrs.initiated_event_id,
            None,
            result=await self._first(attrs.result.payloads),
            new_run_id=attrs.workflow_execution.run_id,
        )

    async def _on_child_workflow_execution_failed_event_attributes(
        self, event: TemporalEvent
    ) -> list[HistoryEvent | _Retry]:
        attrs = event.child_workflow_execution_failed_event_attributes
        failure = await self._failure(attrs.failure)
        return self._child_end(
            event, attrs.initiated_event_id, failure, new_run_id=attrs.workflow_execution.run_id
        )

    async def _on_child_workflow_execution_canceled_event_attributes(
        self, event: TemporalEvent
    ) -> list[HistoryEvent | _Retry]:
        attrs = event.child_workflow_execution_canceled_event_attributes
        failure = encode_failure(asyncio.CancelledError("the child workflow was canceled"))
        return self._child_end(
            event, attrs.initiated_event_id, failure, new_run_id=attrs.workflow_execution.run_id
        )

    async def _on_child_workflow_execution_terminated_event_attributes(
        self, event: TemporalEvent
    ) -> list[HistoryEvent | _Retry]:
        attrs = event.child_workflow_execution_terminated_event_attributes
        failure = FailureInfo(
            type=TERMINATED, message="the child workflow was terminated", non_retryable=True
        )
        return self._child_end(
            event, attrs.initiated_event_id, failure, new_run_id=attrs.workflow_execution.run_id
        )

    async def _on_child_workflow_execution_timed_out_event_attributes(
        self, event: TemporalEvent
    ) -> list[HistoryEvent | _Retry]:
        attrs = event.child_workflow_execution_timed_out_event_attributes
        child = self._children.get(attrs.initiated_event_id)
        timeout = (child.timeout if child is not None else None) or 0.0
        failure = encode_failure(
            WorkflowTimeoutError(attrs.workflow_execution.workflow_id, timeout)
        )
        return self._child_end(
            event, attrs.initiated_event_id, failure, new_run_id=attrs.workflow_execution.run_id
        )

    async def _on_signal_external_workflow_execution_initiated_event_attributes(
        self, event: TemporalEvent
    ) -> list[HistoryEvent | _Retry]:
        attrs = event.signal_external_workflow_execution_initiated_event_attributes
        return [
            self._emit(
                event,
                EventType.CHILD_WORKFLOW_SIGNALED,
                child_workflow_id=attrs.workflow_execution.workflow_id,
                signal_name=attrs.signal_name,
                signal_payload=await self._first(attrs.input.payloads),
            )
        ]

    async def _on_request_cancel_external_workflow_execution_initiated_event_attributes(
        self, event: TemporalEvent
    ) -> list[HistoryEvent | _Retry]:
        # a child's handle.cancel(), as the other runtimes record it
        attrs = event.request_cancel_external_workflow_execution_initiated_event_attributes
        return [
            self._emit(
                event,
                EventType.CHILD_WORKFLOW_SIGNALED,
                child_workflow_id=attrs.workflow_execution.workflow_id,
                signal_name=CANCEL_SIGNAL,
            )
        ]


_PATCH_MARKER = "core_patch"


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
    if status is WorkflowExecutionStatus.COMPLETED:
        return WorkflowStatus.COMPLETED
    if status is WorkflowExecutionStatus.CONTINUED_AS_NEW:
        return WorkflowStatus.CONTINUED_AS_NEW
    if status is WorkflowExecutionStatus.CANCELED:
        return WorkflowStatus.CANCELED
    return WorkflowStatus.FAILED


_STATUS_QUERY = {
    WorkflowStatus.RUNNING: "ExecutionStatus = 'Running'",
    WorkflowStatus.COMPLETED: "ExecutionStatus = 'Completed'",
    # a child terminated by its parent's close policy reads as canceled (see its mapping)
    WorkflowStatus.CANCELED: "(ExecutionStatus = 'Canceled' OR ExecutionStatus = 'Terminated')",
    WorkflowStatus.CONTINUED_AS_NEW: "ExecutionStatus = 'ContinuedAsNew'",
    WorkflowStatus.FAILED: (
        "(ExecutionStatus = 'Failed' OR ExecutionStatus = 'TimedOut' "
        "OR ExecutionStatus = 'Terminated')"
    ),
}
