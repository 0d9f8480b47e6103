"""Child workflows on Temporal: each attempt of a child is a Temporal child workflow.

The core decides what to start and when: a child's attempt, and after a
failure whether another one starts after a backoff (a Temporal timer), as it
does for activities; each attempt is started with Temporal's retry policy
set to a single attempt. Temporal does the rest natively: it starts the
child on the parent's task queue (the child's workflow type is the engine's
workflow name), records its start and end in the parent's history, bounds it
with its execution timeout, delivers the parent's signals (recorded once as
``SignalExternalWorkflowExecutionInitiated``) and applies the parent-close
policy when the parent's run ends, so the core's ``ChildTable.closing`` list
is not used here.

Why retries stay with the core: Temporal's own child retries are runs of the
child that its parent never sees, so the parent's history could not show
each attempt's start and failure, and the parent could not tell
:class:`~app.workflow.ChildWorkflowError` how many attempts were made.

The step and attempt of each start travel in the child's memo
(``CHILD_MEMO``), so the parent's and the child's Temporal histories both
map back to the engine's events.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from temporalio import workflow as t_workflow
from temporalio.common import RetryPolicy as TemporalRetryPolicy
from temporalio.exceptions import ApplicationError as TemporalApplicationError
from temporalio.exceptions import CancelledError as TemporalCancelledError
from temporalio.exceptions import ChildWorkflowError as TemporalChildWorkflowError
from temporalio.exceptions import TerminatedError as TemporalTerminatedError
from temporalio.exceptions import TimeoutError as TemporalTimeoutError
from temporalio.exceptions import WorkflowAlreadyStartedError

from app.workflow import (
    EventType,
    FailureInfo,
    HistoryEvent,
    ParentClosePolicy,
    WorkflowAlreadyRunningError,
    WorkflowError,
    WorkflowTimeoutError,
)
from app.workflow._converter import describe_failure, encode_failure
from app.workflow._core import (
    CANCEL_SIGNAL,
    ChildSignal,
    PendingChild,
    WorkflowInstance,
    terminated_failure,
)

from ._common import CHILD_MEMO
from ._history import _failure_from_details

log = logging.getLogger("providers.temporal")

_POLICIES = {
    ParentClosePolicy.CANCEL: t_workflow.ParentClosePolicy.REQUEST_CANCEL,
    ParentClosePolicy.TERMINATE: t_workflow.ParentClosePolicy.TERMINATE,
    ParentClosePolicy.ABANDON: t_workflow.ParentClosePolicy.ABANDON,
}


def temporal_policy(policy: ParentClosePolicy) -> t_workflow.ParentClosePolicy:
    """Temporal's parent-close policy for the engine's ``policy``."""
    found = _POLICIES.get(policy)
    if found is None:
        known = ", ".join(p.value for p in _POLICIES)
        raise WorkflowError(
            f"parent_close_policy {policy!r} has no Temporal equivalent on the Temporal "
            f"provider; use one of: {known}"
        )
    return found


def child_failure(workflow_id: str, timeout: float | None, err: BaseException) -> FailureInfo:
    """The engine's failure for a Temporal child workflow that did not complete."""
    cause = err.cause if isinstance(err, TemporalChildWorkflowError) else err
    if isinstance(cause, TemporalApplicationError):
        return _failure_from_details(cause.details, cause.type or "", cause.message)
    if isinstance(cause, TemporalTimeoutError):
        return encode_failure(WorkflowTimeoutError(workflow_id, timeout or 0.0))
    if isinstance(cause, TemporalTerminatedError):
        return terminated_failure(cause.message or "terminated")
    if isinstance(cause, TemporalCancelledError):
        return encode_failure(asyncio.CancelledError("the child workflow was canceled"))
    if isinstance(err, WorkflowAlreadyStartedError):
        return encode_failure(WorkflowAlreadyRunningError(workflow_id, err.run_id or "?"))
    return encode_failure(cause or err)


Push = Callable[[Callable[[], HistoryEvent | None]], None]
MakeEvent = Callable[..., HistoryEvent]


