"""A store wrapper that encodes payloads on the way in and decodes them on the way out.

This is where the embedded runtime applies its codec: whatever the store
(SQLite, Kafka, NATS, memory, HTTP-backed), what it persists is encoded, and
the executor and the core above it only see plain data. Without a codec it
writes through unchanged, and reading an encoded payload raises
:class:`PayloadCodecError` (rather than handing marker objects to workflow code).
"""

from __future__ import annotations

import builtins
from collections.abc import Sequence
from typing import Any

from ._payloads import Payloads
from ._store import AppendingStore, WorkflowStore
from ._types import HistoryEvent, WorkflowFilter, WorkflowState


class CodecStore:
    """Wraps ``inner`` so that every payload it stores is encoded by ``payloads``."""

    def __init__(self, inner: WorkflowStore, payloads: Payloads) -> None:
        self.inner = inner
        self.payloads = payloads
        # checked once: isinstance against a runtime-checkable Protocol is slow, and
        # append is on every step's path
        self._appending = isinstance(inner, AppendingStore)

    async def save(self, state: WorkflowState) -> None:
        await self.inner.save(await self.payloads.encode_state(state))

    async def append(self, state: WorkflowState, events: Sequence[HistoryEvent]) -> None:
        if not self._appending:
            await self.save(state)
            return
        inner: AppendingStore = self.inner  # type: ignore[assignment]
        if not self.payloads.enabled:
            await inner.append(state, events)
            return
        encoded = [await self.payloads.encode_event(e) for e in events]
        # An appending store writes only the new events and the header fields a step
        # changes (the contract of ``append``): only those are encoded, so a step costs
        # the same whatever the history length. The rest of the copy is never written.
        header = state.model_copy(
            update={
                "result": await self.payloads.encode_value(state.result),
                "error": await self.payloads.encode_text(state.error),
                "history": [*state.history[: len(state.history) - len(events)], *encoded],
            }
        )
        await inner.append(header, encoded)

    async def load(self, workflow_id: str) -> WorkflowState | None:
        state = await self.inner.load(workflow_id)
        return None if state is None else await self.payloads.decode_state(state)

    async def list(self, filter: WorkflowFilter) -> builtins.list[WorkflowState]:
        return [await self.payloads.decode_state(s) for s in await self.inner.list(filter)]

    async def delete(self, workflow_id: str) -> None:
        await self.inner.delete(workflow_id)

    async def close(self) -> None:
        close: Any = getattr(self.inner, "close", None)
        if close is not None:
            result = close()
            if hasattr(result, "__await__"):
                await result
