"""What the console reads and does, over an executor or a bare store.

An executor (``DefaultExecutor``, ``KafkaExecutor``) gives every action; a
store alone (a SQLite file another process runs workflows on) is read-only:
the console lists and shows, and its buttons are not drawn.
"""

from __future__ import annotations

import builtins
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from app.workflow import (
    Signal,
    WorkflowNotFoundError,
    WorkflowPage,
    WorkflowQuery,
    WorkflowState,
    WorkflowStatus,
)
from app.workflow._schedules import SCHEDULER_TYPE
from app.workflow._visibility import list_workflows, status_counts


@dataclass
class Details:
    """One workflow for its page: its state and what it waits on, when that is known."""

    state: WorkflowState
    waiting: Mapping[str, Any] = field(default_factory=dict)


class Backend(Protocol):
    """The console's view of a runtime."""

    writable: bool
    where: str

    async def list(self, query: WorkflowQuery) -> WorkflowPage: ...

    async def counts(self) -> dict[WorkflowStatus, int]: ...

    async def details(self, workflow_id: str) -> Details: ...

    async def act(self, workflow_id: str, action: str, form: Mapping[str, Any]) -> Any: ...

    async def schedules(self) -> builtins.list[dict[str, Any]]: ...

    async def schedule_act(self, schedule_id: str, action: str) -> None: ...


ACTIONS = ("signal", "query", "cancel", "pause", "resume", "terminate")
SCHEDULE_ACTIONS = ("pause", "resume", "trigger", "delete")


class ExecutorBackend:
    """Over an executor that has ``list``, ``describe`` and the actions."""

    writable = True

    def __init__(self, executor: Any, where: str) -> None:
        self.executor = executor
        self.where = where

    async def list(self, query: WorkflowQuery) -> WorkflowPage:
        page: WorkflowPage = await self.executor.list(query)
        return page

    async def counts(self) -> dict[WorkflowStatus, int]:
        result: dict[WorkflowStatus, int] = await self.executor.status_counts()
        return result

    async def details(self, workflow_id: str) -> Details:
        waiting_of = getattr(self.executor, "describe_waiting", None)
        if waiting_of is not None:
            state, waiting = await waiting_of(workflow_id)
            return Details(state, waiting or {})
        return Details(await self.executor.describe(workflow_id))

    async def act(self, workflow_id: str, action: str, form: Mapping[str, Any]) -> Any:
        ex = self.executor
        if action == "signal":
            await ex.signal(workflow_id, Signal(form["name"], form.get("payload")))
        elif action == "query":
            return await ex.query(workflow_id, form["name"])
        elif action == "cancel":
            await ex.cancel(workflow_id)
        elif action in ("pause", "resume", "terminate"):
            await getattr(ex, action)(workflow_id, form.get("reason", ""))
        else:
            raise ValueError(f"unknown action {action!r} (known: {', '.join(ACTIONS)})")
        return None

    async def schedules(self) -> builtins.list[dict[str, Any]]:
        found: builtins.list[dict[str, Any]] = await self.executor.list_schedules()
        return found

    async def schedule_act(self, schedule_id: str, action: str) -> None:
        if action not in SCHEDULE_ACTIONS:
            raise ValueError(f"unknown schedule action {action!r}")
        await getattr(self.executor, f"{action}_schedule")(schedule_id)


class StoreBackend:
    """Over a store alone: list and show, no actions."""

    writable = False

    def __init__(self, store: Any, where: str) -> None:
        self.store = store
        self.where = where

    async def list(self, query: WorkflowQuery) -> WorkflowPage:
        return await list_workflows(self.store, query)

    async def counts(self) -> dict[WorkflowStatus, int]:
        return await status_counts(self.store)

    async def details(self, workflow_id: str) -> Details:
        state = await self.store.load(workflow_id)
        if state is None:
            raise WorkflowNotFoundError(workflow_id)
        return Details(state)

    async def schedules(self) -> builtins.list[dict[str, Any]]:
        # without an executor no schedule can answer its query: what the index knows
        page = await self.list(
            WorkflowQuery(
                workflow_type=SCHEDULER_TYPE, status=WorkflowStatus.RUNNING, page_size=1000
            )
        )
        return [
            {
                "schedule_id": s.search_attributes.get("schedule_id", s.workflow_id),
                "spec": {"workflow": s.search_attributes.get("schedule_workflow", "?")},
            }
            for s in page.items
        ]

    async def schedule_act(self, schedule_id: str, action: str) -> None:
        raise PermissionError(f"this console reads {self.where} without an executor")

    async def act(self, workflow_id: str, action: str, form: Mapping[str, Any]) -> Any:
        raise PermissionError(
            f"this console reads {self.where} without an executor: it cannot {action}; "
            "start it with --app MODULE (embedded) or --broker (streaming)"
        )
