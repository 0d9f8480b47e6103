"""The deterministic core: no I/O, no clock, no randomness but the run's own."""

from ._children import (
    CANCEL_SIGNAL,
    TERMINATED,
    ChildSignal,
    ChildTable,
    Parent,
    PendingChild,
    check_reason,
    child_end,
    parent_of,
    reset_prefix,
    reset_state,
    signal_id,
    terminated_failure,
)
from ._context import ChildWorkflowHandle, SignalChannel, WorkflowContext
from ._instance import (
    WORKFLOW_TIMEOUT_STEP,
    Outcome,
    PendingActivity,
    PendingTimer,
    TimerKind,
    WorkflowInstance,
)
from ._updates import UpdateHandler, UpdateState, UpdateTable

__all__ = [
    "TERMINATED",
    "ChildSignal",
    "ChildTable",
    "ChildWorkflowHandle",
    "Parent",
    "PendingChild",
    "child_end",
    "parent_of",
    "signal_id",
    "CANCEL_SIGNAL",
    "check_reason",
    "reset_prefix",
    "reset_state",
    "terminated_failure",
    "WORKFLOW_TIMEOUT_STEP",
    "Outcome",
    "PendingActivity",
    "PendingTimer",
    "SignalChannel",
    "TimerKind",
    "UpdateHandler",
    "UpdateState",
    "UpdateTable",
    "WorkflowContext",
    "WorkflowInstance",
]
