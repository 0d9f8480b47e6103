"""The payload codec at the streaming runtime's boundary with Kafka.

Commands, history events, activity tasks and replies are encoded here just
before they become Avro records, and decoded just after: an encoded payload
is a JSON marker object (``app/workflow/_codec.py``), so the schemas, the
content type and any reader of the topics are unchanged. The run tables
(``_runs.py``) encode the same way. ``Machine`` and the core see plain data.

A payload that cannot be decoded (no codec, an unknown key id, a wrong key)
raises :class:`PayloadCodecError`. Workers let it propagate instead of
dead-lettering: the record is not committed and is read again after a
rewind, so a worker started without the right key stalls, saying why in its
log, and loses nothing; a worker with the key then carries on.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Container
from datetime import datetime

from app.workflow._claim_check import ClaimCheckCodec
from app.workflow._codec import CodecChain, load_codec
from app.workflow._errors import InvalidArgumentError
from app.workflow._payloads import Payloads
from app.workflow._types import HistoryEvent, WorkflowState

from ._machine import Command, Reply, Task
from ._messages import (
    Headers,
    decode_command,
    decode_history_records,
    decode_task,
    dump_payload,
    encode_command,
    encode_history_records,
    encode_reply,
    encode_task,
    payload_limit,
)
from .settings import StreamingSettings


def codec_from_settings(settings: StreamingSettings) -> CodecChain | None:
    """The codec chain ``STREAMFLOW_CODEC_KEY_FILE`` and ``STREAMFLOW_COMPRESS_THRESHOLD`` make."""
    return load_codec(settings.codec_key_file, compress_threshold=settings.compress_threshold)


class WireCodec:
    """Encodes and decodes the user payloads of the streaming runtime's records."""

    def __init__(self, chain: CodecChain | None, *, lenient: bool = False) -> None:
        self.payloads = Payloads(chain, lenient=lenient)

    @property
    def by_reference(self) -> bool:
        """Whether large payloads travel as references (a claim-check codec is configured)."""
        chain = self.payloads.chain
        return chain is not None and any(c.name == ClaimCheckCodec.name for c in chain.codecs)

    async def command_out(self, cmd: Command, *, check_size: bool = False) -> bytes:
        """The command record; ``check_size`` refuses a payload workers would refuse."""
        p = self.payloads
        if p.enabled and (cmd.payload is not None or cmd.failure is not None):
            cmd = dataclasses.replace(
                cmd,
                payload=await p.encode_value(cmd.payload),
                failure=await p.encode_failure(cmd.failure),
            )
        data = dump_payload(cmd.payload) if check_size else None
        if data is not None and len(data) > payload_limit(data):
            raise InvalidArgumentError(
                f"the {cmd.kind} payload of {cmd.workflow_id!r} is {len(data)} bytes encoded, "
                f"over the limit of {payload_limit(data)}: pass a reference (a key, a URL), "
                "or configure a ClaimCheckCodec"
            )
        return encode_command(cmd)

    async def command_in(self, data: bytes | None, key: bytes | None) -> Command:
        """Decode and validate a command (InvalidCommandError, WireError), then its payload."""
        cmd = decode_command(data, key)
        if cmd.payload is None and cmd.failure is None:
            return cmd
        p = self.payloads
        return dataclasses.replace(
            cmd,
            payload=await p.decode_value(cmd.payload),
            failure=await p.decode_failure(cmd.failure),
        )

    async def history_out(
        self,
        workflow_id: str,
        run_id: str,
        workflow_type: str,
        events: list[HistoryEvent],
        batch_bytes: int,
        retries: set[int],
    ) -> list[tuple[bytes, Headers]]:
        """The history records of ``events`` and their headers (``encode_history_records``)."""
        if self.payloads.enabled:
            events = [await self.payloads.encode_event(ev) for ev in events]
        return encode_history_records(
            workflow_id, run_id, workflow_type, events, batch_bytes, retries
        )

    async def history_in(
        self, data: bytes, types: Container[str] | None = None
    ) -> list[tuple[str, str, str, HistoryEvent]]:
        """The events of a history record (``decode_history_records``), payloads decoded."""
        return [
            (wid, run_id, workflow_type, await self.payloads.decode_event(event))
            for wid, run_id, workflow_type, event in decode_history_records(data, types)
        ]

    async def task_out(self, task: Task, scheduled_at: datetime) -> bytes:
        p = self.payloads
        if p.enabled and (task.input is not None or task.heartbeat_details is not None):
            task = dataclasses.replace(
                task,
                input=await p.encode_value(task.input),
                heartbeat_details=await p.encode_value(task.heartbeat_details),
            )
        return encode_task(task, scheduled_at)

    async def task_in(self, data: bytes) -> Task:
        task = decode_task(data)
        if task.input is None and task.heartbeat_details is None:
            return task
        return dataclasses.replace(
            task,
            input=await self.payloads.decode_value(task.input),
            heartbeat_details=await self.payloads.decode_value(task.heartbeat_details),
        )

    async def reply_out(
        self,
        command_id: str,
        client_id: str,
        workflow_id: str,
        reply: Reply,
        *,
        describe: bool = False,
    ) -> bytes:
        """The reply record; a ``describe`` reply keeps its state's ids and names readable."""
        p = self.payloads
        if p.enabled:
            payload = reply.payload
            if describe and isinstance(payload, dict) and isinstance(payload.get("state"), dict):
                state = WorkflowState.model_validate(payload["state"])
                encoded = await p.encode_state(state)
                payload = {**payload, "state": encoded.model_dump(mode="json")}
            else:
                payload = await p.encode_value(payload)
            reply = dataclasses.replace(
                reply, payload=payload, error=await p.encode_text(reply.error)
            )
        return encode_reply(command_id, client_id, workflow_id, reply)

    async def reply_in(self, reply: Reply, *, describe: bool = False) -> Reply:
        """Decode the payload of a reply read with ``decode_reply``."""
        if reply.payload is None and reply.error is None:
            return reply
        p = self.payloads
        payload = reply.payload
        if describe and isinstance(payload, dict) and isinstance(payload.get("state"), dict):
            state = await p.decode_state(WorkflowState.model_validate(payload["state"]))
            payload = {**payload, "state": state.model_dump(mode="json")}
        else:
            payload = await p.decode_value(payload)
        return dataclasses.replace(reply, payload=payload, error=await p.decode_text(reply.error))
