"""The API workflow code calls: activities, signals, timers, queries, updates, replay-safe data."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, NoReturn

from .._converter import from_payload, signature_of, to_payload
from .._errors import InvalidArgumentError, _InstanceClosed
from .._types import (
    Duration,
    ParentClosePolicy,
    RetryPolicy,
    WorkflowInfo,
    default_retry_policy,
    to_seconds,
)
from .._visibility import search_attributes
from ._children import CANCEL_SIGNAL
from ._updates import UpdateHandler

if TYPE_CHECKING:
    from ._children import PendingChild
    from ._instance import WorkflowInstance

_DEFAULT_RETRY = default_retry_policy()
_NO_RETRY = RetryPolicy(max_attempts=1)


class SignalChannel:
    """Signals of one name, in the order they were recorded.

    ``await ch.receive(timeout=None)`` returns the next payload (raising
    ``TimeoutError`` when the durable timeout passes first); ``async for``
    iterates forever. Signals that arrive before anyone waits are buffered.
    """

    def __init__(self, instance: WorkflowInstance, name: str) -> None:
        self._instance = instance
        self.name = name
        self._buffer: deque[tuple[int, Any]] = deque()  # (arrival number, payload)
        self._waiters: deque[asyncio.Future[Any]] = deque()
        self._type: Any = None

    def deliver(self, payload: Any, seq: int = 0) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(payload)
                return
        self._buffer.append((seq, payload))

    def buffered(self) -> list[tuple[int, Any]]:
        """The signals delivered but not received yet, with their arrival numbers."""
        return list(self._buffer)

    def _decode(self, payload: Any) -> Any:
        return from_payload(payload, self._type, f"payload of signal {self.name!r}")

    def pending(self) -> int:
        """How many signals are buffered, not yet received."""
        return len(self._buffer)

    def awaited(self) -> bool:
        """Whether the code waits on this channel right now."""
        return any(not w.done() for w in self._waiters)

    async def receive(self, timeout: Duration | None = None) -> Any:
        """Wait for the next signal; ``TimeoutError`` if ``timeout`` passes first."""
        seconds = None if timeout is None else to_seconds(timeout, "receive timeout")
        if self._buffer:
            return self._decode(self._buffer.popleft()[1])
        loop = self._instance.loop
        _require_loop(loop)
        waiter: asyncio.Future[Any] = loop.create_future()
        self._waiters.append(waiter)
        timer: asyncio.TimerHandle | None = None
        if seconds is not None:

            def expire() -> None:
                if not waiter.done():
                    waiter.set_exception(
                        TimeoutError(f"no signal {self.name!r} within {seconds:g}s")
                    )

            timer = loop.call_later(seconds, expire)
        try:
            return self._decode(await waiter)
        finally:
            if timer is not None:
                timer.cancel()
            if not waiter.done():
                waiter.cancel()

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Any]:
        while True:
            yield await self.receive()


class ChildWorkflowHandle:
    """A child workflow started with ``ctx.start_child``.

    ``await handle.result()`` waits for its last run to end and returns its
    result (raising :class:`ChildWorkflowError` when it failed, was canceled
    or terminated); ``await handle.signal(name, payload)`` sends it a signal,
    recorded in the parent's history and delivered once.
    """

    def __init__(self, instance: WorkflowInstance, child: PendingChild) -> None:
        self._instance = instance
        self._child = child
        self.id = child.workflow_id
        self.workflow_type = child.workflow_type

    async def result(self) -> Any:
        """The child's result, once its last run ended."""
        future = self._child.future
        assert future is not None
        _require_loop(self._instance.loop)
        # shielded: a caller that stops waiting (a timeout) must not cancel the child
        return await asyncio.shield(future)

    async def signal(self, name: str, payload: Any = None) -> None:
        """Send the child signal ``name``; recorded, then delivered by the runtime."""
        if not isinstance(name, str) or not name or name == CANCEL_SIGNAL:
            raise InvalidArgumentError(
                f"signal name must be a non-empty string other than {CANCEL_SIGNAL!r}, got {name!r}"
            )
        data = to_payload(payload, f"payload of signal {name!r} to child {self.id!r}")
        _require_loop(self._instance.loop)
        self._instance.children.signal(self.id, name, data)
        await asyncio.sleep(0)

    async def cancel(self) -> None:
        """Ask the child to stop (``CancelledError`` at its current await); recorded in
        this run's history as a ``child_workflow_signaled`` named ``__cancel__`` and
        delivered once, as a cancel. Its ``result()`` then raises ``ChildWorkflowError``."""
        _require_loop(self._instance.loop)
        self._instance.children.signal(self.id, CANCEL_SIGNAL, None)
        await asyncio.sleep(0)

    def __repr__(self) -> str:
        return f"ChildWorkflowHandle(id={self.id!r}, workflow_type={self.workflow_type!r})"


