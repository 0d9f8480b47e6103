"""The error tree of the engine.

Every error the engine raises derives from :class:`WorkflowError`::

    WorkflowError
    ├── WorkflowNotFoundError          no such workflow, or it is not running
    ├── WorkflowAlreadyRunningError    an id whose run has not ended
    ├── WorkflowFailedError            the workflow ended with an error (``__cause__``)
    │   └── WorkflowTimeoutError       ... because its timeout passed
    ├── WorkflowCanceledError          the workflow was canceled
    ├── ActivityError                  an activity failed for good (``__cause__``)
    ├── ActivityCancelledError         raised by ``activity.heartbeat()``: stop, not wanted
    ├── NonDeterminismError            replay diverged from the recorded history
    ├── PayloadError (TypeError)       a value could not be (de)serialized
    ├── PayloadCodecError              an encoded payload could not be decoded (no codec, key)
    ├── InvalidArgumentError (ValueError)  a bad option, caught at the call
    ├── QueryNotFoundError             unknown query type
    ├── UpdateNotFoundError            unknown update name (nothing recorded)
    ├── UpdateRejectedError            the update's validator refused it (nothing recorded)
    ├── UpdateFailedError              the update's handler raised (``__cause__``)
    ├── NonRetryableError              raised by an activity to stop retries
    ├── StoreConflictError             a store write lost a race (stale run, duplicate event)
    └── ApplicationError               an error rebuilt from history whose type is unknown here

Internal control-flow signals derive from ``BaseException`` and are never
exported, so ``except Exception`` in workflow code cannot swallow them. One
is public, :class:`ContinueAsNewError` (``BaseException`` too): raised by
``ctx.continue_as_new(input)`` to unwind the code, as Temporal's is.
"""

from __future__ import annotations

from collections.abc import Iterable


class WorkflowError(Exception):
    """Base of every error raised by the engine."""


class WorkflowNotFoundError(WorkflowError, LookupError):
    """The workflow id is unknown, or the workflow is not running."""

    def __init__(self, workflow_id: str, detail: str = "") -> None:
        self.workflow_id = workflow_id
        msg = f"workflow {workflow_id!r} not found"
        super().__init__(f"{msg}: {detail}" if detail else msg)


class WorkflowAlreadyRunningError(WorkflowError):
    """A workflow with this id is running; wait for it to end or pick another id."""

    def __init__(self, workflow_id: str, run_id: str) -> None:
        self.workflow_id = workflow_id
        self.run_id = run_id
        super().__init__(
            f"workflow {workflow_id!r} is already running (run {run_id}); "
            "wait for it to end, cancel it, or start with another id"
        )


class WorkflowFailedError(WorkflowError):
    """The workflow ended with an error; ``__cause__`` holds the original error."""

    def __init__(self, workflow_id: str, message: str) -> None:
        self.workflow_id = workflow_id
        super().__init__(f"workflow {workflow_id!r} failed: {message}")


class WorkflowTimeoutError(WorkflowFailedError):
    """The workflow did not finish within ``WorkflowOptions.timeout``."""

    def __init__(self, workflow_id: str, timeout: float) -> None:
        self.timeout = timeout
        WorkflowError.__init__(
            self,
            f"workflow {workflow_id!r} timed out after {timeout:g}s "
            "(raise WorkflowOptions.timeout if it needs longer)",
        )
        self.workflow_id = workflow_id


class WorkflowCanceledError(WorkflowError):
    """The workflow was canceled before it completed."""

    def __init__(self, workflow_id: str) -> None:
        self.workflow_id = workflow_id
        super().__init__(f"workflow {workflow_id!r} was canceled")


class ActivityError(WorkflowError):
    """An activity failed after its last attempt; ``__cause__`` is that attempt's error."""

    def __init__(self, activity_name: str, attempts: int, message: str) -> None:
        self.activity_name = activity_name
        self.attempts = attempts
        self.message = message
        plural = "attempt" if attempts == 1 else "attempts"
        super().__init__(f"activity {activity_name!r} failed after {attempts} {plural}: {message}")


class ChildWorkflowError(WorkflowError):
    """A child workflow failed, was canceled or terminated; ``__cause__`` is its error."""

    def __init__(self, workflow_id: str, workflow_type: str, attempts: int, message: str) -> None:
        self.workflow_id = workflow_id
        self.workflow_type = workflow_type
        self.attempts = attempts
        self.message = message
        plural = "attempt" if attempts == 1 else "attempts"
        super().__init__(
            f"child workflow {workflow_id!r} ({workflow_type}) failed after {attempts} "
            f"{plural}: {message}"
        )


