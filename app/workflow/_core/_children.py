"""Child workflows as the core sees them: commands out, results in.

``ctx.execute_child`` / ``ctx.start_child`` take the next step number and ask
the runtime for a child run: the runtime records ``child_workflow_started``
(an echo, like ``activity_started``), starts the child with its parent's
reference in the child's ``workflow_started``, and when the child's last run
ends it records ``child_workflow_completed`` or ``child_workflow_failed`` in
the parent (an input, carrying the step and attempt it answers). A failed
child is started again after a backoff while its retry policy allows (the
same child workflow id, a new run). ``handle.signal`` records
``child_workflow_signaled`` and the runtime delivers it under the id
:func:`signal_id`, so a delivery repeated after a crash is dropped.

When the parent's run ends, :meth:`ChildTable.closing` lists the children it
started that have not ended, with their parent-close policy, for the runtime
to cancel, terminate or leave running.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, NamedTuple

from .._converter import decode_failure, encode_failure, from_payload, signature_of
from .._errors import ChildWorkflowError, InvalidArgumentError, PayloadError, WorkflowTimeoutError
from .._types import (
    TERMINAL_EVENTS,
    EventType,
    FailureInfo,
    HistoryEvent,
    ParentClosePolicy,
    RetryPolicy,
    WorkflowState,
    WorkflowStatus,
)

if TYPE_CHECKING:
    from ._instance import WorkflowInstance


class Parent(NamedTuple):
    """The call a child run answers: its parent's workflow and run, step and attempt."""

    workflow_id: str
    run_id: str
    step: int
    attempt: int
    policy: ParentClosePolicy

    def started_fields(self) -> dict[str, Any]:
        """The fields of the child's ``workflow_started`` (every run of it) that name it."""
        return {
            "parent_workflow_id": self.workflow_id,
            "parent_run_id": self.run_id,
            "step": self.step,
            "attempt": self.attempt,
            "parent_close_policy": self.policy,
        }


def parent_of(state: WorkflowState) -> Parent | None:
    """The parent named by the run's ``workflow_started``; None if it is not a child."""
    first = state.history[0] if state.history else None
    if first is None or first.parent_workflow_id is None or first.parent_run_id is None:
        return None
    return Parent(
        first.parent_workflow_id,
        first.parent_run_id,
        first.step or 0,
        first.attempt or 1,
        first.parent_close_policy or ParentClosePolicy.CANCEL,
    )


TERMINATED = "Terminated"
"""The failure type of a run ended by a terminate (a parent-close policy)."""


@dataclass
class PendingChild:
    """A child workflow the parent waits on; the runtime starts it once ``recorded``."""

    step: int
    workflow_type: str
    fn: Callable[..., Any] | str
    """The function, or the registered type name it was started by (result: plain JSON)."""
    workflow_id: str
    input: Any
    attempt: int
    retry: RetryPolicy
    timeout: float | None
    policy: ParentClosePolicy
    recorded: bool = False
    backing_off: bool = False
    future: asyncio.Future[Any] | None = field(default=None, repr=False)


@dataclass
class ChildSignal:
    """A signal the parent sends to a child; the runtime delivers it once ``recorded``."""

    step: int
    workflow_id: str
    name: str
    payload: Any
    recorded: bool = False


CANCEL_SIGNAL = "__cancel__"
"""The signal name a parent's ``handle.cancel()`` is recorded under; runtimes deliver
it as a cancel of the child, not as a signal."""


def signal_id(parent_run_id: str, step: int) -> str:
    """The id a child signal is delivered under: the same on every redelivery."""
    return f"child-signal/{parent_run_id}/{step}"


def child_end(
    status: WorkflowStatus, result: Any, failure: FailureInfo | None
) -> tuple[EventType, dict[str, Any]]:
    """The parent's event for a child whose last run ended with ``status``."""
    if status is WorkflowStatus.COMPLETED:
        return EventType.CHILD_WORKFLOW_COMPLETED, {"result": result}
    if failure is None:
        failure = encode_failure(asyncio.CancelledError("the child workflow was canceled"))
    return EventType.CHILD_WORKFLOW_FAILED, {"failure": failure, "error": failure.message}


_TIMEOUT = f"{WorkflowTimeoutError.__module__}.{WorkflowTimeoutError.__qualname__}"


