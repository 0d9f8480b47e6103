"""Value types of the public API: options, signals, retry policy, history and state."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, cast

from pydantic import BaseModel, ConfigDict, Field

from ._errors import InvalidArgumentError

Duration = float | int | timedelta
"""A duration: seconds as a number, or a :class:`datetime.timedelta`."""


def to_seconds(value: Duration, what: str, *, allow_zero: bool = False) -> float:
    """Normalise a duration to float seconds, rejecting bad values with a named error."""
    if isinstance(value, bool) or not isinstance(value, (int, float, timedelta)):
        raise InvalidArgumentError(
            f"{what} must be seconds (a number) or a timedelta, got {type(value).__name__}"
        )
    seconds = value.total_seconds() if isinstance(value, timedelta) else float(value)
    if math.isnan(seconds) or math.isinf(seconds):
        raise InvalidArgumentError(f"{what} must be a finite duration, got {value!r}")
    if seconds < 0 or (seconds == 0 and not allow_zero):
        bound = "zero or more" if allow_zero else "more than zero"
        raise InvalidArgumentError(f"{what} must be {bound} seconds, got {value!r}")
    return seconds


def _optional_seconds(value: Duration | None, what: str) -> float | None:
    return None if value is None else to_seconds(value, what)


class ParentClosePolicy(StrEnum):
    """What happens to a child workflow still running when its parent's run ends.

    ``CANCEL`` (the default) asks it to stop (its code sees ``CancelledError``),
    ``TERMINATE`` ends it at once without running more of its code, and
    ``ABANDON`` lets it run on.
    """

    CANCEL = "cancel"
    ABANDON = "abandon"
    TERMINATE = "terminate"


class WorkflowStatus(StrEnum):
    """Where a workflow run stands."""

    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELED = "canceled"
    CONTINUED_AS_NEW = "continued_as_new"


class EventType(StrEnum):
    """The kinds of :class:`HistoryEvent`.

    The seed's nine kinds, plus ``cancel_requested``: a cancel must be in the
    history so that replay delivers it at the same point of the code, and
    ``marker_recorded``: the code took the new branch of ``ctx.patched(id)``
    (or reached ``ctx.deprecate_patch(id)``), ``change_id`` naming the patch,
    and ``workflow_continued_as_new``: the run ended by ``ctx.continue_as_new``,
    ``input`` holding the next run's input and ``new_run_id`` its run id.

    The ``child_workflow_*`` events are a parent's view of its children:
    ``child_workflow_started`` (the parent asked for it: ``child_workflow_id``,
    ``child_workflow_type``, ``input``, at a ``step`` and ``attempt``),
    ``child_workflow_completed`` / ``child_workflow_failed`` (its end, with its
    ``result`` or ``failure`` and its last run in ``new_run_id``) and
    ``child_workflow_signaled`` (the parent sent it ``signal_name``).

    ``search_attributes_upserted`` records ``ctx.upsert_search_attributes``:
    its ``search_attributes`` change the workflow's (a None value removes one).

    ``workflow_reset`` follows the events a run was reset to (``reset``): it
    names the run they were copied from in ``change_id``, with the ``reason``.

    ``workflow_paused`` and ``workflow_resumed`` (each with its ``reason``)
    bracket a pause: in between, the inputs recorded (signals, updates,
    activity results, timers) are held, and applied in order at the resume;
    no new activity attempt or child starts, and only the workflow timeout
    and a terminate act at once.

    ``update_accepted`` records an update that passed its validator (its
    name in ``signal_name``, its argument in ``signal_payload``, its update
    id in ``change_id``); ``update_completed`` records the handler's
    ``result`` or ``failure`` under the same update id (``change_id``).
    """

    WORKFLOW_STARTED = "workflow_started"
    WORKFLOW_COMPLETED = "workflow_completed"
    WORKFLOW_FAILED = "workflow_failed"
    WORKFLOW_CANCELED = "workflow_canceled"
    ACTIVITY_STARTED = "activity_started"
    ACTIVITY_COMPLETED = "activity_completed"
    ACTIVITY_FAILED = "activity_failed"
    SIGNAL_RECEIVED = "signal_received"
    TIMER_FIRED = "timer_fired"
    CANCEL_REQUESTED = "cancel_requested"
    MARKER_RECORDED = "marker_recorded"
    UPDATE_ACCEPTED = "update_accepted"
    UPDATE_COMPLETED = "update_completed"
    WORKFLOW_CONTINUED_AS_NEW = "workflow_continued_as_new"
    CHILD_WORKFLOW_STARTED = "child_workflow_started"
    CHILD_WORKFLOW_COMPLETED = "child_workflow_completed"
    CHILD_WORKFLOW_FAILED = "child_workflow_failed"
    CHILD_WORKFLOW_SIGNALED = "child_workflow_signaled"
    SEARCH_ATTRIBUTES_UPSERTED = "search_attributes_upserted"
    WORKFLOW_PAUSED = "workflow_paused"
    WORKFLOW_RESUMED = "workflow_resumed"
    WORKFLOW_RESET = "workflow_reset"


TERMINAL_EVENTS = frozenset(
    {
        EventType.WORKFLOW_COMPLETED,
        EventType.WORKFLOW_FAILED,
        EventType.WORKFLOW_CANCELED,
        EventType.WORKFLOW_CONTINUED_AS_NEW,
    }
)

TERMINAL_STATUS = {
    EventType.WORKFLOW_COMPLETED: WorkflowStatus.COMPLETED,
    EventType.WORKFLOW_FAILED: WorkflowStatus.FAILED,
    EventType.WORKFLOW_CANCELED: WorkflowStatus.CANCELED,
    EventType.WORKFLOW_CONTINUED_AS_NEW: WorkflowStatus.CONTINUED_AS_NEW,
}
"""The status a run has once its terminal event is recorded."""


def suggested_after(value: Any, what: str) -> int | None:
    """Validate a ``continue_as_new_suggested_after`` event count (None: never suggest)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidArgumentError(
            f"{what} must be a whole number of history events >= 1 (or None), got {value!r}"
        )
    return value


