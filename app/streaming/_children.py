"""Child workflows across partitions: the commands a parent and its children exchange.

A parent and its child may be owned by different partitions (and workers), so
everything between them travels as commands on the commands topic, keyed by
the workflow they are for, each with an id derived from what decided it, so
a copy sent again is a duplicate:

* ``start`` to the child, id ``child/<parent run>/<step>/<attempt>``, with the
  parent's reference (``parent``) and the child's type, input and timeout. The
  child's owner starts the run, or attaches to the run that command already
  made (the id is its start command), or, for an id running for someone
  else or a type it does not have, answers with a failure at once;
* ``child_result`` to the parent, id ``child-result/<child run>/<step>/<attempt>``,
  when the child's last run ended (completed, failed or canceled, not continued
  as new): ``run_id``, ``step`` and ``attempt`` name the parent's attempt, which
  records it only while that attempt is current;
* ``signal`` to the child under :func:`~app.workflow._core.signal_id`, so the
  child's ``seen`` ids drop a copy;
* ``cancel`` to the child when the parent's run ends with the child running,
  under the ``cancel`` close policy; under ``terminate`` the cancel carries
  a ``Terminated`` failure and the child's run ends at once. The cancel names
  the parent: a run of the same id started by someone else ignores it.

Liveness: the parent's owner sends the start of a child that has not answered
again after the re-drive delay (``_pending.PendingStarts``); a duplicate start of
a child that has ended answers with its result again, one of a running child
changes nothing. A resume (a new owner) sends the starts of pending children
and the signals recorded for them again.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from app.workflow._core import (
    CANCEL_SIGNAL,
    ChildSignal,
    Parent,
    PendingChild,
    child_end,
    signal_id,
    terminated_failure,
)
from app.workflow._core import parent_of as core_parent_of
from app.workflow._types import (
    TERMINAL_EVENTS,
    EventType,
    FailureInfo,
    HistoryEvent,
    ParentClosePolicy,
    WorkflowState,
    WorkflowStatus,
)

from ._commands import Command, CommandKind, ParentRef

ALREADY_RUNNING = "WorkflowAlreadyRunningError"
NOT_REGISTERED = "WorkflowNotRegisteredError"


def start_id(parent_run_id: str, step: int, attempt: int) -> str:
    """The command id of a child's start: the same for every copy of one attempt."""
    return f"child/{parent_run_id}/{step}/{attempt}"


def parent_of(state: WorkflowState) -> ParentRef | None:
    """The parent named by the run's ``workflow_started``, if it is a child."""
    parent = core_parent_of(state)
    if parent is None:
        return None
    return ParentRef(*parent[:4], parent.policy.value)


def started_fields(parent: ParentRef | None) -> dict[str, Any]:
    """The fields of a child's ``workflow_started`` (every run of it) that name its parent."""
    if parent is None:
        return {}
    policy = ParentClosePolicy(parent.close_policy)
    ref = Parent(parent.workflow_id, parent.run_id, parent.step, parent.attempt, policy)
    return ref.started_fields()


def start(parent: WorkflowState, event: HistoryEvent | PendingChild, now: datetime) -> Command:
    """The start of the child a ``child_workflow_started`` (or a pending child) stands for."""
    if isinstance(event, HistoryEvent):
        assert event.child_workflow_id is not None and event.step is not None
        wid, kind, payload = event.child_workflow_id, event.child_workflow_type, event.input
        step, attempt, timeout = event.step, event.attempt or 1, event.duration
        policy = event.parent_close_policy or ParentClosePolicy.CANCEL
    else:
        wid, kind, payload = event.workflow_id, event.workflow_type, event.input
        step, attempt, timeout, policy = event.step, event.attempt, event.timeout, event.policy
    return Command(
        command_id=start_id(parent.run_id, step, attempt),
        kind=CommandKind.START,
        workflow_id=wid,
        issued_at=now,
        name=kind,
        payload=payload,
        timeout_seconds=timeout,
        parent=ParentRef(parent.workflow_id, parent.run_id, step, attempt, policy.value),
    )


