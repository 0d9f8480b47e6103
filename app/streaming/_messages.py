"""Between Avro records (``schemas/*.avsc``) and the runtime's values.

User values travel as JSON bytes with a content type, like Temporal's
payloads; only ``application/json`` is understood. Decoding a command also
validates it: anything wrong raises :class:`InvalidCommandError` with the
reason, and the worker sends the message to the dead-letter topic.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import itertools
import json
import random
from collections.abc import Callable, Container, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from aiokafka.partitioner import murmur2

from app.workflow._types import EventType, FailureInfo, HistoryEvent, ParentClosePolicy
from app.workflow._visibility import memo, search_attributes

from ._commands import Command, CommandKind, ParentRef
from ._machine import Reply, Task
from ._wire import WireError, codec

JSON = "application/json"
_ENCODED = b'{"$encoded":'
MAX_PAYLOAD = 256 * 1024
"""Largest user payload accepted in a command (bytes of JSON).

Payloads are kept in the run's history and repeated in table and topic
records, so this stays well under the producers' maximum request size.
"""
MAX_ORIGINAL = 8 * 1024 * 1024
"""Bytes of an original message kept in its dead letter (the rest is cut, and said so).

The dead-letter topic accepts records of 16 MiB (``topics``), more than any
command topic normally does, so a dead letter keeps its original whole."""


class InvalidCommandError(ValueError):
    """A message on the commands topic that cannot be applied; the text says why."""


def dump_payload(value: Any) -> bytes | None:
    if value is None:
        return None
    return json.dumps(value, separators=(",", ":")).encode()


def payload_limit(data: bytes, limit: int = MAX_PAYLOAD) -> int:
    """The size a payload's bytes may have: more for an encoded one (base64 and its marker)."""
    return limit * 4 // 3 + 4096 if data.startswith(_ENCODED) else limit


def load_payload(
    data: bytes | None, content_type: str, what: str, limit: int | None = MAX_PAYLOAD
) -> Any:
    if data is None:
        return None
    if content_type != JSON:
        raise InvalidCommandError(
            f"{what} has content type {content_type!r}; only {JSON!r} is understood"
        )
    if limit is not None:
        limit = payload_limit(data, limit)
    if limit is not None and len(data) > limit:
        raise InvalidCommandError(f"{what} is {len(data)} bytes, over the limit of {limit} bytes")
    try:
        return json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidCommandError(f"{what} is not valid JSON: {exc}") from None


def partition_for(key: str, partitions: int) -> int:
    """The partition Kafka's default partitioner picks for ``key`` (murmur2).

    Commands are keyed by workflow id and replies by client id: a client reads
    only the replies partition its id hashes to.
    """
    return (_murmur2(key.encode()) & 0x7FFFFFFF) % partitions


# aiokafka's murmur2 is pure Python (about 5 us a key); a worker sends about ten
# records per workflow, most of them keyed by the workflow's id
_murmur2: Callable[[bytes], int] = functools.lru_cache(maxsize=8192)(murmur2)


def partitioner(key: bytes | None, all_partitions: list[int], available: list[int]) -> int:
    """Kafka's default partitioner (murmur2 of the key), each key hashed once.

    For ``AIOKafkaProducer(partitioner=...)``: the same partition for the same key
    as aiokafka's and the Java client's default.
    """
    if key is None:
        return random.choice(available or all_partitions)
    return all_partitions[(_murmur2(key) & 0x7FFFFFFF) % len(all_partitions)]


def _failure_record(info: FailureInfo | None) -> dict[str, Any] | None:
    return None if info is None else info.model_dump(mode="json")


def _failure(record: dict[str, Any] | None) -> FailureInfo | None:
    return None if record is None else FailureInfo.model_validate(record)


