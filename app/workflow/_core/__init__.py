"""The deterministic core: no I/O, no clock, no randomness but the run's own."""

from ._context import SignalChannel, WorkflowContext
from ._instance import (
    WORKFLOW_TIMEOUT_STEP,
    Outcome,
    PendingActivity,
    PendingTimer,
    TimerKind,
    UpdateHandler,
    UpdateState,
    WorkflowInstance,
)

__all__ = [
    "WORKFLOW_TIMEOUT_STEP",
    "Outcome",
    "PendingActivity",
    "PendingTimer",
    "SignalChannel",
    "TimerKind",
    "UpdateHandler",
    "UpdateState",
    "WorkflowContext",
    "WorkflowInstance",
]