@dataclass(frozen=True)
class RetryPolicy:
    """How an activity is retried: exponential backoff with jitter, capped.

    Attempt ``n`` (from 1) that fails is retried after
    ``min(max_interval, initial_interval * backoff_coefficient ** (n - 1))``
    seconds, each interval moved by up to ``± jitter`` of itself.
    ``max_attempts`` counts the first try; 1 disables retries.
    """

    max_attempts: int = 3
    initial_interval: Duration = 0.1
    backoff_coefficient: float = 2.0
    max_interval: Duration = 10.0
    jitter: float = 0.2

    def __post_init__(self) -> None:
        if isinstance(self.max_attempts, bool) or not isinstance(self.max_attempts, int):
            raise InvalidArgumentError(
                f"RetryPolicy.max_attempts must be an int, got {self.max_attempts!r}"
            )
        if self.max_attempts < 1:
            raise InvalidArgumentError(
                f"RetryPolicy.max_attempts must be at least 1 (1 = no retry), "
                f"got {self.max_attempts}"
            )
        initial = to_seconds(self.initial_interval, "RetryPolicy.initial_interval")
        maximum = to_seconds(self.max_interval, "RetryPolicy.max_interval")
        if maximum < initial:
            raise InvalidArgumentError(
                f"RetryPolicy.max_interval ({maximum:g}s) must not be below "
                f"initial_interval ({initial:g}s)"
            )
        coeff = self.backoff_coefficient
        if isinstance(coeff, bool) or not isinstance(coeff, (int, float)) or not coeff >= 1.0:
            raise InvalidArgumentError(
                f"RetryPolicy.backoff_coefficient must be a number >= 1.0, got {coeff!r}"
            )
        jit = self.jitter
        if isinstance(jit, bool) or not isinstance(jit, (int, float)) or not 0.0 <= jit < 1.0:
            raise InvalidArgumentError(
                f"RetryPolicy.jitter must be a fraction in [0, 1), got {jit!r}"
            )
        object.__setattr__(self, "initial_interval", initial)
        object.__setattr__(self, "max_interval", maximum)
        object.__setattr__(self, "backoff_coefficient", float(coeff))
        object.__setattr__(self, "jitter", float(jit))

    def interval(self, attempt: int, unit: float) -> float:
        """Seconds to wait after failed attempt ``attempt``; ``unit`` in [-1, 1] sets the jitter."""
        initial = cast(float, self.initial_interval)  # normalised in __post_init__
        maximum = cast(float, self.max_interval)
        base = min(initial * self.backoff_coefficient ** (attempt - 1), maximum)
        return min(maximum, max(0.0, base * (1.0 + self.jitter * unit)))