def _utc(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


# -- commands -------------------------------------------------------------------
def _json_text(value: Mapping[str, Any] | None) -> str | None:
    return json.dumps(dict(value), separators=(",", ":")) if value else None


def _start_field(
    record: Mapping[str, Any], name: str, check: Callable[[Any, str], Mapping[str, Any]]
) -> dict[str, Any] | None:
    """A start command's JSON object field, validated (absent before version 3)."""
    text = record.get(name)
    if text is None:
        return None
    try:
        return dict(check(json.loads(text), name)) or None
    except ValueError as exc:  # InvalidArgumentError is a ValueError too
        raise InvalidCommandError(f"invalid {name}: {exc}") from None


def encode_command(cmd: Command) -> bytes:
    return codec("command").encode(
        {
            "command_id": cmd.command_id,
            "kind": cmd.kind,
            "workflow_id": cmd.workflow_id,
            "issued_at": _utc(cmd.issued_at),
            "name": cmd.name,
            "payload": dump_payload(cmd.payload),
            "content_type": JSON,
            "sender_id": cmd.sender_id,
            "reply_to": cmd.reply_to,
            "timeout_seconds": cmd.timeout_seconds,
            "run_id": cmd.run_id,
            "step": cmd.step,
            "attempt": cmd.attempt,
            "duration": cmd.duration,
            "failure": _failure_record(cmd.failure),
            "route": cmd.route,
            "parent": None if cmd.parent is None else dataclasses.asdict(cmd.parent),
            "child_run_id": cmd.child_run_id,
            "search_attributes": _json_text(cmd.search_attributes),
            "memo": _json_text(cmd.memo),
        }
    )


def decode_command(data: bytes | None, key: bytes | None = None) -> Command:
    """A validated command; raises InvalidCommandError (or WireError) saying what is wrong."""
    record = codec("command").decode(data)
    kind = record["kind"]
    if kind not in CommandKind.ALL:
        raise InvalidCommandError(
            f"unknown command kind {kind!r} (known: {', '.join(CommandKind.ALL)})"
        )
    wid = record["workflow_id"]
    if not wid:
        raise InvalidCommandError("workflow_id is empty")
    if not record["command_id"]:
        raise InvalidCommandError("command_id is empty")
    if key is not None and key != wid.encode():
        raise InvalidCommandError(
            f"message key {key!r} is not the workflow id {wid!r}: commands must be keyed "
            "by workflow id so that one partition owns each workflow"
        )
    if kind in (CommandKind.START, CommandKind.SIGNAL, CommandKind.QUERY) and not record["name"]:
        what = {"start": "workflow type", "signal": "signal name", "query": "query name"}[kind]
        raise InvalidCommandError(f"a {kind} command needs its {what} in 'name'")
    if kind in _ENGINE_STEP_KINDS and (record["step"] is None or record["run_id"] is None):
        raise InvalidCommandError(f"a {kind} command needs 'step' and 'run_id'")
    if kind == CommandKind.RESET and (record["step"] is None or record["step"] < 1):
        raise InvalidCommandError("a reset command needs 'step': the event id to reset to (>= 1)")
    if kind == CommandKind.CHILD_RESULT and record["attempt"] is None:
        raise InvalidCommandError("a child_result command needs 'attempt'")
    parent = record.get("parent")
    if parent is not None:
        try:
            policy = ParentClosePolicy(parent["close_policy"]).value
        except ValueError:
            choices = ", ".join(p.value for p in ParentClosePolicy)
            raise InvalidCommandError(
                f"parent.close_policy must be one of {choices}, got {parent['close_policy']!r}"
            ) from None
        parent = ParentRef(
            parent["workflow_id"], parent["run_id"], parent["step"], parent["attempt"], policy
        )
    timeout = record["timeout_seconds"]
    if timeout is not None and not timeout > 0:
        raise InvalidCommandError(f"timeout_seconds must be > 0, got {timeout}")
    try:
        failure = _failure(record["failure"])
    except ValueError as exc:
        raise InvalidCommandError(f"invalid failure: {exc}") from None
    return Command(
        command_id=record["command_id"],
        kind=kind,
        workflow_id=wid,
        issued_at=record["issued_at"],
        name=record["name"],
        # a handover carries a whole history, written by the engine itself
        payload=load_payload(
            record["payload"],
            record["content_type"],
            f"{kind} payload",
            None if kind == CommandKind.HANDOVER else MAX_PAYLOAD,
        ),
        sender_id=record["sender_id"],
        reply_to=record["reply_to"],
        timeout_seconds=timeout,
        run_id=record["run_id"],
        step=record["step"],
        attempt=record["attempt"],
        duration=record["duration"],
        failure=failure,
        route=record["route"],
        parent=parent,
        child_run_id=record.get("child_run_id"),
        search_attributes=_start_field(record, "search_attributes", search_attributes),
        memo=_start_field(record, "memo", memo),
    )


_ENGINE_STEP_KINDS = (
    CommandKind.ACTIVITY_RESULT,
    CommandKind.TIMER_FIRED,
    CommandKind.HEARTBEAT,
    CommandKind.CHILD_RESULT,
)


# -- history --------------------------------------------------------------------
def encode_history(workflow_id: str, run_id: str, workflow_type: str, event: HistoryEvent) -> bytes:
    """One event as a ``HistoryEvent`` record."""
    return codec("history_event").encode(_history_record(workflow_id, run_id, workflow_type, event))


Headers = list[tuple[str, bytes]]


def encode_history_records(
    workflow_id: str,
    run_id: str,
    workflow_type: str,
    events: Sequence[HistoryEvent],
    batch_bytes: int,
    retries: Container[int] = (),
) -> list[tuple[bytes, Headers]]:
    """``events`` in as few history records as ``batch_bytes`` allows, with their headers.

    Each event is a ``HistoryEvent`` message; consecutive ones share a
    ``HistoryBatch`` while their messages add up to at most ``batch_bytes``
    (so a record stays far under the producer's maximum). An event alone in its
    record is the message itself, as before batches; with ``batch_bytes`` 0
    every one is. ``retries``: ids of the events after which an attempt is retried.
    """
    messages = [encode_history(workflow_id, run_id, workflow_type, ev) for ev in events]
    bounds: list[int] = [0]
    size = 0
    for i, message in enumerate(messages):
        if i > bounds[-1] and size + len(message) > batch_bytes:
            bounds.append(i)
            size = 0
        size += len(message)
    bounds.append(len(messages))
    out = []
    for start, end in itertools.pairwise(bounds):
        part = events[start:end]
        if len(part) == 1:
            out.append((messages[start], _history_headers(part, retries)))
        elif part:
            batch = {"types": [ev.type.value for ev in part], "events": messages[start:end]}
            out.append((codec("history_batch").encode(batch), _history_headers(part, retries)))
    return out


def _history_headers(events: Sequence[HistoryEvent], retries: Container[int]) -> Headers:
    # the types in a header: a reader skips a record it does not want without decoding it
    if len(events) == 1:
        headers = [("type", events[0].type.value.encode())]
        if events[0].id in retries:
            headers.append(("retry", b"1"))
        return headers
    headers = [("types", ",".join(ev.type.value for ev in events).encode())]
    retried = [str(ev.id) for ev in events if ev.id in retries]
    if retried:
        headers.append(("retries", ",".join(retried).encode()))
    return headers


def history_types(headers: Iterable[tuple[str, bytes]]) -> list[str] | None:
    """The event types a history record's headers list; None for a record without them."""
    for key, value in headers:
        if key in ("type", "types"):
            return value.decode().split(",")
    return None


def retried_ids(headers: Iterable[tuple[str, bytes]]) -> set[int] | None:
    """Ids of a history record's events after which an attempt is retried; None: all of them.

    A single event carries the header ``retry: 1``; a batch, ``retries`` with the ids.
    """
    retried: set[int] = set()
    for key, value in headers:
        if key == "retry":
            return None
        if key == "retries":
            retried.update(int(i) for i in value.split(b",") if i.isdigit())
    return retried


def _history_record(
    workflow_id: str, run_id: str, workflow_type: str, event: HistoryEvent
) -> dict[str, Any]:
    payload = event.input
    if event.type in (EventType.ACTIVITY_COMPLETED, EventType.UPDATE_COMPLETED, *_RESULT_TYPES):
        payload = event.result
    elif event.type in _SIGNAL_TYPES:
        payload = event.signal_payload
    return {
        "workflow_id": workflow_id,
        "run_id": run_id,
        "workflow_type": workflow_type,
        "id": event.id,
        "type": event.type.value,
        "timestamp": _utc(event.timestamp),
        "activity_name": event.activity_name,
        "payload": dump_payload(payload),
        "content_type": JSON,
        "error": event.error,
        "signal_name": event.signal_name,
        "duration": event.duration,
        "step": event.step,
        "attempt": event.attempt,
        "failure": _failure_record(event.failure),
        "sender_id": event.sender_id,
        # a workflow_continued_as_new names the next run here (no schema change)
        "change_id": event.new_run_id or event.change_id,
        "child_workflow_id": event.child_workflow_id,
        "child_workflow_type": event.child_workflow_type,
        "parent_workflow_id": event.parent_workflow_id,
        "parent_run_id": event.parent_run_id,
        "search_attributes": _json_text(event.search_attributes),
        "memo": _json_text(event.memo),
        "reason": event.reason,
    }


_SIGNAL_TYPES = (
    EventType.SIGNAL_RECEIVED,
    EventType.UPDATE_ACCEPTED,
    EventType.CHILD_WORKFLOW_SIGNALED,
)
_RESULT_TYPES = (
    EventType.CHILD_WORKFLOW_COMPLETED,
    EventType.WORKFLOW_COMPLETED,
    EventType.WORKFLOW_FAILED,
    EventType.WORKFLOW_CANCELED,
)


def decode_history(data: bytes) -> tuple[str, str, str, HistoryEvent]:
    """(workflow id, run id, workflow type, event) of a ``HistoryEvent`` record."""
    return _history_event(codec("history_event").decode(data))


def decode_history_records(
    data: bytes, types: Container[str] | None = None
) -> list[tuple[str, str, str, HistoryEvent]]:
    """(workflow id, run id, workflow type, event) of each event of a history topic record.

    The record is a ``HistoryEvent`` or a ``HistoryBatch`` (told apart by its
    schema fingerprint); a batch's events come in the order they were recorded.
    With ``types``, only the events of those types (a batch's others are not decoded).
    """
    batch = codec("history_batch")
    if not batch.wrote(data):
        record = codec("history_event").decode(data)
        return [_history_event(record)] if types is None or record["type"] in types else []
    record = batch.decode(data)
    kinds, messages = record["types"], record["events"]
    if len(kinds) != len(messages):
        raise WireError(f"a history_batch with {len(kinds)} types for {len(messages)} events")
    pairs = zip(kinds, messages, strict=True)
    return [decode_history(m) for k, m in pairs if types is None or k in types]


def _history_event(record: Mapping[str, Any]) -> tuple[str, str, str, HistoryEvent]:
    kind = EventType(record["type"])
    payload = load_payload(record["payload"], record["content_type"], "history payload")
    fields: dict[str, Any] = {}
    if kind in (EventType.ACTIVITY_COMPLETED, EventType.UPDATE_COMPLETED, *_RESULT_TYPES):
        fields["result"] = payload
    elif kind in _SIGNAL_TYPES:
        fields["signal_payload"] = payload
    else:
        fields["input"] = payload
    if kind is EventType.WORKFLOW_CONTINUED_AS_NEW:
        fields["new_run_id"] = record["change_id"]
    else:
        fields["change_id"] = record["change_id"]
    for name in ("child_workflow_id", "child_workflow_type", "parent_workflow_id", "parent_run_id"):
        fields[name] = record.get(name)  # absent in version 1 and 2 messages
    for name in ("search_attributes", "memo"):  # absent before version 4
        text = record.get(name)
        fields[name] = None if text is None else json.loads(text)
    fields["reason"] = record.get("reason")
    event = HistoryEvent(
        id=record["id"],
        type=kind,
        timestamp=record["timestamp"],
        activity_name=record["activity_name"],
        error=record["error"],
        signal_name=record["signal_name"],
        duration=record["duration"],
        step=record["step"],
        attempt=record["attempt"],
        failure=_failure(record["failure"]),
        sender_id=record["sender_id"],
        **fields,
    )
    return record["workflow_id"], record["run_id"], record["workflow_type"], event


# -- activity tasks -------------------------------------------------------------
def encode_task(task: Task, scheduled_at: datetime) -> bytes:
    return codec("activity_task").encode(
        {
            "task_id": task.task_id,
            "workflow_id": task.workflow_id,
            "run_id": task.run_id,
            "activity_name": task.activity_name,
            "step": task.step,
            "attempt": task.attempt,
            "payload": dump_payload(task.input),
            "content_type": JSON,
            "scheduled_at": _utc(scheduled_at),
            "timeout_seconds": task.timeout,
            "heartbeat_timeout_seconds": task.heartbeat_timeout,
            "heartbeat_details": (
                None if task.heartbeat_details is None else dump_payload(task.heartbeat_details)
            ),
        }
    )


def decode_task(data: bytes) -> Task:
    record = codec("activity_task").decode(data)
    return Task(
        task_id=record["task_id"],
        workflow_id=record["workflow_id"],
        run_id=record["run_id"],
        activity_name=record["activity_name"],
        step=record["step"],
        attempt=record["attempt"],
        input=load_payload(record["payload"], record["content_type"], "activity input"),
        timeout=record["timeout_seconds"],
        heartbeat_timeout=record.get("heartbeat_timeout_seconds"),
        heartbeat_details=(
            None
            if record.get("heartbeat_details") is None
            else load_payload(record["heartbeat_details"], JSON, "heartbeat details")
        ),
    )


# -- replies --------------------------------------------------------------------
def encode_reply(command_id: str, client_id: str, workflow_id: str, reply: Reply) -> bytes:
    return codec("reply").encode(
        {
            "command_id": command_id,
            "client_id": client_id,
            "workflow_id": workflow_id,
            "ok": reply.ok,
            "error_type": reply.error_type,
            "error": reply.error,
            "run_id": reply.run_id,
            "payload": dump_payload(reply.payload),
            "content_type": JSON,
        }
    )


def decode_reply(data: bytes) -> tuple[str, str, Reply]:
    """(command id, client id, reply)."""
    record = codec("reply").decode(data)
    reply = Reply(
        ok=record["ok"],
        error_type=record["error_type"],
        error=record["error"],
        run_id=record["run_id"],
        # a describe reply carries a whole history; replies come from our own workers
        payload=load_payload(record["payload"], record["content_type"], "reply payload", None),
    )
    return record["command_id"], record["client_id"], reply


# -- dead letters ---------------------------------------------------------------
def encode_dead_letter(
    reason: str, topic: str, partition: int, offset: int, original: bytes | None
) -> bytes:
    if original is not None and len(original) > MAX_ORIGINAL:
        digest = hashlib.sha256(original).hexdigest()
        reason = (
            f"{reason} (original is {len(original)} bytes, sha256 {digest}; "
            f"only its first {MAX_ORIGINAL} bytes are kept here)"
        )
        original = original[:MAX_ORIGINAL]
    return codec("dead_letter").encode(
        {
            "reason": reason,
            "source_topic": topic,
            "source_partition": partition,
            "source_offset": offset,
            "original": original,
            "failed_at": datetime.now(UTC),
        }
    )


def decode_dead_letter(data: bytes) -> dict[str, Any]:
    return codec("dead_letter").decode(data)


__all__ = [
    "JSON",
    "Headers",
    "MAX_PAYLOAD",
    "InvalidCommandError",
    "WireError",
    "decode_command",
    "decode_dead_letter",
    "decode_history",
    "decode_history_records",
    "decode_reply",
    "decode_task",
    "encode_command",
    "encode_dead_letter",
    "encode_history",
    "encode_history_records",
    "history_types",
    "retried_ids",
    "encode_reply",
    "encode_task",
]