def _cause(child: PendingChild, failure: FailureInfo) -> BaseException:
    if failure.type == _TIMEOUT:  # its constructor takes more than a message
        return WorkflowTimeoutError(child.workflow_id, child.timeout or 0.0)
    return decode_failure(failure)


def check_reason(reason: Any, what: str) -> str:
    """A ``reason`` given to ``terminate`` (or ``pause``): a str, at most 1,000 characters."""
    if not isinstance(reason, str) or len(reason) > 1000:
        raise InvalidArgumentError(
            f"{what} reason must be a str of at most 1000 characters, got {reason!r:.80}"
        )
    return reason


def reset_prefix(state: WorkflowState, to_event_id: Any) -> list[HistoryEvent]:
    """The events a reset to ``to_event_id`` copies: from 1 to it, none of them terminal."""
    ends = [e.id for e in state.history if e.type in TERMINAL_EVENTS]
    last = min(ends) - 1 if ends else len(state.history)
    if (
        isinstance(to_event_id, bool)
        or not isinstance(to_event_id, int)
        or not 1 <= to_event_id <= last
    ):
        raise InvalidArgumentError(
            f"reset of {state.workflow_id!r}: to_event_id must be an event id from 1 to "
            f"{last} (the run's last event before its end), got {to_event_id!r}"
        )
    return [e.model_copy() for e in state.history[:to_event_id]]


def reset_state(
    old: WorkflowState, prefix: list[HistoryEvent], run_id: str, now: datetime, reason: str
) -> WorkflowState:
    """The new run a reset makes: ``prefix`` (from :func:`reset_prefix`), then a
    ``workflow_reset`` naming the old run."""
    marker = HistoryEvent(
        id=len(prefix) + 1,
        type=EventType.WORKFLOW_RESET,
        timestamp=now,
        change_id=old.run_id,
        reason=reason,
    )
    return old.model_copy(
        update={
            "run_id": run_id,
            "status": WorkflowStatus.RUNNING,
            "result": None,
            "error": None,
            "history": [*prefix, marker],
            "created_at": now,
            "updated_at": now,
        }
    )


def terminated_failure(reason: str) -> FailureInfo:
    """The failure recorded for a run that was terminated."""
    return FailureInfo(type=TERMINATED, message=reason, non_retryable=True)