def default_retry_policy() -> RetryPolicy:
    """Three attempts, 100 ms first interval, doubling, capped at 10 s."""
    return RetryPolicy(
        max_attempts=3, initial_interval=0.1, backoff_coefficient=2.0, max_interval=10.0
    )


@dataclass(frozen=True)
class WorkflowOptions:
    """How to start a workflow: its id, its input and an optional overall timeout.

    ``continue_as_new_suggested_after`` sets when ``ctx.info().should_continue_as_new``
    turns true: once the run's history holds that many events (None: never).
    It applies to every run of a continue-as-new chain. Each run has its own
    ``timeout``.

    ``search_attributes`` (str, int, float, bool or datetime values) are what
    ``executor.list`` filters on; ``memo`` is descriptive JSON data shown
    with the workflow. Both are recorded in its ``workflow_started`` event
    and carried to the runs it continues as.
    """

    id: str
    input: Any = None
    timeout: Duration | None = None
    continue_as_new_suggested_after: int | None = None
    search_attributes: Mapping[str, Any] | None = None
    memo: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not self.id.strip():
            raise InvalidArgumentError(
                f"WorkflowOptions.id must be a non-empty string, got {self.id!r}"
            )
        object.__setattr__(
            self, "timeout", _optional_seconds(self.timeout, "WorkflowOptions.timeout")
        )
        suggested_after(
            self.continue_as_new_suggested_after,
            "WorkflowOptions.continue_as_new_suggested_after",
        )
        from ._visibility import memo, search_attributes

        attrs = search_attributes(self.search_attributes, "WorkflowOptions.search_attributes")
        object.__setattr__(self, "search_attributes", attrs or None)
        object.__setattr__(self, "memo", memo(self.memo, "WorkflowOptions.memo") or None)

    @property
    def timeout_seconds(self) -> float | None:
        """The timeout in seconds, or None."""
        return None if self.timeout is None else to_seconds(self.timeout, "timeout")


@dataclass(frozen=True)
class Signal:
    """A message sent to a running workflow, received with ``ctx.receive_signal(name)``."""

    name: str
    payload: Any = None
    sent_at: datetime | None = None
    sender_id: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise InvalidArgumentError(f"Signal.name must be a non-empty string, got {self.name!r}")


def status_arg(value: Any, what: str) -> WorkflowStatus | None:
    """``value`` as a :class:`WorkflowStatus` (None stays None); anything else raises."""
    if value is None:
        return None
    try:
        return WorkflowStatus(value)
    except ValueError:
        known = ", ".join(s.value for s in WorkflowStatus)
        raise InvalidArgumentError(f"{what} must be one of {known}, got {value!r}") from None


@dataclass(frozen=True)
class WorkflowFilter:
    """Selects workflows in :meth:`WorkflowStore.list`; ``limit=0`` means no limit."""

    status: WorkflowStatus | None = None
    limit: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "status", status_arg(self.status, "WorkflowFilter.status"))
        if isinstance(self.limit, bool) or not isinstance(self.limit, int) or self.limit < 0:
            raise InvalidArgumentError(
                f"WorkflowFilter.limit must be an int >= 0, got {self.limit!r}"
            )


