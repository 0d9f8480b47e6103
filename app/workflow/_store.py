"""The storage contract: where workflow state and history are kept."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from ._errors import WorkflowError
from ._types import HistoryEvent, WorkflowFilter, WorkflowState


class StoreConflictError(WorkflowError):
    """A write lost a race: the stored run or history is not what the writer expected."""


class StoreClosedError(WorkflowError, RuntimeError):
    """The store was closed, or can no longer work (its worker stopped): it takes no more calls."""


@runtime_checkable
class WorkflowStore(Protocol):
    """Persists workflow state for recovery and auditing.

    ``save`` replaces everything stored under ``state.workflow_id`` (a new run
    replaces the previous one); ``load`` returns a full copy with history, or
    ``None``; ``list`` returns matching states newest first (by ``created_at``);
    ``delete`` removes a workflow and is a no-op for an unknown id. Stores keep
    copies: mutating a state after ``save`` or ``load`` never changes what is
    stored.
    """

    async def save(self, state: WorkflowState) -> None: ...

    async def load(self, workflow_id: str) -> WorkflowState | None: ...

    async def list(self, filter: WorkflowFilter) -> list[WorkflowState]: ...

    async def delete(self, workflow_id: str) -> None: ...


@runtime_checkable
class AppendingStore(WorkflowStore, Protocol):
    """A store that can add events without rewriting the history (O(1) per step)."""

    async def append(self, state: WorkflowState, events: Sequence[HistoryEvent]) -> None:
        """Durably add ``events`` (the last ``len(events)`` of ``state.history``).

        Also stores the state's header fields that change during a run
        (status, result, error, updated_at) in the same atomic write; the
        run's identity (type, input, timeout) is fixed by ``save``. Raises
        :class:`StoreConflictError`, writing nothing, when the workflow is
        not stored, its stored run is not ``state.run_id``, or the event ids
        do not continue the stored history.
        """
        ...


async def append_events(
    store: WorkflowStore, state: WorkflowState, events: Sequence[HistoryEvent]
) -> None:
    """Persist new events through ``append`` when the store has it, else ``save``."""
    if isinstance(store, AppendingStore):
        await store.append(state, events)
    else:
        await store.save(state)
