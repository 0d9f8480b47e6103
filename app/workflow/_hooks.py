"""Lifecycle hooks: plain callables (sync or async) called once per real event."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, fields
from typing import Any

from ._types import Signal

log = logging.getLogger("app.workflow.hooks")

Hook = Callable[..., Any]


@dataclass(frozen=True)
class Hooks:
    """Optional callbacks; each may be a plain or an ``async`` function.

    Runtimes call them once per recorded event, never while replaying
    history, after the event is durable and applied, in the order of the
    events of each workflow. A hook may call the executor (signal, query,
    cancel); one that raises is logged and never breaks the workflow.
    """

    on_workflow_start: Callable[[str, Any], Any] | None = None
    on_workflow_complete: Callable[[str, Any], Any] | None = None
    on_workflow_fail: Callable[[str, BaseException], Any] | None = None
    on_activity_start: Callable[[str, Any], Any] | None = None
    on_activity_complete: Callable[[str, Any], Any] | None = None
    on_signal: Callable[[str, Signal], Any] | None = None
    on_retry: Callable[[str, BaseException], Any] | None = None


HOOK_NAMES = tuple(f.name for f in fields(Hooks))


async def call_hook(hook: Hook | None, *args: Any) -> None:
    """Call ``hook(*args)``, awaiting it if needed; log and swallow its errors."""
    if hook is None:
        return
    try:
        result = hook(*args)
        if inspect.isawaitable(result):
            await result
    except Exception:
        log.exception("hook %s raised; ignored", getattr(hook, "__qualname__", hook))


def _chain(callbacks: list[Hook]) -> Callable[..., Awaitable[None]]:
    async def chained(*args: Any) -> None:
        for callback in callbacks:
            await call_hook(callback, *args)

    return chained


def compose_hooks(*hooks: Hooks) -> Hooks:
    """One :class:`Hooks` calling each given one's callbacks in order."""
    merged: dict[str, Any] = {}
    for name in HOOK_NAMES:
        callbacks = [getattr(h, name) for h in hooks if getattr(h, name) is not None]
        merged[name] = _chain(callbacks) if callbacks else None
    return Hooks(**merged)
