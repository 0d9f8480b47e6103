"""Applying a codec chain to the user payloads of events, states and failures.

Runtimes call these where data is persisted or published, and where it is
read back; what is between (the core, the state machine) only sees plain JSON
data. Encoded: inputs, results, signal payloads, error texts, failure
messages and stacks. Left plain: ids, names, types, timestamps, step numbers:
what stores index and operators need to see.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from typing import Any

from ._codec import MARKER, TEXT_PREFIX, CodecChain, PayloadCodecError
from ._types import FailureInfo, HistoryEvent, WorkflowState


def marker_of(value: Any) -> dict[str, Any] | None:
    """The marker object of an encoded value or text, else None."""
    if isinstance(value, dict) and len(value) == 1 and isinstance(value.get(MARKER), dict):
        return value[MARKER]  # type: ignore[no-any-return]  # checked just above
    if isinstance(value, str) and value.startswith(TEXT_PREFIX):
        try:
            inner = json.loads(value[len(TEXT_PREFIX) :])
        except ValueError:
            return None
        return inner if isinstance(inner, dict) else None
    return None


def is_encoded(value: Any) -> bool:
    """Whether ``value`` (JSON data or a text) is an encoded payload."""
    return marker_of(value) is not None


def describe_marker(marker: Mapping[str, Any]) -> str:
    """``encrypted (aes-256-gcm, key id 'k1')`` or ``encoded (zlib)``, for humans."""
    parts = []
    encrypted = False
    for step in marker.get("steps", []):
        name = str(step.get("codec", "?"))
        if "key_id" in step:
            encrypted = True
            parts.append(f"{name}, key id {step['key_id']!r}")
        else:
            parts.append(name)
    return f"{'encrypted' if encrypted else 'encoded'} ({'; '.join(parts)})"


class Payloads:
    """Encodes and decodes user payloads with one codec chain (None: plain JSON).

    With ``lenient``, a payload that cannot be decoded is replaced by a short
    text saying how it is encoded (for display); otherwise decoding raises
    :class:`PayloadCodecError` naming the codec and key id it needs.
    """

    def __init__(self, chain: CodecChain | None, *, lenient: bool = False) -> None:
        self.chain = chain
        self.lenient = lenient
        self.undecoded = 0
        """Payloads left encoded so far (lenient mode)."""

    @property
    def enabled(self) -> bool:
        return self.chain is not None

    # -- one value ------------------------------------------------------------------
    async def _seal(self, data: bytes) -> dict[str, Any] | None:
        assert self.chain is not None
        out, steps = await self.chain.encode_bytes(data)
        if not steps:
            return None
        return {"v": 1, "steps": steps, "data": base64.b64encode(out).decode()}

    async def _open(self, marker: Mapping[str, Any]) -> bytes:
        steps = marker.get("steps")
        try:
            data = base64.b64decode(str(marker.get("data", "")), validate=True)
        except binascii.Error:
            raise PayloadCodecError("encoded payload has invalid base64 data") from None
        if not isinstance(steps, list):
            raise PayloadCodecError("encoded payload has no list of steps")
        if self.chain is None:
            first = steps[-1] if steps else {}
            raise PayloadCodecError(
                f"payload is {describe_marker(marker)} and no codec is configured: pass "
                "codec= to the executor or worker, or set STREAMFLOW_CODEC_KEY_FILE",
                codec=str(first.get("codec", "")),
                key_id=first.get("key_id"),
            )
        return await self.chain.decode_bytes(data, steps)

    async def encode_value(self, value: Any) -> Any:
        """JSON data -> an encoded marker object (or ``value`` unchanged if no codec applied)."""
        if self.chain is None or value is None:
            return value
        raw = json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()
        marker = await self._seal(raw)
        return value if marker is None else {MARKER: marker}

    async def decode_value(self, value: Any) -> Any:
        """An encoded marker object -> its JSON data; anything else is returned as is."""
        marker = marker_of(value) if isinstance(value, dict) else None
        if marker is None:
            return value
        try:
            return json.loads(await self._open(marker))
        except PayloadCodecError:
            if self.lenient:
                self.undecoded += 1
                return f"<{describe_marker(marker)}>"
            raise

    async def encode_text(self, text: str | None) -> str | None:
        if self.chain is None or not text:
            return text
        marker = await self._seal(text.encode())
        return text if marker is None else TEXT_PREFIX + json.dumps(marker, separators=(",", ":"))

    async def decode_text(self, text: str | None) -> str | None:
        marker = marker_of(text) if text else None
        if marker is None:
            return text
        try:
            return (await self._open(marker)).decode()
        except PayloadCodecError:
            if self.lenient:
                self.undecoded += 1
                return f"<{describe_marker(marker)}>"
            raise

    # -- records ----------------------------------------------------------------------
    async def encode_failure(self, info: FailureInfo | None) -> FailureInfo | None:
        if info is None or self.chain is None:
            return info
        return info.model_copy(
            update={
                "message": await self.encode_text(info.message),
                "stack": await self.encode_text(info.stack),
                "cause": await self.encode_failure(info.cause),
            }
        )

    async def decode_failure(self, info: FailureInfo | None) -> FailureInfo | None:
        if info is None:
            return None
        return info.model_copy(
            update={
                "message": await self.decode_text(info.message),
                "stack": await self.decode_text(info.stack),
                "cause": await self.decode_failure(info.cause),
            }
        )

    async def encode_event(self, event: HistoryEvent) -> HistoryEvent:
        if self.chain is None:
            return event
        return event.model_copy(
            update={
                "input": await self.encode_value(event.input),
                "result": await self.encode_value(event.result),
                "signal_payload": await self.encode_value(event.signal_payload),
                "error": await self.encode_text(event.error),
                "failure": await self.encode_failure(event.failure),
            }
        )

    async def decode_event(self, event: HistoryEvent) -> HistoryEvent:
        if not _may_be_encoded(event):
            return event
        return event.model_copy(
            update={
                "input": await self.decode_value(event.input),
                "result": await self.decode_value(event.result),
                "signal_payload": await self.decode_value(event.signal_payload),
                "error": await self.decode_text(event.error),
                "failure": await self.decode_failure(event.failure),
            }
        )

    async def encode_state(self, state: WorkflowState, *, history: bool = True) -> WorkflowState:
        """A copy with payloads encoded; ``history=False`` leaves the events as they are."""
        if self.chain is None:
            return state
        update: dict[str, Any] = {
            "input": await self.encode_value(state.input),
            "result": await self.encode_value(state.result),
            "error": await self.encode_text(state.error),
        }
        if history:
            update["history"] = [await self.encode_event(e) for e in state.history]
        return state.model_copy(update=update)

    async def decode_state(self, state: WorkflowState) -> WorkflowState:
        return state.model_copy(
            update={
                "input": await self.decode_value(state.input),
                "result": await self.decode_value(state.result),
                "error": await self.decode_text(state.error),
                "history": [await self.decode_event(e) for e in state.history],
            }
        )


def _may_be_encoded(event: HistoryEvent) -> bool:
    # most events carry nothing encodable: skip the copy
    return (
        event.input is not None
        or event.result is not None
        or event.signal_payload is not None
        or event.error is not None
        or event.failure is not None
    )