class FailureInfo(BaseModel):
    """A serialized error: its type, message and, for an activity error, its cause."""

    model_config = ConfigDict(frozen=True)

    type: str
    message: str
    non_retryable: bool = False
    activity_name: str | None = None
    attempts: int | None = None
    timeout: float | None = None
    stack: str = ""
    cause: FailureInfo | None = None


class HistoryEvent(BaseModel):
    """One recorded step of a workflow run; ``id`` counts from 1 per run.

    ``step`` ties activity and timer events to the command that caused them
    (the n-th durable call of the workflow code); ``attempt`` numbers the
    tries of an activity; ``change_id`` is the patch a ``marker_recorded``
    event stands for, or the update id of an ``update_*`` event (whose name
    and argument travel in ``signal_name`` and ``signal_payload``). A
    ``workflow_continued_as_new`` event names the next run
    in ``new_run_id``; the ``workflow_started`` event of a run begun by
    continue-as-new lists the runs before it in ``previous_run_ids`` (oldest
    first), and a first run's may carry ``continue_as_new_suggested_after``.
    The ``workflow_started`` of a child workflow names its parent
    (``parent_workflow_id``, ``parent_run_id``, the parent's ``step`` and
    ``attempt`` that started it, and its ``parent_close_policy``); a run the
    child continued as new carries the same. An ``activity_failed`` (or the
    ``timer_fired`` of an attempt's timeout) keeps the attempt's last
    ``heartbeat_details``, which the next attempt reads, after a restart too.
    A ``workflow_started`` carries the run's initial ``search_attributes`` and
    its ``memo``.
    """

    model_config = ConfigDict(frozen=True)

    id: int
    type: EventType
    timestamp: datetime
    activity_name: str | None = None
    input: Any = None
    result: Any = None
    error: str | None = None
    signal_name: str | None = None
    signal_payload: Any = None
    duration: float | None = None
    step: int | None = None
    attempt: int | None = None
    failure: FailureInfo | None = None
    sender_id: str | None = None
    change_id: str | None = None
    new_run_id: str | None = None
    previous_run_ids: list[str] | None = None
    continue_as_new_suggested_after: int | None = None
    child_workflow_id: str | None = None
    child_workflow_type: str | None = None
    parent_workflow_id: str | None = None
    parent_run_id: str | None = None
    parent_close_policy: ParentClosePolicy | None = None
    heartbeat_details: Any = None
    search_attributes: dict[str, Any] | None = None
    memo: dict[str, Any] | None = None
    reason: str | None = None


@dataclass(frozen=True)
class WorkflowInfo:
    """What ``ctx.info()`` tells the code about its run.

    ``history_length`` counts the events applied so far (replay gives the
    same number at the same point); ``should_continue_as_new`` is true once
    it reaches the workflow's ``continue_as_new_suggested_after``.
    """

    workflow_id: str
    run_id: str
    workflow_type: str
    history_length: int
    should_continue_as_new: bool
    previous_run_ids: tuple[str, ...] = ()


class WorkflowState(BaseModel):
    """The stored aggregate of one workflow: its latest run and that run's history."""

    workflow_id: str
    run_id: str
    workflow_type: str = ""
    status: WorkflowStatus = WorkflowStatus.RUNNING
    input: Any = None
    result: Any = None
    error: str | None = None
    timeout: float | None = None
    history: list[HistoryEvent] = Field(default_factory=list)
    created_at: datetime
    updated_at: datetime

    @property
    def previous_run_ids(self) -> list[str]:
        """The runs of this workflow id before this one, oldest first (continue-as-new)."""
        first = self.history[0] if self.history else None
        return list(first.previous_run_ids or []) if first is not None else []
