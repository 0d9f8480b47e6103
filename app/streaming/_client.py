"""``KafkaExecutor``: a :class:`DurableExecutor` that talks to workers over Kafka.

It runs no workflow itself. ``execute``, ``signal``, ``cancel`` and ``query``
publish an Avro command keyed by workflow id and wait (bounded by
``request_timeout``) for the owning partition's reply on the replies topic,
keyed by the client's id: the client reads only the partition its id hashes
to, so clients added do not each read every reply.
``handle.result()`` asks the owner for the run's state and waits for its
terminal event on the history topic, which the client tails from the moment
it starts; the same tail drives the client's :class:`Hooks`, so hooks fire
once per recorded event, wherever the workflow runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import uuid
from collections import OrderedDict
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError

from app.workflow._codec import PayloadCodec, PayloadCodecError, as_chain
from app.workflow._converter import (
    check_workflow_call,
    decode_failure,
    from_payload,
    signature_of,
    to_payload,
)
from app.workflow._core import check_reason, terminated_failure
from app.workflow._errors import (
    InvalidArgumentError,
    QueryNotFoundError,
    UpdateNotFoundError,
    UpdateRejectedError,
    WorkflowAlreadyRunningError,
    WorkflowError,
    WorkflowNotFoundError,
)
from app.workflow._handle import RunHandle, failure_error, outcome_value
from app.workflow._hooks import Hooks, call_hook
from app.workflow._names import FunctionTable, Registrable
from app.workflow._schedules import ScheduleMethods, scheduler
from app.workflow._tasks import cancel_and_wait
from app.workflow._types import (
    EventType,
    FailureInfo,
    HistoryEvent,
    Signal,
    WorkflowOptions,
    WorkflowState,
    WorkflowStatus,
)
from app.workflow._updates import check_update, update_answer
from app.workflow._visibility import WorkflowPage, WorkflowQuery

from ._codec import WireCodec, codec_from_settings
from ._machine import DESCRIBE, STATE_QUERIES, SUMMARY, Command, CommandKind, Reply, parked_error
from ._messages import (
    MAX_PAYLOAD,
    decode_reply,
    dump_payload,
    history_types,
    partition_for,
    partitioner,
    retried_ids,
)
from ._security import BrokerSecurityError, start_client
from ._visibility import VisibilityIndex
from .settings import StreamingSettings

log = logging.getLogger("app.streaming.client")

_TERMINAL = {EventType.WORKFLOW_COMPLETED, EventType.WORKFLOW_FAILED, EventType.WORKFLOW_CANCELED}


def _wanted_types(hooks: Hooks) -> frozenset[str]:
    """The history event types this client reads: those it waits on or has a hook for."""
    wanted = {*_TERMINAL, EventType.WORKFLOW_CONTINUED_AS_NEW}
    by_hook = (
        (hooks.on_workflow_start, (EventType.WORKFLOW_STARTED,)),
        (hooks.on_activity_start, (EventType.ACTIVITY_STARTED,)),
        (hooks.on_activity_complete, (EventType.ACTIVITY_COMPLETED,)),
        (hooks.on_signal, (EventType.SIGNAL_RECEIVED,)),
        (hooks.on_retry, (EventType.ACTIVITY_FAILED, EventType.TIMER_FIRED)),
    )
    for hook, types in by_hook:
        if hook is not None:
            wanted.update(types)
    return frozenset(t.value for t in wanted)


_SEEN_LIMIT = 100_000
_RESEND_FIRST = 2.0
"""Seconds without a reply before a command is published again (then doubling)."""
_RESEND_MAX = 8.0
_NOT_ENDED = object()


class BrokerUnavailableError(WorkflowError, ConnectionError):
    """The Kafka brokers could not be reached; the message names them."""


class NoReplyError(WorkflowError, TimeoutError):
    """No worker answered a command within ``request_timeout`` (its partition had no
    working owner that long); the command may still be applied later."""


class KafkaHandle(RunHandle):
    """A run started through (or looked up with) a :class:`KafkaExecutor`."""


class KafkaExecutor(ScheduleMethods):
    """Starts, signals, queries and cancels workflows run by streaming workers.

    Args:
        bootstrap_servers: Kafka brokers (``host:port[,...]``); or pass ``settings``.
        settings: all streaming settings (topology, timings); overrides the above.
        hooks: called as the workers record events (from the history topic).
        workflows: functions whose names and return types the client should
            know (optional: ``execute`` takes the function itself).
        client_id: this client's id on the replies topic (random by default).
        codec: encodes payloads before they are published and decodes what is read
            (a :class:`PayloadCodec` or several, applied in order); by default the
            one ``STREAMFLOW_CODEC_KEY_FILE`` and ``STREAMFLOW_COMPRESS_THRESHOLD`` make.
        visibility: the SQLite file of the index :meth:`list` reads (kept up to
            date by ``python -m app visibility``, and caught up at each call); by
            default an index in memory, built from the history topic at the first call.

    Use it as ``async with KafkaExecutor("broker:9092") as ex:``.
    """

    def __init__(
        self,
        bootstrap_servers: str | None = None,
        *,
        settings: StreamingSettings | None = None,
        hooks: Hooks | None = None,
        workflows: Registrable = (),
        client_id: str | None = None,
        codec: PayloadCodec | Sequence[PayloadCodec] | None = None,
        visibility: str | None = None,
    ) -> None:
        if settings is None:
            settings = StreamingSettings.from_env(bootstrap_servers=bootstrap_servers)
        elif not isinstance(settings, StreamingSettings):
            raise InvalidArgumentError(
                f"settings must be StreamingSettings, got {type(settings).__name__}"
            )
        if hooks is not None and not isinstance(hooks, Hooks):
            raise InvalidArgumentError(f"hooks must be a Hooks, got {type(hooks).__name__}")
        chain = as_chain(codec, "codec")
        self.settings = settings
        self.wire = WireCodec(chain if chain is not None else codec_from_settings(settings))
        self.topology = settings.topology
        self.client_id = client_id or f"client-{uuid.uuid4().hex[:12]}"
        self._hooks = hooks or Hooks()
        self._wanted = _wanted_types(self._hooks)
        self._workflows = FunctionTable("workflow", workflows)
        self._workflows.add(scheduler)
        self._producer: AIOKafkaProducer | None = None
        # one consumer tails both this client's replies and the history: one fetch
        # request for both (a client's cost is mostly its fetches)
        self._tail: AIOKafkaConsumer | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._pending: dict[str, asyncio.Future[Reply]] = {}
        self._watchers: dict[str, list[asyncio.Event]] = {}
        self._ended: OrderedDict[str, tuple[str, HistoryEvent]] = OrderedDict()
        # (workflow id, run id) -> the run it continued as, from the history topic
        self._continued: OrderedDict[tuple[str, str], str] = OrderedDict()
        self._started_here: OrderedDict[str, None] = OrderedDict()
        self._seen_events: dict[tuple[str, str, int], None] = {}
        self._hook_queue: asyncio.Queue[tuple[Any, tuple[Any, ...]]] = asyncio.Queue()
        self._started = False
        self._closed = False
        self._start_lock = asyncio.Lock()
        if visibility is not None and (not isinstance(visibility, str) or not visibility):
            raise InvalidArgumentError(f"visibility must be an index file name, got {visibility!r}")
        self._visibility_path = visibility or ":memory:"
        self._index: VisibilityIndex | None = None

    async def __aenter__(self) -> KafkaExecutor:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- lifecycle ---------------------------------------------------------------------
    async def start(self) -> None:
        """Connect to the brokers and start tailing replies and history (idempotent)."""
        async with self._start_lock:
            if self._started:
                return
            if self._closed:
                raise WorkflowError("this KafkaExecutor is closed")
            try:
                await asyncio.wait_for(self._connect(), self.settings.request_timeout)
            except BrokerSecurityError:
                await self._disconnect()
                raise
            except (TimeoutError, KafkaError, OSError) as exc:
                await self._disconnect()
                raise BrokerUnavailableError(
                    f"cannot reach Kafka at {self.settings.bootstrap_servers} within "
                    f"{self.settings.request_timeout:g}s: {exc or type(exc).__name__}"
                ) from exc
            self._started = True

    async def _connect(self) -> None:
        if self.settings.follow_generation:
            from .admin import read_generation

            announced = await read_generation(self.settings)
            if announced is not None and announced[0] > self.settings.generation:
                generation, partitions = announced
                self.settings = self.settings.model_copy(
                    update={"generation": generation, "partitions": partitions}
                )
                self.topology = self.settings.topology
        s = self.settings
        self._producer = AIOKafkaProducer(
            **s.kafka_options(),
            acks="all",
            linger_ms=0,
            partitioner=partitioner,
            client_id=self.client_id,
        )
        await start_client(self._producer.start, s, s.bootstrap_servers, s.request_timeout)
        common: dict[str, Any] = {
            **s.kafka_options(),
            "enable_auto_commit": False,
            "fetch_max_wait_ms": self.settings.fetch_wait_ms,
            "client_id": self.client_id,
        }
        self._tail = consumer = AIOKafkaConsumer(**common)
        await consumer.start()
        # Replies are keyed by client id: ours all land in one partition.
        replies = await self._partitions(consumer, self.topology.replies)
        tps = [TopicPartition(self.topology.replies, partition_for(self.client_id, len(replies)))]
        history = await self._partitions(consumer, self.topology.history)
        tps += [TopicPartition(self.topology.history, p) for p in history]
        consumer.assign(tps)
        await consumer.seek_to_end(*tps)
        # resolve the end offsets now: what is published after start() returns is seen
        ends = {tp: await consumer.position(tp) for tp in tps}
        await self._past_last_batches(consumer, {tp: e for tp, e in ends.items() if e > 0})
        self._tasks = [
            asyncio.create_task(self._read_tails(consumer), name="kafka-client-tail"),
            asyncio.create_task(self._run_hooks(), name="kafka-client-hooks"),
        ]

    async def _past_last_batches(
        self, consumer: AIOKafkaConsumer, ends: dict[TopicPartition, int]
    ) -> None:
        """Move past the whole last batch of each partition in ``ends``.

        A broker may report a partition's end as its last batch's first offset
        + 1 (the test broker does: docs/architecture.md, "Known limits"):
        records of that batch written before this client started would then be
        taken for new, and fire hooks again. Reading from the reported end - 1
        takes the batch whole; on Kafka it is the one last record. A partition
        whose records are all gone (retention) starts at the reported end.
        """
        firsts = await consumer.beginning_offsets(list(ends))
        waiting = {tp for tp in ends if firsts.get(tp, 0) < ends[tp]}
        for tp in waiting:
            consumer.seek(tp, ends[tp] - 1)
        loop = asyncio.get_running_loop()
        # the record is there: wait for it as long as a loaded machine may need
        deadline = loop.time() + self.settings.request_timeout / 2
        while waiting and (left := deadline - loop.time()) > 0:
            fetched = await consumer.getmany(*waiting, timeout_ms=int(left * 1000) + 1)
            waiting -= {tp for tp, records in fetched.items() if records}
        for tp in waiting:  # not read in time: start at the reported end
            log.warning(
                "could not read the last record of %s[%s]; hooks for it may fire again",
                tp.topic,
                tp.partition,
            )
            consumer.seek(tp, ends[tp])

    async def _partitions(self, consumer: AIOKafkaConsumer, topic: str) -> list[int]:
        delay = 0.05
        while True:
            partitions = consumer.partitions_for_topic(topic)
            if partitions:
                return sorted(partitions)
            # the topic may not exist yet: create it with the topology's settings
            await self._ensure_topics()
            await consumer._client.force_metadata_update()
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.5)

    async def _ensure_topics(self) -> None:
        from .admin import ensure_topics

        await ensure_topics(self.settings)

    async def aclose(self) -> None:
        """Stop tailing and disconnect; running workflows are not affected."""
        self._closed = True
        if self._index is not None:
            await self._index.aclose()
        await cancel_and_wait(self._tasks)
        self._tasks = []
        await self._disconnect()
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(WorkflowError("the KafkaExecutor was closed"))
        self._pending.clear()

    async def _disconnect(self) -> None:
        for client in (self._producer, self._tail):
            if client is not None:
                with contextlib.suppress(Exception):
                    await client.stop()
        self._producer = self._tail = None

    # -- tails -------------------------------------------------------------------------
    async def _read_tails(self, consumer: AIOKafkaConsumer) -> None:
        replies = self.topology.replies
        key = self.client_id.encode()
        while True:
            batches = await consumer.getmany(timeout_ms=1000)
            # replies first: a caller waits on each, while hooks may run behind
            for tp, records in sorted(batches.items(), key=lambda b: b[0].topic != replies):
                for record in records:
                    if record.value is None:
                        continue
                    if tp.topic == replies:
                        if record.key == key:
                            self._on_reply(record)
                    else:
                        await self._on_history(record)

    def _on_reply(self, message: Any) -> None:
        try:
            command_id, _, reply = decode_reply(message.value)
        except Exception:
            log.warning("undecodable reply at offset %s", message.offset, exc_info=True)
            return
        fut = self._pending.pop(command_id, None)
        if fut is not None and not fut.done():
            fut.set_result(reply)

    async def _on_history(self, message: Any) -> None:
        headers = message.headers or ()
        kinds = history_types(headers)
        if kinds is not None and not any(k in self._wanted for k in kinds):
            return  # no hook and no waiter for any of its events: not even decoded
        try:
            events = await self.wire.history_in(message.value, self._wanted)
        except PayloadCodecError as exc:
            # no hooks for it; result() then asks the owner and raises this error
            log.warning("history record at %s cannot be decoded: %s", message.offset, exc)
            return
        except Exception:
            log.warning("undecodable history record at %s", message.offset, exc_info=True)
            return
        retried = retried_ids(headers)
        for wid, run_id, _, event in events:
            self._on_event(wid, run_id, event, retried is None or event.id in retried)

    def _on_event(self, wid: str, run_id: str, event: HistoryEvent, retry: bool) -> None:
        mark = (wid, run_id, event.id)
        if mark in self._seen_events:
            return  # republished after a worker crash
        self._seen_events[mark] = None
        if len(self._seen_events) > _SEEN_LIMIT:
            for old in list(self._seen_events)[: _SEEN_LIMIT // 2]:
                del self._seen_events[old]
        self._queue_hooks(wid, event, retry)
        if event.type is EventType.WORKFLOW_CONTINUED_AS_NEW and event.new_run_id:
            self._continued[(wid, run_id)] = event.new_run_id
            if len(self._continued) > _SEEN_LIMIT:
                self._continued.popitem(last=False)
            for waiter in self._watchers.get(wid, []):
                waiter.set()
        if event.type in _TERMINAL:
            self._ended[wid] = (run_id, event)
            self._ended.move_to_end(wid)
            if len(self._ended) > _SEEN_LIMIT:
                self._ended.popitem(last=False)
            for waiter in self._watchers.get(wid, []):
                waiter.set()

    def _queue_hooks(self, wid: str, event: HistoryEvent, retry: bool) -> None:
        h = self._hooks
        kind = event.type
        calls: list[tuple[Any, tuple[Any, ...]]] = []
        if kind is EventType.WORKFLOW_STARTED:
            calls.append((h.on_workflow_start, (wid, event.input)))
        elif kind is EventType.ACTIVITY_STARTED:
            calls.append((h.on_activity_start, (wid, event.input)))
        elif kind is EventType.ACTIVITY_COMPLETED:
            calls.append((h.on_activity_complete, (wid, event.result)))
        elif kind is EventType.SIGNAL_RECEIVED:
            signal = Signal(
                name=event.signal_name or "",
                payload=event.signal_payload,
                sender_id=event.sender_id or "",
            )
            calls.append((h.on_signal, (wid, signal)))
        elif kind is EventType.WORKFLOW_COMPLETED:
            calls.append((h.on_workflow_complete, (wid, event.result)))
        elif kind is EventType.WORKFLOW_FAILED:
            state = WorkflowState(
                workflow_id=wid,
                run_id="",
                status=WorkflowStatus.FAILED,
                error=event.error,
                history=[event],
                created_at=event.timestamp,
                updated_at=event.timestamp,
            )
            calls.append((h.on_workflow_fail, (wid, failure_error(state, None))))
        if retry:
            if kind is EventType.ACTIVITY_FAILED and event.failure is not None:
                calls.append((h.on_retry, (wid, decode_failure(event.failure))))
            elif kind is EventType.TIMER_FIRED:
                err = TimeoutError(f"activity {event.activity_name!r} timed out")
                calls.append((h.on_retry, (wid, err)))
        for hook, args in calls:
            if hook is not None:
                self._hook_queue.put_nowait((hook, args))

    async def _run_hooks(self) -> None:
        # One task calls hooks in event order; a hook may call this executor.
        while True:
            hook, args = await self._hook_queue.get()
            try:
                await call_hook(hook, *args)
            except Exception:
                log.exception("hook %r failed", hook)

    # -- requests ----------------------------------------------------------------------
    async def _request(self, cmd: Command) -> Reply:
        """Publish ``cmd`` and wait for its reply, until ``request_timeout``.

        A rebalance or a broker restart must not fail the call: the command is
        published again, with the same id, while no reply came (workers drop a
        command id they have seen: a start answers with the run it made), and a
        publish that fails is tried again, until the deadline.
        """
        await self.start()
        assert self._producer is not None
        loop = asyncio.get_running_loop()
        timeout = self.settings.request_timeout
        deadline = loop.time() + timeout
        fut: asyncio.Future[Reply] = loop.create_future()
        self._pending[cmd.command_id] = fut
        value, key = await self.wire.command_out(cmd, check_size=True), cmd.workflow_id.encode()
        wait, published, failure = _RESEND_FIRST, False, None
        try:
            while (remaining := deadline - loop.time()) > 0:
                try:
                    await asyncio.wait_for(
                        self._producer.send_and_wait(self.topology.commands, value, key=key),
                        remaining,
                    )
                    published = True
                except (KafkaError, TimeoutError) as exc:
                    failure = exc
                    await asyncio.sleep(min(_RESEND_FIRST, max(0.0, deadline - loop.time())))
                    continue
                try:
                    reply = await asyncio.wait_for(
                        asyncio.shield(fut), min(wait, max(0.0, deadline - loop.time()))
                    )
                except TimeoutError:
                    wait = min(wait * 2, _RESEND_MAX)
                    continue
                # raises PayloadCodecError, naming the key, when this client lacks it
                return await self.wire.reply_in(reply, describe=cmd.name in STATE_QUERIES)
        finally:
            self._pending.pop(cmd.command_id, None)
        if not published:
            raise BrokerUnavailableError(
                f"cannot publish to {self.topology.commands!r} on "
                f"{self.settings.bootstrap_servers} within {timeout:g}s: {failure!r}"
            ) from failure
        raise NoReplyError(
            f"no worker answered the {cmd.kind} of {cmd.workflow_id!r} within {timeout:g}s "
            f"(is a worker running for {self.topology.commands!r}?)"
        )

    def _command(self, kind: str, workflow_id: str, **fields: Any) -> Command:
        if not isinstance(workflow_id, str) or not workflow_id:
            raise InvalidArgumentError(
                f"workflow id must be a non-empty string, got {workflow_id!r}"
            )
        payload = dump_payload(fields.get("payload"))
        # by reference, a large payload is only a key: its encoded size is checked instead
        if payload is not None and len(payload) > MAX_PAYLOAD and not self.wire.by_reference:
            raise InvalidArgumentError(
                f"the {kind} payload of {workflow_id!r} is {len(payload)} bytes of JSON, over "
                f"the limit of {MAX_PAYLOAD}: pass a reference (a key, a URL) instead"
            )
        return Command(
            command_id=uuid.uuid4().hex,
            kind=kind,
            workflow_id=workflow_id,
            issued_at=datetime.now(UTC),
            reply_to=self.client_id,
            **fields,
        )

    async def execute(self, fn: Callable[..., Any] | str, options: WorkflowOptions) -> KafkaHandle:
        """Start ``fn`` (or the workflow type named ``fn``) as a new run on the workers."""
        if not isinstance(options, WorkflowOptions):
            raise InvalidArgumentError(
                f"options must be WorkflowOptions, got {type(options).__name__}"
            )
        function: Callable[..., Any] | None = None
        if isinstance(fn, str):
            if not fn:
                raise InvalidArgumentError("workflow type name must not be empty")
            name = fn
            function = self._workflows.get(name)
        else:
            check_workflow_call(fn, options)
            name = self._workflows.name_of(fn)
            function = fn
        payload = to_payload(options.input, "workflow input")
        reply = await self._request(
            self._command(
                CommandKind.START,
                options.id,
                name=name,
                payload=payload,
                timeout_seconds=options.timeout_seconds,
                # the start command carries this in ``step`` (see docs/wire.md)
                step=options.continue_as_new_suggested_after,
                search_attributes=dict(options.search_attributes or {}) or None,
                memo=dict(options.memo or {}) or None,
            )
        )
        if not reply.ok:
            if reply.error_type == "already_running":
                raise WorkflowAlreadyRunningError(options.id, reply.run_id or "")
            raise WorkflowError(f"cannot start {options.id!r}: {reply.error}")
        self._started_here[options.id] = None
        if len(self._started_here) > _SEEN_LIMIT:
            self._started_here.popitem(last=False)
        return KafkaHandle(self, options.id, reply.run_id, function)

    async def list(self, query: WorkflowQuery | None = None) -> WorkflowPage:
        """Workflow headers matching ``query``, newest start first, from the visibility index.

        The index is first caught up with the history topic, so a workflow whose
        events the workers have published is found.
        """
        if query is not None and not isinstance(query, WorkflowQuery):
            raise InvalidArgumentError(f"query must be a WorkflowQuery, got {type(query).__name__}")
        if self._closed:
            raise WorkflowError("this KafkaExecutor is closed")
        if self._index is None:
            self._index = VisibilityIndex(self.settings, self._visibility_path)
        await self._index.catch_up()
        return await self._index.list(query)

    async def status_counts(self) -> dict[WorkflowStatus, int]:
        """How many workflows the visibility index holds in each status (caught up first)."""
        if self._index is None:
            self._index = VisibilityIndex(self.settings, self._visibility_path)
        await self._index.catch_up()
        return await self._index.counts()

    def get_handle(self, workflow_id: str) -> KafkaHandle:
        """A handle on the latest run of ``workflow_id``."""
        return KafkaHandle(self, workflow_id, None, None)

    async def signal(self, workflow_id: str, signal: Signal) -> None:
        """Deliver ``signal``; returns once the owner recorded it."""
        if not isinstance(signal, Signal):
            raise InvalidArgumentError(f"signal must be a Signal, got {type(signal).__name__}")
        payload = to_payload(signal.payload, f"payload of signal {signal.name!r}")
        reply = await self._request(
            self._command(
                CommandKind.SIGNAL,
                workflow_id,
                name=signal.name,
                payload=payload,
                sender_id=signal.sender_id or None,
            )
        )
        self._raise_for(workflow_id, reply)

    async def cancel(self, workflow_id: str) -> None:
        """Ask the workflow to stop: ``CancelledError`` is raised at its current await."""
        reply = await self._request(self._command(CommandKind.CANCEL, workflow_id))
        self._raise_for(workflow_id, reply)

    async def pause(self, workflow_id: str, reason: str = "") -> None:
        """Hold the workflow until :meth:`resume` (see ``DefaultExecutor.pause``)."""
        cmd = self._command(CommandKind.PAUSE, workflow_id, payload=check_reason(reason, "pause"))
        self._raise_for(workflow_id, await self._request(cmd))

    async def resume(self, workflow_id: str, reason: str = "") -> None:
        """Apply what the pause held, in order, and go on."""
        cmd = self._command(
            CommandKind.UNPAUSE, workflow_id, payload=check_reason(reason, "resume")
        )
        self._raise_for(workflow_id, await self._request(cmd))

    async def reset(self, workflow_id: str, to_event_id: int, reason: str = "") -> KafkaHandle:
        """Start a new run from the latest run's events up to ``to_event_id``.

        See ``DefaultExecutor.reset``; the owner checks the event id (an
        invalid one raises :class:`InvalidArgumentError`).
        """
        if isinstance(to_event_id, bool) or not isinstance(to_event_id, int) or to_event_id < 1:
            raise InvalidArgumentError(
                f"to_event_id must be an event id (an int >= 1), got {to_event_id!r}"
            )
        payload = check_reason(reason, "reset")
        cmd = self._command(CommandKind.RESET, workflow_id, step=to_event_id, payload=payload)
        reply = await self._request(cmd)
        if not reply.ok and reply.error_type == "invalid_argument":
            raise InvalidArgumentError(reply.error or "invalid reset")
        self._raise_for(workflow_id, reply)
        return KafkaHandle(self, workflow_id, reply.run_id, None)

    async def terminate(self, workflow_id: str, reason: str = "") -> None:
        """End the run at once, without cleanup (see ``DefaultExecutor.terminate``)."""
        failure = terminated_failure(check_reason(reason, "terminate"))
        cmd = self._command(CommandKind.CANCEL, workflow_id, failure=failure)
        self._raise_for(workflow_id, await self._request(cmd))

    async def update(
        self, workflow_id: str, name: str, arg: Any = None, update_id: str | None = None
    ) -> Any:
        """Run the workflow's update handler ``name`` with ``arg``; returns its result.

        The command's id is the update id, so the resends of ``_request`` (and
        a later call with the same ``update_id``) reach the one recorded
        update: its owner answers when it completes, and never runs it twice.
        The wait is bounded by ``request_timeout``.
        """
        uid = check_update(workflow_id, name, update_id)
        payload = to_payload(arg, f"argument of update {name!r}")
        cmd = dataclasses.replace(
            self._command(CommandKind.UPDATE, workflow_id, name=name, payload=payload),
            command_id=uid,
        )
        reply = await self._request(cmd)
        if reply.ok:
            return reply.payload
        if reply.error_type == "update_not_found":
            known = reply.payload if isinstance(reply.payload, list) else []
            raise UpdateNotFoundError(workflow_id, name, known)
        if reply.error_type == "update_rejected":
            raise UpdateRejectedError(workflow_id, name, reply.error or "")
        if reply.error_type == "update_failed" and isinstance(reply.payload, dict):
            failure = FailureInfo.model_validate(reply.payload)
            return update_answer(workflow_id, name, None, failure)
        self._raise_for(workflow_id, reply)
        return None  # not reached: a reply that is not ok raises above

    async def query(self, workflow_id: str, query_type: str) -> Any:
        """``"status"``, ``"result"``, or a handler the workflow registered."""
        if not isinstance(query_type, str) or not query_type:
            raise InvalidArgumentError(f"query_type must be a non-empty string, got {query_type!r}")
        reply = await self._request(self._command(CommandKind.QUERY, workflow_id, name=query_type))
        if not reply.ok and reply.error_type == "query_not_found":
            known = reply.payload if isinstance(reply.payload, list) else []
            raise QueryNotFoundError(workflow_id, query_type, known)
        self._raise_for(workflow_id, reply)
        if query_type == "status":
            return WorkflowStatus(reply.payload)
        return reply.payload

    async def describe(self, workflow_id: str) -> WorkflowState:
        """The latest run of ``workflow_id``: status, result or error, and its history."""
        return (await self._state(workflow_id, None))[0]

    async def describe_waiting(
        self, workflow_id: str
    ) -> tuple[WorkflowState, dict[str, Any] | None]:
        """Like :meth:`describe`, with what a running run waits on, from its owner.

        The second value has ``partition`` (the owning partition), ``activities``
        (pending attempts: ``activity``, ``step``, ``attempt``, ``started`` and
        ``dispatched`` in epoch seconds, ``redrives``), ``backing_off`` (failed
        attempts waiting out a retry backoff), ``timers`` (``step``, ``kind``,
        ``due``) and ``signals`` (names the code waits on).
        """
        reply = await self._request(self._command(CommandKind.QUERY, workflow_id, name=DESCRIBE))
        self._raise_for(workflow_id, reply)
        state = WorkflowState.model_validate(reply.payload["state"])
        waiting = reply.payload.get("waiting")
        return state, waiting if isinstance(waiting, dict) else None

    def _ended_value(self, workflow_id: str, run_id: str, fn: Callable[..., Any] | None) -> Any:
        """The run's value from its terminal history event, if seen; a failure raises."""
        ended = self._ended.get(workflow_id)
        if ended is None or ended[0] != run_id:
            return _NOT_ENDED
        event = ended[1]
        if event.type is not EventType.WORKFLOW_COMPLETED:
            return _NOT_ENDED  # failures and cancels: the full state builds the error
        hint = signature_of(fn, 1).return_hint if fn is not None else None
        return from_payload(event.result, hint, "workflow result")

    @staticmethod
    def _raise_for(workflow_id: str, reply: Reply) -> None:
        if reply.ok:
            return
        if reply.error_type == "not_found":
            raise WorkflowNotFoundError(workflow_id, reply.error or "")
        raise WorkflowError(f"workflow {workflow_id!r}: {reply.error}")

    async def _status(self, workflow_id: str, run_id: str | None) -> WorkflowStatus:
        state = (await self._state(workflow_id, run_id, history=False))[0]
        if run_id is not None and run_id != state.run_id:
            return WorkflowStatus.CONTINUED_AS_NEW
        return state.status

    async def _state(
        self, workflow_id: str, run_id: str | None, *, history: bool = True
    ) -> tuple[WorkflowState, dict[str, Any] | None]:
        """The run's state; without ``history``, only its first event comes with it."""
        names = [DESCRIBE] if history else [SUMMARY, DESCRIBE]
        for name in names:  # a worker from before SUMMARY does not know it
            query = self._command(CommandKind.QUERY, workflow_id, name=name)
            reply = await self._request(query)
            if reply.error_type != "query_not_found":
                break
        self._raise_for(workflow_id, reply)
        state = WorkflowState.model_validate(reply.payload["state"])
        if run_id is not None and state.run_id != run_id and run_id not in state.previous_run_ids:
            raise WorkflowNotFoundError(
                workflow_id, f"run {run_id} was replaced by run {state.run_id}"
            )
        parked: dict[str, Any] | None = reply.payload.get("parked")
        return state, parked

    async def _result(
        self,
        workflow_id: str,
        run_id: str | None,
        fn: Callable[..., Any] | None,
        timeout: float | None,
    ) -> Any:
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        ended = asyncio.Event()
        self._watchers.setdefault(workflow_id, []).append(ended)
        try:
            # A run this client started is followed from its first event: wait for its
            # terminal event, and look at its state only if that takes a while.
            look = run_id is None or workflow_id not in self._started_here
            while True:
                ended.clear()
                while run_id is not None and (workflow_id, run_id) in self._continued:
                    run_id = self._continued[(workflow_id, run_id)]  # follow the chain
                # only once the run is known: an earlier run of the id may have ended
                value = _NOT_ENDED if run_id is None else self._ended_value(workflow_id, run_id, fn)
                if value is not _NOT_ENDED:
                    return value
                if look:
                    left = None if deadline is None else max(0.0, deadline - loop.time())
                    try:
                        # a look costs the same at any history length: no history
                        state, parked = await asyncio.wait_for(
                            self._state(workflow_id, run_id, history=False), left
                        )
                    except (TimeoutError, BrokerUnavailableError):
                        # no answer yet (NoReplyError is a TimeoutError): the owner is
                        # moving or the broker is back soon; look again, within the
                        # caller's own timeout
                        if deadline is not None and loop.time() >= deadline:
                            raise TimeoutError(
                                f"workflow {workflow_id!r} did not end within {timeout:g}s"
                            ) from None
                        continue
                    if run_id is None or run_id in state.previous_run_ids:
                        run_id = state.run_id  # the chain's current run
                    if state.status is not WorkflowStatus.RUNNING:
                        state = (await self._state(workflow_id, run_id))[0]  # for its error
                        fn = fn or self._workflows.get(state.workflow_type)
                        return outcome_value(state, None, fn)
                    if parked is not None:
                        raise parked_error(workflow_id, parked)
                # The terminal event on the history topic wakes us; a look at the state
                # now and then also notices a run that got stuck (parked) on a worker.
                wait = 1.0 if deadline is None else min(1.0, deadline - loop.time())
                if wait <= 0:
                    raise TimeoutError(f"workflow {workflow_id!r} did not end within {timeout:g}s")
                try:
                    await asyncio.wait_for(ended.wait(), wait)
                    look = False
                except TimeoutError:
                    look = True
        finally:
            waiters = self._watchers.get(workflow_id, [])
            if ended in waiters:
                waiters.remove(ended)
            if not waiters:
                self._watchers.pop(workflow_id, None)
