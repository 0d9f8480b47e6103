"""``TemporalStore``: the engine's store API over Temporal's describe, list and history."""

from __future__ import annotations

from datetime import timedelta

from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from app.workflow import (
    InvalidArgumentError,
    WorkflowFilter,
    WorkflowState,
)
from app.workflow._types import Duration, to_seconds

from ._common import _address, _rpc_error
from ._history import _STATUS_QUERY, _history_pages, _HistoryMapper


# -- the store ------------------------------------------------------------------------
class TemporalStore:
    """A :class:`~app.workflow.WorkflowStore` that reads workflows from Temporal.

    ``load`` and ``list`` map Temporal's describe, visibility and history to
    :class:`~app.workflow.WorkflowState` (the latest run of each workflow id)
    and its :class:`~app.workflow.HistoryEvent` list. ``save`` and ``delete``
    are no-ops: Temporal records the history itself and keeps closed runs for
    the namespace's retention period. ``task_queue`` limits ``list`` to the
    workflows of one task queue.
    """

    def __init__(
        self,
        client: Client,
        *,
        task_queue: str | None = None,
        rpc_timeout: Duration = 10.0,
    ) -> None:
        if not isinstance(client, Client):
            raise InvalidArgumentError(
                f"client must be a temporalio.client.Client, got {type(client).__name__}"
            )
        self.client = client
        self.task_queue = task_queue
        self._rpc_timeout = timedelta(seconds=to_seconds(rpc_timeout, "rpc_timeout"))

    async def save(self, state: WorkflowState) -> None:
        """Do nothing: Temporal records every event as it happens."""

    async def delete(self, workflow_id: str) -> None:
        """Do nothing: closed runs leave Temporal after the namespace's retention period."""

    async def load(self, workflow_id: str) -> WorkflowState | None:
        """The latest run of ``workflow_id`` with its history, or ``None``."""
        return await self.load_run(workflow_id, "")

    async def load_run(self, workflow_id: str, run_id: str) -> WorkflowState | None:
        """Run ``run_id`` of ``workflow_id`` (``""``: the latest) with its history, or ``None``."""
        handle = self.client.get_workflow_handle(workflow_id, run_id=run_id or None)
        try:
            description = await handle.describe(rpc_timeout=self._rpc_timeout)
        except RPCError as err:
            if err.status is RPCStatusCode.NOT_FOUND:
                return None
            raise _rpc_error(err, _address(self.client), f"describe {workflow_id!r}") from err
        mapper = _HistoryMapper(self.client.data_converter, workflow_id, description.run_id)
        try:
            async for events, _ in _history_pages(
                self.client,
                workflow_id,
                description.run_id,
                wait=False,
                rpc_timeout=self._rpc_timeout,
            ):
                for event in events:
                    await mapper.feed(event)
        except RPCError as err:
            raise _rpc_error(err, _address(self.client), f"read {workflow_id!r}") from err
        return mapper.state()

    async def list(self, filter: WorkflowFilter) -> list[WorkflowState]:
        """The latest runs matching ``filter``, newest first, each with its history."""
        clauses = []
        if self.task_queue is not None:
            clauses.append(f"TaskQueue = '{self.task_queue}'")
        if filter.status is not None:
            clauses.append(_STATUS_QUERY[filter.status])
        found: list[WorkflowState] = []
        seen: set[str] = set()
        try:
            async for execution in self.client.list_workflows(
                " AND ".join(clauses) or None, rpc_timeout=self._rpc_timeout
            ):
                if execution.id in seen:
                    continue  # an older run of a workflow already listed
                seen.add(execution.id)
                state = await self.load_run(execution.id, "")
                if state is None or state.run_id != execution.run_id:
                    continue
                if filter.status is not None and state.status is not filter.status:
                    continue
                found.append(state)
                if filter.limit and len(found) >= filter.limit:
                    break
        except RPCError as err:
            raise _rpc_error(err, _address(self.client), "list workflows") from err
        found.sort(key=lambda s: s.created_at, reverse=True)
        return found
