"""The deterministic core: no I/O, no clock, no randomness but the run's own."""

from ._context import SignalChannel, WorkflowContext
from ._instance import (
    WORKFLOW_TIMEOUT_STEP,
    Outcome,
    PendingActivity,
    PendingTimer,
    TimerKind,
    WorkflowInstance,
)

__all__ = [
    "WORKFLOW_TIMEOUT_STEP",
    "Outcome",
    "PendingActivity",
    "PendingTimer",
    "SignalChannel",
    "TimerKind",
    "WorkflowContext",
    "WorkflowInstance",
]
