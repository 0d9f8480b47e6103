"""What an activity can do about itself while it runs.

``activity.info()`` names the running attempt; ``activity.heartbeat(details)``
reports progress. An activity started with ``heartbeat_timeout=`` must
heartbeat at least that often, or its attempt fails as timed out and is
retried per its retry policy; the next attempt reads the last details in
``activity.info().heartbeat_details`` to resume where the lost one was.
A heartbeat also learns that the attempt is no longer wanted (the workflow
was canceled or ended, or the attempt timed out): ``heartbeat()`` then raises
:class:`ActivityCancelledError`.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ._converter import to_payload
from ._errors import ActivityCancelledError

__all__ = ["ActivityCancelledError", "ActivityInfo", "heartbeat", "info"]


@dataclass(frozen=True)
class ActivityInfo:
    """The identity of the running activity attempt.

    ``heartbeat_timeout`` is the attempt's heartbeat timeout in seconds (None:
    it need not heartbeat); ``heartbeat_details`` the details of the last
    heartbeat of an earlier attempt of this activity (None on the first).
    """

    workflow_id: str
    run_id: str
    activity_id: str
    activity_name: str
    attempt: int
    step: int
    heartbeat_timeout: float | None = None
    heartbeat_details: Any = None


class _Attempt:
    """The runtime's side of a running attempt: where heartbeats go, whether it is wanted.

    ``beat`` receives each heartbeat's details as a JSON payload, in the
    thread of the caller (a worker thread for a plain activity), so it must be
    thread-safe. ``cancel()`` may be called from any thread.
    """

    def __init__(self, info: ActivityInfo, beat: Callable[[Any], None] | None = None) -> None:
        self.info = info
        self.beat = beat
        self.cancelled: str | None = None

    def cancel(self, reason: str) -> None:
        if self.cancelled is None:
            self.cancelled = reason


_current: contextvars.ContextVar[_Attempt] = contextvars.ContextVar("activity_attempt")


def _attempt(what: str) -> _Attempt:
    try:
        return _current.get()
    except LookupError:
        raise RuntimeError(f"activity.{what}() called outside a running activity") from None


def info() -> ActivityInfo:
    """The running activity's workflow id, activity id, attempt and heartbeat details.

    Raises ``RuntimeError`` outside an activity.
    """
    return _attempt("info").info


def heartbeat(details: Any = None) -> None:
    """Report that the activity is alive, with ``details`` (JSON-serializable) of its progress.

    The runtime keeps the latest details durably with the attempt; if the
    attempt is lost or misses its heartbeat timeout, the retry reads them in
    ``activity.info().heartbeat_details``. Calls may be throttled (not every
    call reaches the runtime), so call it as often as convenient.

    Raises:
        ActivityCancelledError: the attempt is no longer wanted (the workflow
            was canceled or ended, or the attempt timed out); stop the work.
        RuntimeError: called outside a running activity.
    """
    attempt = _attempt("heartbeat")
    if attempt.cancelled is not None:
        raise ActivityCancelledError(attempt.info.activity_name, attempt.cancelled)
    payload = to_payload(details, f"heartbeat details of activity {attempt.info.activity_name!r}")
    if attempt.beat is not None:
        attempt.beat(payload)
    if attempt.cancelled is not None:  # the runtime may learn it from this very heartbeat
        raise ActivityCancelledError(attempt.info.activity_name, attempt.cancelled)


def _enter(value: _Attempt) -> contextvars.Token[_Attempt]:
    return _current.set(value)


def _leave(token: contextvars.Token[_Attempt]) -> None:
    _current.reset(token)
