"""Handles on workflow runs (every executor's), and the value or error a run ends with."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from ._converter import decode_failure, describe_failure, from_payload, signature_of
from ._core import Outcome
from ._errors import WorkflowCanceledError, WorkflowFailedError, WorkflowTimeoutError
from ._types import Duration, WorkflowState, WorkflowStatus, to_seconds

_TIMEOUT_TYPE = f"{WorkflowTimeoutError.__module__}.{WorkflowTimeoutError.__qualname__}"


class HandleSource(Protocol):
    """What a handle asks its executor: a run's status, and its end."""

    async def _status(self, workflow_id: str, run_id: str | None) -> WorkflowStatus: ...

    async def _result(
        self,
        workflow_id: str,
        run_id: str | None,
        fn: Callable[..., Any] | None,
        timeout: float | None,
    ) -> Any: ...


class RunHandle:
    """A workflow run of some executor; ``run_id`` None means its latest run."""

    def __init__(
        self,
        executor: HandleSource,
        workflow_id: str,
        run_id: str | None,
        fn: Callable[..., Any] | None,
    ) -> None:
        self._executor = executor
        self._id = workflow_id
        self._run_id = run_id
        self._fn = fn

    @property
    def id(self) -> str:
        return self._id

    @property
    def run_id(self) -> str:
        return self._run_id or ""

    async def status(self) -> WorkflowStatus:
        return await self._executor._status(self._id, self._run_id)

    async def result(self, timeout: Duration | None = None) -> Any:
        """Wait for the end of the run; see :class:`app.workflow.WorkflowHandle`."""
        seconds = None if timeout is None else to_seconds(timeout, "result timeout")
        return await self._executor._result(self._id, self._run_id, self._fn, seconds)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(id={self._id!r}, run_id={self._run_id!r})"


class EmbeddedHandle(RunHandle):
    """A run started by (or resumed in) a :class:`DefaultExecutor`."""


def failure_error(state: WorkflowState, outcome: Outcome | None) -> BaseException:
    """The exception a failed run raises from ``result()``, cause attached."""
    failure = outcome.failure if outcome is not None else None
    if failure is None:
        terminal = state.history[-1] if state.history else None
        failure = terminal.failure if terminal is not None else None
    if failure is not None and failure.type == _TIMEOUT_TYPE:
        return WorkflowTimeoutError(state.workflow_id, state.timeout or 0.0)
    message = describe_failure(failure) if failure is not None else (state.error or "unknown")
    err = WorkflowFailedError(state.workflow_id, message)
    cause = outcome.error if outcome is not None and outcome.error is not None else None
    if cause is None and failure is not None:
        cause = decode_failure(failure)
    err.__cause__ = cause
    return err


def outcome_value(
    state: WorkflowState, outcome: Outcome | None, fn: Callable[..., Any] | None
) -> Any:
    status = outcome.status if outcome is not None else state.status
    if status is WorkflowStatus.COMPLETED:
        hint = signature_of(fn, 1).return_hint if fn is not None else None
        result = outcome.result if outcome is not None else state.result
        return from_payload(result, hint, "workflow result")
    if status is WorkflowStatus.CANCELED:
        raise WorkflowCanceledError(state.workflow_id)
    raise failure_error(state, outcome)
