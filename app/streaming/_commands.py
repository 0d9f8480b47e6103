"""The commands of the commands topic, as the executor sees them (``schemas/command.avsc``)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from app.workflow._types import FailureInfo, ParentClosePolicy


class CommandKind:
    """The ``kind`` values of a command."""

    START = "start"
    SIGNAL = "signal"
    CANCEL = "cancel"
    QUERY = "query"
    ACTIVITY_RESULT = "activity_result"
    TIMER_FIRED = "timer_fired"
    UPDATE = "update"
    """Run update handler ``name`` with ``payload``; ``command_id`` is the update id.
    The reply comes when the update completes (a resend of it only waits again)."""
    HEARTBEAT = "heartbeat"
    """From an activity worker: the attempt (step, attempt) is alive; ``payload`` its details."""
    RESUME = "resume"
    """Engine-internal: a new owner rebuilds the run and dispatches its pending work."""
    MIGRATE = "migrate"
    """Engine-internal: this partition's workflows move to the generation in ``step``."""
    HANDOVER = "handover"
    """Engine-internal: a whole run (header and history) arriving from an older generation."""
    PAUSE = "pause"
    """Hold the workflow (``payload``: the reason); see ``DefaultExecutor.pause``."""
    UNPAUSE = "unpause"
    """Resume a paused workflow (``payload``: the reason). Not ``resume``: that name is
    the engine's own takeover command."""
    RESET = "reset"
    """Start a new run from the latest run's events up to ``step`` (``payload``: the
    reason); the new run's id is derived from ``command_id``."""
    CHILD_RESULT = "child_result"
    """Engine-internal: the last run of a child workflow ended. Sent to the parent
    (``run_id``: the parent's run, ``step`` and ``attempt``: the parent's step that
    started it); ``name`` is the child's status, ``payload`` its result, ``failure``
    its failure, ``child_run_id`` its last run."""
    ALL = (
        START,
        SIGNAL,
        CANCEL,
        QUERY,
        UPDATE,
        ACTIVITY_RESULT,
        TIMER_FIRED,
        HEARTBEAT,
        RESUME,
        MIGRATE,
        HANDOVER,
        CHILD_RESULT,
        PAUSE,
        UNPAUSE,
        RESET,
    )


@dataclass(frozen=True)
class ParentRef:
    """The parent of a child workflow: its run and the step and attempt that started it."""

    workflow_id: str
    run_id: str
    step: int
    attempt: int
    close_policy: str = ParentClosePolicy.CANCEL.value


@dataclass(frozen=True)
class Command:
    """A decoded command (see ``schemas/command.avsc``); payloads are JSON values."""

    command_id: str
    kind: str
    workflow_id: str
    issued_at: datetime
    name: str | None = None
    payload: Any = None
    sender_id: str | None = None
    reply_to: str | None = None
    timeout_seconds: float | None = None
    run_id: str | None = None
    step: int | None = None
    attempt: int | None = None
    duration: float | None = None
    failure: FailureInfo | None = None
    route: int | None = None
    parent: ParentRef | None = None
    """start: the parent of a child workflow; cancel: the parent closing its child."""
    child_run_id: str | None = None
    """child_result: the child's last run."""
    search_attributes: dict[str, Any] | None = None
    """start: the workflow's search attributes."""
    memo: dict[str, Any] | None = None
    """start: the workflow's memo."""
