"""Updates as the core sees them: validate, accept, run the handler, answer.

An update is a signal with an answer: ``update_accepted`` (an input) starts
its handler as a task of the workflow (so it may run activities and sleep),
and when the handler returns or raises, ``update_completed`` (an echo)
records the answer under the update id. A run that ends while an update is
still running answers it with a failure first, so every accepted update
gets one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from .._converter import (
    describe_failure,
    encode_failure,
    from_payload,
    signature_of,
    to_payload,
)
from .._errors import (
    InvalidArgumentError,
    UpdateNotFoundError,
    UpdateRejectedError,
    WorkflowError,
    _ControlFlow,
)
from .._types import EventType, FailureInfo, HistoryEvent, WorkflowStatus

if TYPE_CHECKING:
    from ._instance import WorkflowInstance


@dataclass(frozen=True)
class UpdateHandler:
    """A handler registered with ``ctx.set_update_handler``."""

    fn: Callable[..., Any]
    validator: Callable[..., Any] | None = None


@dataclass
class UpdateState:
    """An accepted update: running, or done with a ``result`` or ``failure``."""

    update_id: str
    name: str
    done: bool = False
    result: Any = None
    failure: FailureInfo | None = None
    recorded: bool = False  # its update_completed is in the history


def _arg(fn: Callable[..., Any], name: str, payload: Any) -> tuple[Any, ...]:
    sig = signature_of(fn)
    if sig.params == 0:
        return ()
    return (from_payload(payload, sig.input_hint, f"argument of update {name!r}"),)


class UpdateTable:
    """The update handlers of one run and the updates it accepted, by id."""

    def __init__(self, instance: WorkflowInstance) -> None:
        self._instance = instance
        self.handlers: dict[str, UpdateHandler] = {}
        self.accepted: dict[str, UpdateState] = {}  # by update id, in acceptance order

    def add_handler(self, name: str, handler: UpdateHandler) -> None:
        for what, fn in (("handler", handler.fn), ("validator", handler.validator)):
            if fn is not None and signature_of(fn).required > 1:
                raise InvalidArgumentError(
                    f"update {what} for {name!r} must take at most one required parameter "
                    "(the update's argument)"
                )
        self.handlers[name] = handler

    def validate(self, name: str, payload: Any) -> None:
        """See :meth:`WorkflowInstance.validate_update`."""
        wid = self._instance.workflow_id
        handler = self.handlers.get(name)
        if handler is None:
            raise UpdateNotFoundError(wid, name, self.handlers)
        if handler.validator is None:
            return
        try:
            handler.validator(*_arg(handler.validator, name, payload))
        except _ControlFlow:
            raise
        except Exception as exc:
            message = str(exc) or type(exc).__name__
            raise UpdateRejectedError(wid, name, message) from exc

    def on_accepted(self, event: HistoryEvent) -> bool:
        """Start the handler of an ``update_accepted``; False if that id was accepted before."""
        instance = self._instance
        update_id = event.change_id or ""
        name = event.signal_name or ""
        if update_id in self.accepted:
            return False
        update = self.accepted[update_id] = UpdateState(update_id, name)
        handler = self.handlers.get(name)
        if handler is None:  # recorded, yet the code has no handler now: answer with an error
            update.done = True
            update.failure = encode_failure(
                UpdateNotFoundError(instance.workflow_id, name, self.handlers)
            )
            return True
        instance.loop.create_task(
            self._run(update, handler.fn, event.signal_payload),
            name=f"update:{instance.workflow_id}:{update_id}",
        )
        return True

    async def _run(self, update: UpdateState, fn: Callable[..., Any], payload: Any) -> None:
        try:
            value = fn(*_arg(fn, update.name, payload))
            if isinstance(value, Awaitable):
                value = await value
            result = to_payload(value, f"result of update {update.name!r}")
        except (_ControlFlow, asyncio.CancelledError):
            if not update.done:  # cancelled by the code itself, not by the run ending
                update.done = True
                update.failure = encode_failure(asyncio.CancelledError("update was cancelled"))
            raise
        except Exception as exc:
            if not update.done:
                update.done = True
                update.failure = encode_failure(exc, with_stack=True)
            return
        if not update.done:
            update.done = True
            update.result = result

    def on_completed(self, event: HistoryEvent) -> str | None:
        """Match an ``update_completed`` echo; what was expected instead if it does not."""
        update = self.accepted.get(event.change_id or "")
        if update is None or not update.done or update.recorded:
            if update is not None and not update.done:
                return f"update {update.update_id!r} still running"
            return ""
        update.recorded = True
        return None

    def echoes(self, next_id: int, now: datetime) -> list[HistoryEvent]:
        return [
            HistoryEvent(
                id=next_id + k,
                type=EventType.UPDATE_COMPLETED,
                timestamp=now,
                signal_name=update.name,
                change_id=update.update_id,
                result=update.result,
                error=describe_failure(update.failure) if update.failure else None,
                failure=update.failure,
            )
            for k, update in enumerate(
                u for u in self.accepted.values() if u.done and not u.recorded
            )
        ]

    def snapshot(self) -> list[tuple[Any, ...]]:
        return [
            (u.update_id, u.done, u.recorded, repr(u.result), u.failure)
            for u in self.accepted.values()
        ]

    def settle(self, status: WorkflowStatus) -> None:
        """The run ended: every update still running is answered with a failure."""
        wid = self._instance.workflow_id
        for update in self.accepted.values():
            if not update.done:
                update.done = True
                update.failure = encode_failure(
                    WorkflowError(
                        f"workflow {wid!r} ended ({status.value}) "
                        f"before update {update.name!r} finished"
                    )
                )
