"""A process-local workflow store backed by a dict: for tests and ephemeral runs.

Nothing survives the process. Every value crosses the store boundary as a deep
copy, so callers can never change what is stored by mutating their objects.
"""

from __future__ import annotations

import builtins
import copy
from collections.abc import Sequence
from datetime import UTC, datetime

from app.workflow._store import StoreConflictError
from app.workflow._types import HistoryEvent, WorkflowFilter, WorkflowState
from app.workflow._visibility import WorkflowPage, WorkflowQuery, page_of, summarize

__all__ = ["InMemoryStore"]


def _created_key(moment: datetime) -> datetime:
    # Naive datetimes count as UTC so that mixed values still sort (as in SQLiteStore).
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _check_event_ids(
    workflow_id: str, stored_count: int, events: Sequence[HistoryEvent]
) -> str | None:
    """Why ``events`` cannot follow ``stored_count`` stored events, or ``None`` if they can."""
    for offset, event in enumerate(events):
        expected = stored_count + 1 + offset
        if event.id != expected:
            ids = ", ".join(str(e.id) for e in events)
            return (
                f"workflow {workflow_id!r} has {stored_count} stored events, so the "
                f"appended events must have ids {stored_count + 1}.."
                f"{stored_count + len(events)}; got [{ids}] (event {event.id} is "
                "a duplicate or leaves a gap)"
            )
    return None


class InMemoryStore:
    """An :class:`~app.workflow._store.AppendingStore` that keeps deep copies in a dict.

    ``append`` costs O(len(events)): it never copies the stored history.
    ``close`` does nothing; the store stays usable.
    """

    def __init__(self) -> None:
        self._states: dict[str, WorkflowState] = {}

    async def save(self, state: WorkflowState) -> None:
        """Replace everything stored under ``state.workflow_id`` with a copy of ``state``."""
        ids = [event.id for event in state.history]
        if len(set(ids)) != len(ids):
            raise StoreConflictError(
                f"workflow {state.workflow_id!r}: the saved history repeats event ids {ids}"
            )
        self._states[state.workflow_id] = state.model_copy(deep=True)

    async def load(self, workflow_id: str) -> WorkflowState | None:
        """Return a copy of the stored state with its history, or ``None``."""
        stored = self._states.get(workflow_id)
        return None if stored is None else stored.model_copy(deep=True)

    async def list(self, filter: WorkflowFilter) -> builtins.list[WorkflowState]:
        """Return copies of the matching states, newest ``created_at`` first."""
        matching = [
            state
            for state in self._states.values()
            if filter.status is None or state.status == filter.status
        ]
        # Two stable sorts: workflow_id ascending breaks created_at ties.
        matching.sort(key=lambda state: state.workflow_id)
        matching.sort(key=lambda state: _created_key(state.created_at), reverse=True)
        if filter.limit:
            matching = matching[: filter.limit]
        return [state.model_copy(deep=True) for state in matching]

    async def list_workflows(self, query: WorkflowQuery) -> WorkflowPage:
        """Headers matching ``query``: a scan of every stored history (no index)."""
        return page_of((summarize(state) for state in self._states.values()), query)

    async def delete(self, workflow_id: str) -> None:
        """Remove the workflow; an unknown id is a no-op."""
        self._states.pop(workflow_id, None)

    async def append(self, state: WorkflowState, events: Sequence[HistoryEvent]) -> None:
        """Add ``events`` to the stored run and copy the header fields of ``state``.

        Raises :class:`StoreConflictError`, storing nothing, when the workflow
        is unknown, its stored run is not ``state.run_id``, or the event ids
        do not continue the stored history.
        """
        stored = self._states.get(state.workflow_id)
        if stored is None:
            raise StoreConflictError(
                f"cannot append to workflow {state.workflow_id!r} (run {state.run_id}): "
                "it is not stored; save it first"
            )
        if stored.run_id != state.run_id:
            raise StoreConflictError(
                f"cannot append to workflow {state.workflow_id!r}: the stored run is "
                f"{stored.run_id}, the writer's run is {state.run_id}"
            )
        problem = _check_event_ids(state.workflow_id, len(stored.history), events)
        if problem is not None:
            raise StoreConflictError(problem)
        stored.history.extend(event.model_copy(deep=True) for event in events)
        stored.status = state.status
        stored.result = copy.deepcopy(state.result)
        stored.error = state.error
        stored.updated_at = state.updated_at

    async def close(self) -> None:
        """Do nothing: there is nothing to release."""