class ChildRunner:
    """The child workflows of one parent run, driven from the parent's Temporal workflow.

    ``start`` and ``signal`` issue Temporal commands for what the core asked
    (from the parent's Temporal loop); a child's end comes back through
    ``push`` as an engine event, applied in order with the run's other inputs.
    """

    def __init__(
        self,
        instance: WorkflowInstance,
        make_event: MakeEvent,
        push: Push,
        task_timeout: float | None,
    ) -> None:
        self._instance = instance
        self._event = make_event
        self._push = push
        self._task_timeout = task_timeout
        # the Temporal handle of each child workflow id's latest start
        self._handles: dict[str, asyncio.Future[t_workflow.ChildWorkflowHandle[Any, Any]]] = {}
        self._tasks: set[asyncio.Future[None]] = set()

    def _spawn(self, work: Any) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def start(self, child: PendingChild) -> None:
        """Start the child's current attempt as a Temporal child workflow."""
        policy = temporal_policy(child.policy)
        started: asyncio.Future[t_workflow.ChildWorkflowHandle[Any, Any]] = (
            asyncio.get_running_loop().create_future()
        )
        self._handles[child.workflow_id] = started
        self._spawn(self._run(child, child.attempt, policy, started))

    async def _run(
        self,
        child: PendingChild,
        attempt: int,
        policy: t_workflow.ParentClosePolicy,
        started: asyncio.Future[t_workflow.ChildWorkflowHandle[Any, Any]],
    ) -> None:
        step, wid, kind = child.step, child.workflow_id, child.workflow_type
        timeout = child.timeout
        try:
            handle = await t_workflow.start_child_workflow(
                kind,
                args=[child.input],
                id=wid,
                execution_timeout=timedelta(seconds=timeout) if timeout is not None else None,
                task_timeout=(
                    timedelta(seconds=self._task_timeout) if self._task_timeout else None
                ),
                retry_policy=TemporalRetryPolicy(maximum_attempts=1),
                parent_close_policy=policy,
                memo={
                    CHILD_MEMO: {
                        "step": step,
                        "attempt": attempt,
                        "parent_close_policy": child.policy.value,
                    }
                },
                static_summary=f"child workflow {kind} (step {step}, attempt {attempt})",
            )
        except asyncio.CancelledError:
            started.cancel()
            return
        except Exception as err:  # the start failed, e.g. the id is taken by a running workflow
            started.set_exception(err)
            started.exception()  # retrieved: a signal waiting on it logs the failure itself
            self._ended(step, attempt, failure=child_failure(wid, timeout, err))
            return
        started.set_result(handle)
        try:
            result = await handle
        except asyncio.CancelledError:
            return
        except TemporalChildWorkflowError as err:
            self._ended(step, attempt, failure=child_failure(wid, timeout, err))
            return
        self._ended(step, attempt, result=result, run_id=handle.first_execution_run_id)

    def _ended(
        self,
        step: int,
        attempt: int,
        *,
        result: Any = None,
        failure: FailureInfo | None = None,
        run_id: str | None = None,
    ) -> None:
        instance = self._instance

        def ended() -> HistoryEvent | None:
            if not instance.children.is_current(step, attempt):
                return None
            if failure is None:
                return self._event(
                    EventType.CHILD_WORKFLOW_COMPLETED,
                    result=result,
                    step=step,
                    attempt=attempt,
                    new_run_id=run_id,
                )
            return self._event(
                EventType.CHILD_WORKFLOW_FAILED,
                failure=failure,
                error=describe_failure(failure),
                step=step,
                attempt=attempt,
            )

        self._push(ended)

    def signal(self, sig: ChildSignal) -> None:
        """Send the child a signal, once its Temporal child workflow has started."""
        started = self._handles.get(sig.workflow_id)
        if started is None:  # the core only signals children it started
            raise WorkflowError(
                f"no child workflow {sig.workflow_id!r} was started by this run, so signal "
                f"{sig.name!r} cannot be sent to it"
            )
        self._spawn(self._send(started, sig.name, sig.payload))

    async def _send(
        self,
        started: asyncio.Future[t_workflow.ChildWorkflowHandle[Any, Any]],
        name: str,
        payload: Any,
    ) -> None:
        try:
            handle = await asyncio.shield(started)
            if name == CANCEL_SIGNAL:  # the parent's handle.cancel(): Temporal's own
                handle.cancel()  # a Temporal child handle is a task: cancelling it cancels it
            else:
                await handle.signal(name, payload)
        except asyncio.CancelledError:
            return
        except Exception as err:  # the child could not start, or has ended: the signal is lost
            log.info("signal %r to a child workflow was not delivered: %s", name, err)