def _require_loop(loop: asyncio.AbstractEventLoop) -> None:
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if running is not loop:
        raise RuntimeError(
            "workflow context calls must be awaited inside the workflow's own code, "
            "not from another task or thread"
        )


def _change_id(change_id: Any) -> str:
    if not isinstance(change_id, str) or not change_id.strip():
        raise InvalidArgumentError(
            f"a patch's change id must be a non-empty string, got {change_id!r}; "
            "name the change, e.g. ctx.patched('send-receipt')"
        )
    return change_id


class WorkflowContext:
    """Passed to every workflow function; its calls are durable and replay-safe."""

    def __init__(self, instance: WorkflowInstance) -> None:
        self._instance = instance

    @property
    def workflow_id(self) -> str:
        return self._instance.workflow_id

    @property
    def run_id(self) -> str:
        return self._instance.run_id

    @property
    def workflow_type(self) -> str:
        return self._instance.workflow_type

    def info(self) -> WorkflowInfo:
        """This run: its ids, its history length and whether to continue as new.

        ``should_continue_as_new`` turns true once the history reaches the
        workflow's ``continue_as_new_suggested_after`` events; a long-lived
        workflow checks it at a safe point and calls :meth:`continue_as_new`.
        """
        return self._instance.info()

    def continue_as_new(self, input: Any = None) -> NoReturn:
        """End this run and start a fresh one of the same workflow id with ``input``.

        The new run has a new run id and an empty history (its
        ``workflow_started``, then a ``signal_received`` for each signal this
        run received but did not consume, in arrival order). It raises
        :class:`ContinueAsNewError`, which unwinds the code (``finally``
        blocks run) and must not be caught; ``input`` is converted here, so a
        value that cannot be serialized fails at the call with
        :class:`PayloadError`. Handles and ``result()`` for the workflow id
        follow the chain to its last run. Pending activities and timers of
        this run are abandoned::

            if ctx.info().should_continue_as_new:
                ctx.continue_as_new({"total": total})
        """
        payload = to_payload(input, "input of continue_as_new")
        raise self._instance.continue_as_new(payload)

    def is_replaying(self) -> bool:
        """True while the code re-runs recorded history (e.g. to skip logging)."""
        return self._instance.replaying

    async def execute_activity(
        self,
        fn: Callable[..., Any],
        input: Any = None,
        *,
        retry: RetryPolicy | None = None,
        timeout: Duration | None = None,
        heartbeat_timeout: Duration | None = None,
        name: str | None = None,
    ) -> Any:
        """Run ``fn(input)`` as an activity and return its result.

        The result is recorded before the workflow sees it; on replay it is
        returned from history without running ``fn`` again. A failure after
        the last attempt of ``retry`` (default: :func:`default_retry_policy`)
        raises :class:`ActivityError` whose ``__cause__`` is the last error.
        ``timeout`` bounds each attempt. With ``heartbeat_timeout``, an
        attempt that goes that long without ``activity.heartbeat()`` fails as
        timed out (and is retried), so a lost worker is noticed early; it must
        not exceed ``timeout``.
        """
        if not callable(fn):
            raise InvalidArgumentError(f"activity must be a callable, got {type(fn).__name__}")
        if retry is not None and not isinstance(retry, RetryPolicy):
            raise InvalidArgumentError(
                f"retry must be a RetryPolicy or None, got {type(retry).__name__}"
            )
        seconds = None if timeout is None else to_seconds(timeout, "activity timeout")
        beat = (
            None
            if heartbeat_timeout is None
            else to_seconds(heartbeat_timeout, "activity heartbeat_timeout")
        )
        if beat is not None and seconds is not None and beat > seconds:
            raise InvalidArgumentError(
                f"activity heartbeat_timeout ({beat:g}s) must not exceed its timeout "
                f"({seconds:g}s): a heartbeat timeout longer than the attempt never fires"
            )
        act_name = name or self._instance.activity_name(fn)
        sig = signature_of(fn)
        if sig.required > 1:
            raise InvalidArgumentError(
                f"activity {act_name!r} must take at most one required parameter (its input); "
                "pass several values as one dataclass, model or dict"
            )
        if sig.params == 0 and input is not None:
            raise InvalidArgumentError(
                f"activity {act_name!r} takes no parameter, but an input was given"
            )
        payload = to_payload(input, f"input of activity {act_name!r}")
        instance = self._instance
        _require_loop(instance.loop)
        future = instance.schedule_activity(
            fn, act_name, payload, retry or _DEFAULT_RETRY, seconds, beat
        )
        return await future

    async def execute_child(
        self,
        fn: Callable[..., Any] | str,
        input: Any = None,
        *,
        id: str | None = None,
        retry: RetryPolicy | None = None,
        timeout: Duration | None = None,
        parent_close_policy: ParentClosePolicy = ParentClosePolicy.CANCEL,
    ) -> Any:
        """Run workflow ``fn(input)`` as a child and return its result.

        Shorthand for ``await (await ctx.start_child(...)).result()``; see
        :meth:`start_child` for the options.
        """
        handle = self._start_child(fn, input, id, retry, timeout, parent_close_policy)
        return await handle.result()

    async def start_child(
        self,
        fn: Callable[..., Any] | str,
        input: Any = None,
        *,
        id: str | None = None,
        retry: RetryPolicy | None = None,
        timeout: Duration | None = None,
        parent_close_policy: ParentClosePolicy = ParentClosePolicy.CANCEL,
    ) -> ChildWorkflowHandle:
        """Start workflow ``fn(input)`` as a child of this run; returns its handle.

        ``fn`` may also be a registered workflow type name (its result then
        comes back as plain JSON).

        The child is a workflow of its own (``id``, by default derived from
        this run and the step, so a replay names the same one), run by any
        worker that registers ``fn``; its start and its end are events of this
        run's history. ``retry`` (default: no retry) starts it again, under
        the same id, when it fails; ``timeout`` bounds each of its runs. When
        this run ends first, ``parent_close_policy`` says what happens to the
        child: cancel it (the default), terminate it, or abandon it.
        """
        return self._start_child(fn, input, id, retry, timeout, parent_close_policy)

    def _start_child(
        self,
        fn: Callable[..., Any] | str,
        input: Any,
        id: str | None,
        retry: RetryPolicy | None,
        timeout: Duration | None,
        policy: ParentClosePolicy,
    ) -> ChildWorkflowHandle:
        by_name = isinstance(fn, str)
        if by_name and not fn:
            raise InvalidArgumentError("child workflow type name must not be empty")
        if not by_name and (not callable(fn) or not signature_of(fn, 1).is_async):
            raise InvalidArgumentError(
                f"child workflow {fn!r} must be an `async def` function taking (ctx, input), "
                "or a registered workflow type name"
            )
        if id is not None and (not isinstance(id, str) or not id.strip()):
            raise InvalidArgumentError(f"child workflow id must be a non-empty string, got {id!r}")
        if retry is not None and not isinstance(retry, RetryPolicy):
            raise InvalidArgumentError(
                f"retry must be a RetryPolicy or None, got {type(retry).__name__}"
            )
        if not isinstance(policy, ParentClosePolicy):
            try:
                policy = ParentClosePolicy(policy)
            except ValueError:
                choices = ", ".join(p.value for p in ParentClosePolicy)
                raise InvalidArgumentError(
                    f"parent_close_policy must be a ParentClosePolicy ({choices}), got {policy!r}"
                ) from None
        seconds = None if timeout is None else to_seconds(timeout, "child workflow timeout")
        instance = self._instance
        name = fn if isinstance(fn, str) else instance.workflow_name(fn)
        if id == instance.workflow_id:
            raise InvalidArgumentError(
                f"a child workflow cannot have its parent's id {id!r}; give it its own"
            )
        if not isinstance(fn, str) and signature_of(fn, 1).params == 0 and input is not None:
            raise InvalidArgumentError(
                f"child workflow {name!r} takes no input, but an input was given"
            )
        payload = to_payload(input, f"input of child workflow {name!r}")
        _require_loop(instance.loop)
        child = instance.children.start(fn, name, id, payload, retry or _NO_RETRY, seconds, policy)
        return ChildWorkflowHandle(instance, child)

    def receive_signal(self, name: str, payload_type: Any = None) -> SignalChannel:
        """The channel of signals called ``name``; payloads decode to ``payload_type``."""
        if not isinstance(name, str) or not name:
            raise InvalidArgumentError(f"signal name must be a non-empty string, got {name!r}")
        channel: SignalChannel = self._instance._signal_channel(name)
        if payload_type is not None:
            channel._type = payload_type
        return channel

    async def sleep(self, duration: Duration) -> None:
        """Sleep on a durable timer: a restart does not shorten or restart it."""
        seconds = to_seconds(duration, "sleep duration", allow_zero=True)
        _require_loop(self._instance.loop)
        await asyncio.sleep(seconds)

    def set_query_handler(self, name: str, fn: Callable[[], Any]) -> None:
        """Answer ``executor.query(workflow_id, name)`` with ``fn()`` (read-only, sync)."""
        if not isinstance(name, str) or not name:
            raise InvalidArgumentError(f"query name must be a non-empty string, got {name!r}")
        if name in ("status", "result"):
            raise InvalidArgumentError(f"query {name!r} is built in and cannot be replaced")
        if not callable(fn):
            raise InvalidArgumentError(f"query handler for {name!r} must be callable")
        self._instance.add_query_handler(name, fn)

    def set_update_handler(
        self,
        name: str,
        fn: Callable[..., Any],
        validator: Callable[..., Any] | None = None,
    ) -> None:
        """Answer ``executor.update(workflow_id, name, arg)`` with ``await fn(arg)``.

        The handler runs as a task of the workflow, so it may run activities,
        sleep and change the workflow's state; its return value (or error) is
        recorded and sent to the caller. ``validator(arg)``, if given, runs
        first, outside the workflow: raising rejects the update (the caller
        gets :class:`UpdateRejectedError` with its message) and nothing is
        recorded. Both take the update's argument, or no parameter at all.
        """
        if not isinstance(name, str) or not name:
            raise InvalidArgumentError(f"update name must be a non-empty string, got {name!r}")
        if not callable(fn):
            raise InvalidArgumentError(f"update handler for {name!r} must be callable")
        if validator is not None and not callable(validator):
            raise InvalidArgumentError(f"update validator for {name!r} must be callable or None")
        self._instance.add_update_handler(name, UpdateHandler(fn, validator))

    def patched(self, change_id: str) -> bool:
        """Whether this run takes the new branch of a code change named ``change_id``.

        True for a run that reaches this point on the new code (a
        ``marker_recorded`` event says so in its history, so its replays agree);
        False when replaying a run recorded by code from before the change,
        which then keeps the old branch. The answer is the same for every call
        with one id in a run. Once no run from before the change is left,
        replace the call with :meth:`deprecate_patch` and drop the old branch::

            if ctx.patched("send-receipt"):
                await ctx.execute_activity(send_receipt, order)
        """
        return self._instance.patched(_change_id(change_id))

    def upsert_search_attributes(self, attributes: Mapping[str, Any]) -> None:
        """Set (or, with a None value, remove) search attributes of this workflow.

        Values are str, int, float, bool or datetime. The change is recorded in
        the history (``search_attributes_upserted``); ``executor.list`` finds
        the workflow by it once that event is stored::

            ctx.upsert_search_attributes({"customer": order.customer, "stage": "paid"})
        """
        changes = search_attributes(
            attributes, "upsert_search_attributes(attributes)", allow_unset=True
        )
        if not changes:
            raise InvalidArgumentError("upsert_search_attributes needs at least one attribute")
        self._instance.upsert_search_attributes(changes)

    def search_attributes(self) -> dict[str, Any]:
        """This workflow's search attributes at this point of the run (a copy)."""
        return dict(self._instance.search_attributes)

    def deprecate_patch(self, change_id: str) -> None:
        """Mark that patch ``change_id`` is always taken now; its old branch is gone.

        Call it where :meth:`patched` was, once every run that started before
        the patch has ended. Histories with or without the patch's marker both
        replay; a later release may remove the call too.
        """
        self._instance.patched(_change_id(change_id), deprecated=True)

    def now(self) -> datetime:
        """Workflow time: the timestamp of the event being processed (UTC)."""
        return datetime.fromtimestamp(self._instance.now, UTC)

    def random(self) -> random.Random:
        """A random generator seeded by the run: the same numbers on every replay."""
        if self._instance.outcome is not None:
            raise _InstanceClosed()
        return self._instance.random

    def uuid4(self) -> uuid.UUID:
        """A version-4 UUID drawn from :meth:`random`: stable across replays."""
        return uuid.UUID(int=self.random().getrandbits(128), version=4)
