"""Running one activity attempt: decode its input, call it, encode its outcome.

Shared by every runtime that executes activities itself; it knows nothing of
histories or stores.
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

from . import activity as _activity
from ._converter import encode_failure, from_payload, signature_of, to_payload
from ._types import FailureInfo


@dataclass(frozen=True)
class AttemptOutcome:
    """What one attempt produced: a result payload, or a failure; and how long it took."""

    result: Any
    failure: FailureInfo | None
    duration: float


def heartbeat_timeout_failure(name: str, attempt: int, heartbeat_timeout: float) -> FailureInfo:
    """The failure of an attempt that missed its heartbeat timeout (the same in every runtime)."""
    return FailureInfo(
        type="builtins.TimeoutError",
        message=(
            f"activity {name!r} attempt {attempt} sent no heartbeat within its "
            f"heartbeat timeout of {heartbeat_timeout:g}s"
        ),
        timeout=heartbeat_timeout,
    )


async def run_attempt(
    fn: Callable[..., Any],
    payload: Any,
    info: _activity.ActivityInfo | _activity._Attempt,
    pool: Executor | None,
) -> AttemptOutcome:
    """Run ``fn`` on the decoded ``payload``: coroutines inline, plain functions in ``pool``.

    ``activity.info()`` returns the attempt's info inside the call, threads
    included; ``activity.heartbeat()`` reaches the attempt's ``beat``.
    Exceptions become a failure; cancellation propagates.
    """
    attempt = info if isinstance(info, _activity._Attempt) else _activity._Attempt(info)
    name = attempt.info.activity_name
    token = _activity._enter(attempt)
    started = time.monotonic()
    result: Any = None
    failure: FailureInfo | None = None
    try:
        sig = signature_of(fn)
        args: tuple[Any, ...] = ()
        if sig.params:
            args = (from_payload(payload, sig.input_hint, f"input of activity {name!r}"),)
        if sig.is_async:
            value = await fn(*args)
        else:
            ctx = contextvars.copy_context()
            value = await asyncio.get_running_loop().run_in_executor(pool, ctx.run, fn, *args)
        result = to_payload(value, f"result of activity {name!r}")
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        failure = encode_failure(exc, with_stack=True)
    finally:
        _activity._leave(token)
    return AttemptOutcome(result, failure, time.monotonic() - started)


async def watch_heartbeats(
    running: asyncio.Task[AttemptOutcome], heartbeat_timeout: float | None, last_beat: list[float]
) -> AttemptOutcome | None:
    """The attempt's outcome, or None once ``heartbeat_timeout`` passed since ``last_beat[0]``.

    ``last_beat[0]`` is the ``time.monotonic()`` of the last heartbeat, moved on
    by the attempt's ``beat``; the caller cancels ``running`` on None.
    """
    if heartbeat_timeout is None:
        return await running
    while True:
        left = last_beat[0] + heartbeat_timeout - time.monotonic()
        if left <= 0:
            return None
        done, _ = await asyncio.wait({running}, timeout=left)
        if done:
            return running.result()