class ChildTable:
    """The children of one run, by step."""

    def __init__(self, instance: WorkflowInstance) -> None:
        self._instance = instance
        self.children: dict[int, PendingChild] = {}
        self.signals: dict[int, ChildSignal] = {}
        self._closing: list[tuple[str, ParentClosePolicy]] = []

    # -- what the runtime reads -----------------------------------------------
    def pending(self) -> list[PendingChild]:
        """Children to run now (recorded or about to be), not those backing off."""
        return [c for c in self.children.values() if not c.backing_off]

    def is_current(self, step: int, attempt: int) -> bool:
        child = self.children.get(step)
        return child is not None and child.attempt == attempt and child.recorded

    def closing(self) -> list[tuple[str, ParentClosePolicy]]:
        """Children left running when the run ended: (workflow id, policy), by step."""
        return list(self._closing)

    def echoes(self, next_id: int, now: datetime) -> list[HistoryEvent]:
        events: list[HistoryEvent] = []
        for child in self.pending():
            if not child.recorded:
                events.append(
                    HistoryEvent(
                        id=next_id + len(events),
                        type=EventType.CHILD_WORKFLOW_STARTED,
                        timestamp=now,
                        child_workflow_id=child.workflow_id,
                        child_workflow_type=child.workflow_type,
                        input=child.input,
                        step=child.step,
                        attempt=child.attempt,
                        duration=child.timeout,
                        parent_close_policy=child.policy,
                    )
                )
        for sig in self.signals.values():
            if not sig.recorded:
                events.append(
                    HistoryEvent(
                        id=next_id + len(events),
                        type=EventType.CHILD_WORKFLOW_SIGNALED,
                        timestamp=now,
                        child_workflow_id=sig.workflow_id,
                        signal_name=sig.name,
                        signal_payload=sig.payload,
                        step=sig.step,
                    )
                )
        return events

    def snapshot(self) -> list[tuple[Any, ...]]:
        return sorted(
            (c.step, c.workflow_id, c.attempt, c.recorded, c.backing_off)
            for c in self.children.values()
        ) + sorted((s.step, s.workflow_id, s.name, s.recorded) for s in self.signals.values())

    def summary(self) -> list[str]:
        return [
            f"child workflow {c.workflow_id!r} at step {c.step} (attempt {c.attempt})"
            for c in sorted(self.children.values(), key=lambda c: c.step)
        ]

    def expectation(self, step: int) -> str | None:
        child = self.children.get(step)
        if child is None:
            return None
        state = "backing off" if child.backing_off else f"attempt {child.attempt}"
        return f"child workflow {child.workflow_id!r} at step {step} ({state})"

    # -- commands from the context ----------------------------------------------
    def start(
        self,
        fn: Callable[..., Any] | str,
        workflow_type: str,
        workflow_id: str | None,
        payload: Any,
        retry: RetryPolicy,
        timeout: float | None,
        policy: ParentClosePolicy,
    ) -> PendingChild:
        instance = self._instance
        step = instance.next_step()
        wid = workflow_id or f"{instance.workflow_id}-{instance.run_id[:8]}-{step}"
        child = PendingChild(
            step,
            workflow_type,
            fn,
            wid,
            payload,
            1,
            retry,
            timeout,
            policy,
            future=instance.loop.create_future(),
        )
        self.children[step] = child
        return child

    def signal(self, workflow_id: str, name: str, payload: Any) -> None:
        step = self._instance.next_step()
        self.signals[step] = ChildSignal(step, workflow_id, name, payload)

    # -- history ----------------------------------------------------------------
    def on_started(self, event: HistoryEvent) -> bool:
        """Match a ``child_workflow_started`` echo; False if it matches nothing."""
        child = self.children.get(event.step if event.step is not None else -1)
        if (
            child is None
            or child.workflow_id != event.child_workflow_id
            or child.attempt != event.attempt
            or child.recorded
            or child.backing_off
        ):
            return False
        child.recorded = True
        return True

    def on_signaled(self, event: HistoryEvent) -> bool:
        sig = self.signals.get(event.step if event.step is not None else -1)
        if sig is None or sig.recorded or sig.name != event.signal_name:
            return False
        sig.recorded = True
        return True

    def on_end(self, event: HistoryEvent) -> bool:
        """Apply a child's end; False if no current child attempt matches it."""
        step = event.step if event.step is not None else -1
        if not self.is_current(step, event.attempt or 0):
            return False
        child = self.children[step]
        future = child.future
        assert future is not None
        if event.type is EventType.CHILD_WORKFLOW_COMPLETED:
            del self.children[step]
            if not future.done():
                try:
                    hint = signature_of(child.fn, 1).return_hint if callable(child.fn) else Any
                    value = from_payload(
                        event.result, hint, f"result of child workflow {child.workflow_id!r}"
                    )
                except PayloadError as exc:
                    future.set_exception(exc)
                else:
                    future.set_result(value)
            return True
        failure = event.failure or FailureInfo(type="Error", message=event.error or "")
        if not failure.non_retryable and child.attempt < child.retry.max_attempts:
            seed = f"{self._instance.run_id}:child:{step}:{child.attempt}"
            delay = child.retry.interval(child.attempt, random.Random(seed).uniform(-1.0, 1.0))
            child.backing_off = True
            self._instance.arm_retry(step, child.attempt, child.workflow_type, delay)
            return True
        del self.children[step]
        if not future.done():
            err = ChildWorkflowError(
                child.workflow_id, child.workflow_type, child.attempt, failure.message
            )
            err.__cause__ = _cause(child, failure)
            future.set_exception(err)
        return True

    def retry(self, step: int) -> bool:
        """The backoff of a failed child passed: its next attempt starts. False: not a child."""
        child = self.children.get(step)
        if child is None:
            return False
        child.attempt += 1
        child.backing_off = False
        child.recorded = False
        return True

    def settle(self) -> None:
        """The run ended: what is left running is handed to the parent-close policy."""
        self._closing = [
            (c.workflow_id, c.policy)
            for c in sorted(self.children.values(), key=lambda c: c.step)
            if c.recorded and not c.backing_off
        ]
        self.children.clear()
        self.signals = {s: sig for s, sig in self.signals.items() if not sig.recorded}
