"""What an activity can learn about itself while it runs: ``activity.info()``."""

from __future__ import annotations

import contextvars
from dataclasses import dataclass

__all__ = ["ActivityInfo", "info"]


@dataclass(frozen=True)
class ActivityInfo:
    """The identity of the running activity attempt."""

    workflow_id: str
    run_id: str
    activity_id: str
    activity_name: str
    attempt: int
    step: int


_current: contextvars.ContextVar[ActivityInfo] = contextvars.ContextVar("activity_info")


def info() -> ActivityInfo:
    """The running activity's workflow id, activity id and attempt.

    Raises ``RuntimeError`` outside an activity.
    """
    try:
        return _current.get()
    except LookupError:
        raise RuntimeError("activity.info() called outside a running activity") from None


def _enter(value: ActivityInfo) -> contextvars.Token[ActivityInfo]:
    return _current.set(value)


def _leave(token: contextvars.Token[ActivityInfo]) -> None:
    _current.reset(token)