class ActivityCancelledError(WorkflowError):
    """Raised by ``activity.heartbeat()`` when the attempt is no longer wanted.

    The workflow was canceled or ended, or the attempt timed out and another
    one runs instead. Let it propagate (after cleaning up): nothing the
    attempt returns from then on is recorded.
    """

    def __init__(self, activity_name: str, reason: str = "") -> None:
        self.activity_name = activity_name
        self.reason = reason
        msg = f"activity {activity_name!r} attempt was cancelled"
        super().__init__(f"{msg}: {reason}" if reason else msg)


class NonDeterminismError(WorkflowError):
    """Replaying the workflow code did not reproduce its recorded history.

    The workflow stays running but stuck: deploy code that matches the history
    (or a version that branches on it) and restart the executor to resume it.
    """

    def __init__(self, workflow_id: str, event_id: int, expected: str, recorded: str) -> None:
        self.workflow_id = workflow_id
        self.event_id = event_id
        self.expected = expected
        self.recorded = recorded
        super().__init__(
            f"workflow {workflow_id!r} diverged from its history at event {event_id}: "
            f"the code now does {expected}, but the history recorded {recorded}. "
            "Workflow code must make the same calls in the same order on replay; "
            "restore the old code path for running workflows, then restart the executor."
        )


class PayloadError(WorkflowError, TypeError):
    """A value could not be converted to or from its JSON payload."""


class InvalidArgumentError(WorkflowError, ValueError):
    """An option or argument is invalid; raised at the call that received it."""


class QueryNotFoundError(WorkflowError):
    """The workflow has no handler for the query type."""

    def __init__(self, workflow_id: str, query_type: str, known: Iterable[str]) -> None:
        self.workflow_id = workflow_id
        self.query_type = query_type
        self.known = sorted(known)
        super().__init__(
            f"workflow {workflow_id!r} has no query {query_type!r}; "
            f"known queries: {', '.join(self.known)}"
        )


class UpdateNotFoundError(WorkflowError):
    """The workflow has no handler for the update name; nothing was recorded."""

    def __init__(self, workflow_id: str, name: str, known: Iterable[str]) -> None:
        self.workflow_id = workflow_id
        self.name = name
        self.known = sorted(known)
        super().__init__(
            f"workflow {workflow_id!r} has no update handler {name!r}; "
            f"known updates: {', '.join(self.known) or 'none'} "
            "(register one with ctx.set_update_handler(name, fn))"
        )


class UpdateRejectedError(WorkflowError):
    """The update's validator raised; nothing was recorded and the handler did not run."""

    def __init__(self, workflow_id: str, name: str, message: str) -> None:
        self.workflow_id = workflow_id
        self.name = name
        self.message = message
        super().__init__(f"update {name!r} of workflow {workflow_id!r} was rejected: {message}")


class UpdateFailedError(WorkflowError):
    """The update's handler raised; ``__cause__`` holds its error."""

    def __init__(self, workflow_id: str, name: str, message: str) -> None:
        self.workflow_id = workflow_id
        self.name = name
        super().__init__(f"update {name!r} of workflow {workflow_id!r} failed: {message}")


class NonRetryableError(WorkflowError):
    """Raise from an activity to fail it at once, without further attempts."""


class ApplicationError(WorkflowError):
    """An error rebuilt from history whose original type is not loaded in this process."""

    def __init__(self, message: str, *, type: str = "", non_retryable: bool = False) -> None:
        self.message = message
        self.type = type
        self.non_retryable = non_retryable
        super().__init__(f"{type}: {message}" if type else message)


class ContinueAsNewError(BaseException):
    """Raised by ``ctx.continue_as_new(input)``: the run ends and a new one starts.

    It unwinds the workflow code like any exception (``finally`` blocks run);
    do not catch it. It derives from ``BaseException`` so that ``except
    Exception`` in workflow code lets it through. Raising it yourself has the
    same effect as calling ``ctx.continue_as_new``.
    """

    def __init__(self, input: object, next_run_id: str) -> None:
        super().__init__(f"continue as new (run {next_run_id})")
        self.input = input
        self.next_run_id = next_run_id


class _ControlFlow(BaseException):
    """Base of internal signals that user code must not catch."""


class _InstanceClosed(_ControlFlow):
    """The workflow instance was closed (evicted or terminated) while code still ran."""
