"""The executor and handle contracts every runtime and provider implements."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol, runtime_checkable

from ._core import WorkflowContext
from ._types import Duration, Signal, WorkflowOptions, WorkflowStatus

WorkflowFunc = Callable[[WorkflowContext, Any], Awaitable[Any]]
"""``async def workflow(ctx, input) -> result`` (the input parameter is optional)."""


@runtime_checkable
class WorkflowHandle(Protocol):
    """A started workflow run."""

    @property
    def id(self) -> str: ...

    @property
    def run_id(self) -> str: ...

    async def status(self) -> WorkflowStatus: ...

    async def result(self, timeout: Duration | None = None) -> Any:
        """Wait for the run to end and return its result.

        Raises :class:`WorkflowFailedError` (cause: the original error),
        :class:`WorkflowTimeoutError`, :class:`WorkflowCanceledError`, or
        ``TimeoutError`` when ``timeout`` seconds pass first.
        """
        ...


@runtime_checkable
class DurableExecutor(Protocol):
    """Starts, signals, queries, updates and cancels workflows."""

    async def execute(self, fn: Callable[..., Any], options: WorkflowOptions) -> WorkflowHandle: ...

    async def signal(self, workflow_id: str, signal: Signal) -> None: ...

    async def query(self, workflow_id: str, query_type: str) -> Any: ...

    async def cancel(self, workflow_id: str) -> None: ...

    async def update(
        self, workflow_id: str, name: str, arg: Any = None, update_id: str | None = None
    ) -> Any:
        """Run the workflow's update handler ``name`` and return its result.

        Raises :class:`UpdateNotFoundError` or :class:`UpdateRejectedError`
        (nothing recorded) or :class:`UpdateFailedError` (the handler raised).
        The same ``update_id`` twice runs the handler once.
        """
        ...