def signal(parent: WorkflowState, sig: HistoryEvent | ChildSignal, now: datetime) -> Command:
    """The delivery of a signal the parent recorded (``child_workflow_signaled``)."""
    if isinstance(sig, HistoryEvent):
        assert sig.child_workflow_id is not None and sig.step is not None
        wid, step, name, payload = (
            sig.child_workflow_id,
            sig.step,
            sig.signal_name,
            sig.signal_payload,
        )
    else:
        wid, step, name, payload = sig.workflow_id, sig.step, sig.name, sig.payload
    if name == CANCEL_SIGNAL:  # the parent's handle.cancel(): a plain cancel, once by id
        return Command(
            command_id=signal_id(parent.run_id, step),
            kind=CommandKind.CANCEL,
            workflow_id=wid,
            issued_at=now,
            sender_id=parent.workflow_id,
        )
    return Command(
        command_id=signal_id(parent.run_id, step),
        kind=CommandKind.SIGNAL,
        workflow_id=wid,
        issued_at=now,
        name=name,
        payload=payload,
        sender_id=parent.workflow_id,
    )


def result(child: WorkflowState, now: datetime) -> Command | None:
    """The answer to the parent of ``child``, whose last run ended; None if it has none."""
    parent = parent_of(child)
    if parent is None or child.status in (WorkflowStatus.RUNNING, WorkflowStatus.CONTINUED_AS_NEW):
        return None
    last = child.history[-1] if child.history else None
    failure = last.failure if last is not None and last.type in TERMINAL_EVENTS else None
    if failure is None and child.status is WorkflowStatus.FAILED:
        failure = FailureInfo(type="Error", message=child.error or "the child workflow failed")
    return _answer(
        parent, child.workflow_id, child.run_id, child.status, child.result, failure, now
    )


def refusal(cmd: Command, message: str, error_type: str, now: datetime) -> Command | None:
    """A failure answered at once to the parent of the child start ``cmd``; None if none."""
    parent = cmd.parent
    if parent is None:
        return None
    failure = FailureInfo(type=error_type, message=message, non_retryable=True)
    return _answer(parent, cmd.workflow_id, None, WorkflowStatus.FAILED, None, failure, now)


def _answer(
    parent: ParentRef,
    child_id: str,
    child_run_id: str | None,
    status: WorkflowStatus,
    value: Any,
    failure: FailureInfo | None,
    now: datetime,
) -> Command:
    run_part = child_run_id or f"refused/{child_id}"
    return Command(
        command_id=f"child-result/{run_part}/{parent.step}/{parent.attempt}",
        kind=CommandKind.CHILD_RESULT,
        workflow_id=parent.workflow_id,
        issued_at=now,
        name=status.value,
        payload=value,
        run_id=parent.run_id,
        step=parent.step,
        attempt=parent.attempt,
        failure=failure,
        child_run_id=child_run_id,
    )


def closing(
    parent: WorkflowState, children: list[tuple[str, ParentClosePolicy]], now: datetime
) -> list[Command]:
    """What the parent's end does to the children it leaves running, by their policy."""
    out = []
    for child_id, policy in children:
        if policy is ParentClosePolicy.ABANDON:
            continue
        failure = None
        if policy is ParentClosePolicy.TERMINATE:
            failure = terminated_failure(
                f"terminated: its parent workflow {parent.workflow_id!r} ended "
                f"({parent.status.value})"
            )
        out.append(
            Command(
                command_id=f"child-close/{parent.run_id}/{child_id}",
                kind=CommandKind.CANCEL,
                workflow_id=child_id,
                issued_at=now,
                sender_id=parent.workflow_id,
                failure=failure,
                parent=ParentRef(parent.workflow_id, parent.run_id, 0, 0, policy.value),
            )
        )
    return out


def closes_another(state: WorkflowState, cmd: Command) -> bool:
    """Whether ``cmd`` closes a child for a parent that is not this run's parent."""
    if cmd.parent is None:
        return False
    parent = parent_of(state)
    return parent is None or (parent.workflow_id, parent.run_id) != (
        cmd.parent.workflow_id,
        cmd.parent.run_id,
    )


def end_event_fields(cmd: Command) -> tuple[EventType, dict[str, Any]] | None:
    """The parent's event for a ``child_result`` (see ``child_end``); None if malformed."""
    try:
        status = WorkflowStatus(cmd.name or "")
    except ValueError:
        return None
    kind, fields = child_end(status, cmd.payload, cmd.failure)
    return kind, {**fields, "new_run_id": cmd.child_run_id}
