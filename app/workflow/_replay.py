"""Replaying stored histories against new code, before it is deployed.

:func:`replay` feeds a recorded history to a fresh core instance running the
given workflow function, exactly as a runtime does when it resumes a run.
Code that would park the run (a :class:`NonDeterminismError`) is reported
with the first event that diverges and why. Nothing here does I/O: the CLI
(``python -m app replay``) and :mod:`app.testing` read the histories.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ._core import WorkflowInstance
from ._errors import InvalidArgumentError, NonDeterminismError, WorkflowError
from ._names import FunctionTable
from ._types import HistoryEvent, WorkflowState


@dataclass(frozen=True)
class ReplayResult:
    """What replaying one history found; ``error`` is None when the code matches it."""

    workflow_id: str
    run_id: str
    workflow_type: str
    events: int
    error: NonDeterminismError | None = None

    @property
    def ok(self) -> bool:
        """Whether the code reproduces the whole history."""
        return self.error is None

    @property
    def event_id(self) -> int | None:
        """The id of the first event that diverges, or None."""
        return None if self.error is None else self.error.event_id

    @property
    def reason(self) -> str:
        """Why it diverges (expected vs recorded), or ``""``."""
        return "" if self.error is None else str(self.error)

    def raise_if_diverged(self) -> None:
        """Raise the :class:`NonDeterminismError` found, if any."""
        if self.error is not None:
            raise self.error


def replay(
    workflow: Callable[..., Any],
    history: WorkflowState | Sequence[HistoryEvent],
    *,
    activities: Iterable[Callable[..., Any]] | Mapping[str, Callable[..., Any]] = (),
    workflow_id: str = "replay",
    run_id: str = "replay",
) -> ReplayResult:
    """Replay ``history`` (a :class:`WorkflowState` or its events) with ``workflow``.

    ``activities`` gives the names activities are registered under when they
    differ from the defaults. ``workflow_id`` and ``run_id`` are used only
    with a bare list of events (``ctx.random()`` is seeded by them); a state
    brings its own. Returns a :class:`ReplayResult`; it does not raise on a
    divergence (see :meth:`ReplayResult.raise_if_diverged`).
    """
    if not callable(workflow):
        raise InvalidArgumentError(f"workflow must be callable, got {type(workflow).__name__}")
    timeout: float | None = None
    workflow_type = getattr(workflow, "__name__", "workflow")
    if isinstance(history, WorkflowState):
        workflow_id, run_id = history.workflow_id, history.run_id
        workflow_type = history.workflow_type or workflow_type
        timeout = history.timeout
        events: Sequence[HistoryEvent] = history.history
    elif isinstance(history, Sequence) and all(isinstance(e, HistoryEvent) for e in history):
        events = history
    else:
        raise InvalidArgumentError(
            "history must be a WorkflowState or a list of HistoryEvent, "
            f"got {type(history).__name__}"
        )
    table = FunctionTable("activity", activities, "activities")
    instance = WorkflowInstance(
        workflow_id=workflow_id,
        run_id=run_id,
        workflow_type=workflow_type,
        fn=workflow,
        timeout=timeout,
        activity_namer=table.name_of,
    )
    instance.replaying = True
    error: NonDeterminismError | None = None
    try:
        instance.replay(events)
    except NonDeterminismError as err:
        error = err
    except (WorkflowError, ValueError, TypeError) as exc:  # e.g. a payload that no longer decodes
        error = NonDeterminismError(
            workflow_id,
            instance.last_event_id,
            "the event to replay",
            f"{type(exc).__name__}: {exc}",
        )
    finally:
        instance.close()
    return ReplayResult(workflow_id, run_id, workflow_type, len(events), error)
