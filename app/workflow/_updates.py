"""What every runtime does with ``executor.update``: check its arguments, answer it.

The core (``WorkflowInstance``) validates, records and runs an update; a
runtime only checks the caller's arguments here, finds an update already
answered (in the live instance or, for a run that has ended, in its history)
and turns the recorded answer into the caller's result or error.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import Any

from ._converter import decode_failure
from ._errors import InvalidArgumentError, UpdateFailedError
from ._types import EventType, FailureInfo, HistoryEvent


def check_update(workflow_id: Any, name: Any, update_id: Any) -> str:
    """Validate the arguments of ``update``; returns the update id (a new one if None)."""
    if not isinstance(workflow_id, str) or not workflow_id:
        raise InvalidArgumentError(f"workflow_id must be a non-empty string, got {workflow_id!r}")
    if not isinstance(name, str) or not name:
        raise InvalidArgumentError(f"update name must be a non-empty string, got {name!r}")
    if update_id is None:
        return str(uuid.uuid4())
    if not isinstance(update_id, str) or not update_id.strip():
        raise InvalidArgumentError(
            f"update_id must be a non-empty string or None, got {update_id!r}; "
            "pass the same id again to get the same answer without running the update twice"
        )
    return update_id


def completed_update(history: Iterable[HistoryEvent], update_id: str) -> HistoryEvent | None:
    """The ``update_completed`` event of ``update_id`` in ``history``, if recorded."""
    for event in history:
        if event.type is EventType.UPDATE_COMPLETED and event.change_id == update_id:
            return event
    return None


def update_answer(workflow_id: str, name: str, result: Any, failure: FailureInfo | None) -> Any:
    """The recorded answer of an update: its result, or :class:`UpdateFailedError`."""
    if failure is not None:
        err = UpdateFailedError(workflow_id, name, failure.message)
        raise err from decode_failure(failure)
    return result


def answer_of(workflow_id: str, event: HistoryEvent) -> Any:
    """:func:`update_answer` of a recorded ``update_completed`` event."""
    return update_answer(workflow_id, event.signal_name or "", event.result, event.failure)
