"""The deterministic core: one workflow run as a state machine over its history.

A runtime feeds :class:`WorkflowInstance` the events of a run, one at a time,
in history order (``apply``), and reads back what the code wants done
(``pending_activities``, ``pending_timers``, ``outcome``). It then records
the events that carry that work out and applies them too. Replay and live
execution are the same calls: a restarted runtime applies the stored history,
then starts whatever is still pending.

Events are of two kinds:

* inputs (workflow_started, activity_completed/failed, timer_fired,
  signal_received, cancel_requested, update_accepted) advance workflow time to their timestamp
  and run the code until it waits again (one activation per event);
* echoes (activity_started, marker_recorded, update_completed, the terminal
  events) confirm a command the code issued; they must match it, or replay
  has diverged.

An update is a signal with an answer: ``update_accepted`` starts its handler
as a task of the workflow (so it may run activities and sleep), and when the
handler returns or raises, ``update_completed`` records the answer under the
update id. A run that ends while an update is still running records that
update as failed first, so every accepted update gets an answer.

``ctx.patched(id)`` needs to know what the code did at this point when it
ran before, so :meth:`WorkflowInstance.replay` lets the instance see the
recorded history ahead of the event being applied: the echoes that follow
it are what the activation produced last time. A marker for the patch among
them means the run took the new branch; other recorded events there mean it
ran on code from before the patch (the old branch); none means the code runs
live (the new branch, and a marker to record). Markers take no step number,
so adding a patch does not shift the steps of the calls after it.

Every durable call of the code gets the next *step* number. Activity events
carry the activity's step and attempt; timer_fired carries the step of the
timer, or of the activity whose retry backoff or attempt timeout it is
(step 0 is the workflow timeout). Nothing here does I/O or reads a clock.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import random
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from .._converter import (
    decode_failure,
    describe_failure,
    encode_failure,
    from_payload,
    signature_of,
    to_payload,
)
from .._errors import (
    ActivityError,
    ContinueAsNewError,
    NonDeterminismError,
    PayloadError,
    WorkflowError,
    WorkflowTimeoutError,
    _ControlFlow,
    _InstanceClosed,
)
from .._names import activity_name
from .._types import (
    TERMINAL_EVENTS,
    EventType,
    FailureInfo,
    HistoryEvent,
    RetryPolicy,
    WorkflowInfo,
    WorkflowStatus,
)
from .._visibility import merge_attributes
from ._children import TERMINATED, ChildTable, PendingChild
from ._loop import WorkflowLoop
from ._updates import UpdateHandler, UpdateState, UpdateTable

log = logging.getLogger("app.workflow.core")

WORKFLOW_TIMEOUT_STEP = 0

_ECHOES = frozenset(
    {
        EventType.ACTIVITY_STARTED,
        EventType.MARKER_RECORDED,
        EventType.SEARCH_ATTRIBUTES_UPSERTED,
        EventType.UPDATE_COMPLETED,
        EventType.CHILD_WORKFLOW_STARTED,
        EventType.CHILD_WORKFLOW_SIGNALED,
        *TERMINAL_EVENTS,
    }
)

Patcher = Callable[[str, bool], bool]
"""Decides ``patched(change_id)`` (``deprecated`` for ``deprecate_patch``) in
place of the history: a runtime whose host records its own markers (Temporal)
passes one."""


class TimerKind(enum.Enum):
    """What a pending timer is for."""

    USER = "sleep"
    RETRY = "retry backoff"
    ACTIVITY_TIMEOUT = "activity timeout"
    WORKFLOW_TIMEOUT = "workflow timeout"


@dataclass(frozen=True)
class PendingTimer:
    """A durable timer the runtime must fire at ``due`` (epoch seconds)."""

    step: int
    due: float
    kind: TimerKind
    attempt: int | None = None
    activity_name: str | None = None
    duration: float = 0.0


@dataclass
class PendingActivity:
    """An activity attempt the runtime must run (and record as started if not yet)."""

    step: int
    name: str
    fn: Callable[..., Any]
    input: Any
    attempt: int
    retry: RetryPolicy
    timeout: float | None
    heartbeat_timeout: float | None = None
    heartbeat_details: Any = None
    """The last heartbeat details an earlier attempt of this step recorded."""
    recorded: bool = False
    backing_off: bool = False
    future: asyncio.Future[Any] | None = field(default=None, repr=False)


@dataclass(frozen=True)
class Outcome:
    """How the run ended; ``error`` is the live exception when there is one.

    A run that continued as new has ``result`` = the next run's input payload
    and ``next_run_id``.
    """

    status: WorkflowStatus
    result: Any = None
    failure: FailureInfo | None = None
    error: BaseException | None = None
    next_run_id: str | None = None

    @property
    def event_type(self) -> EventType:
        return {
            WorkflowStatus.COMPLETED: EventType.WORKFLOW_COMPLETED,
            WorkflowStatus.FAILED: EventType.WORKFLOW_FAILED,
            WorkflowStatus.CANCELED: EventType.WORKFLOW_CANCELED,
            WorkflowStatus.CONTINUED_AS_NEW: EventType.WORKFLOW_CONTINUED_AS_NEW,
        }[self.status]


def _epoch(ts: datetime) -> float:
    return ts.timestamp()


def _describe(event: HistoryEvent) -> str:
    what = f"{event.type.value}"
    if event.activity_name:
        what += f" of activity {event.activity_name!r}"
    if event.step is not None:
        what += f" at step {event.step}"
    if event.attempt is not None:
        what += f" (attempt {event.attempt})"
    if event.child_workflow_id is not None:
        what += f" of child workflow {event.child_workflow_id!r}"
    if event.change_id is not None:
        kind = "update" if event.type.value.startswith("update_") else "patch"
        what += f" for {kind} {event.change_id!r}"
    return what


_RESULTS = (EventType.ACTIVITY_COMPLETED, EventType.ACTIVITY_FAILED)


def _passes_pause(event: HistoryEvent) -> bool:
    """Whether an input is applied even while the run is paused: its timeout, a terminate."""
    if event.type is EventType.TIMER_FIRED:
        return event.step == WORKFLOW_TIMEOUT_STEP
    if event.type is EventType.CANCEL_REQUESTED:
        return event.failure is not None and event.failure.type == TERMINATED
    return False


class WorkflowInstance:
    """One run of a workflow function, driven by its history events."""

    def __init__(
        self,
        *,
        workflow_id: str,
        run_id: str,
        workflow_type: str,
        fn: Callable[..., Any],
        timeout: float | None = None,
        activity_namer: Callable[[Callable[..., Any]], str] = activity_name,
        patcher: Patcher | None = None,
        continue_as_new: str | None = None,
        workflow_namer: Callable[[Callable[..., Any]], str] = activity_name,
        upserter: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        from ._context import WorkflowContext  # circular: the context drives the instance

        self.workflow_id = workflow_id
        self.run_id = run_id
        self.workflow_type = workflow_type
        self.timeout = timeout
        self.replaying = False
        self.outcome: Outcome | None = None
        self.outcome_recorded = False
        self.stuck: NonDeterminismError | None = None
        self.last_event_id = 0
        self.cancel_requested = False
        self._fn = fn
        self.activity_name = activity_namer
        self.workflow_name = workflow_namer
        # asyncio.AbstractEventLoop is no ABC at run time; the socket, pipe and subprocess
        # methods this loop leaves out raise NotImplementedError, as workflow code must not do I/O.
        self._loop = WorkflowLoop(self)  # type: ignore[abstract]
        self._ctx = WorkflowContext(self)
        self._main: asyncio.Task[Any] | None = None
        self._step = 0
        self._activities: dict[int, PendingActivity] = {}
        self._timers: dict[int, PendingTimer] = {}
        self._loop_timers: dict[int, asyncio.TimerHandle] = {}
        self._handle_steps: dict[int, int] = {}  # id(TimerHandle) -> step
        self._channels: dict[str, Any] = {}
        self._query_handlers: dict[str, Callable[[], Any]] = {}
        self.updates = UpdateTable(self)
        self._closed = False
        self._seed = f"{workflow_id}:{run_id}"
        self._random: random.Random | None = None
        self._patcher = patcher
        self._recorded: Sequence[HistoryEvent] = ()
        self._patches: dict[str, bool] = {}  # change id -> the branch taken
        self._markers: dict[str, bool] = {}  # change id -> its marker is recorded
        self.search_attributes: dict[str, Any] = {}
        # upserts the code made whose search_attributes_upserted is not applied yet
        self._upserts: deque[dict[str, Any]] = deque()
        self._upserter = upserter
        self.paused = False
        self._held: list[HistoryEvent] = []  # inputs recorded while paused, applied at resume
        self._held_attempts: set[tuple[int, int]] = set()  # (step, attempt) with a held result
        self._held_timers: set[int] = set()  # steps with a held timer_fired
        # None: the runtime carries out continue-as-new; else why it cannot
        self._no_continue_as_new = continue_as_new
        self._signal_seq = 0
        self.previous_run_ids: tuple[str, ...] = ()
        self.suggest_after: int | None = None
        self.children = ChildTable(self)

    # -- what the runtime reads -----------------------------------------------
    @property
    def random(self) -> random.Random:
        """The run's seeded random source (``ctx.random()``), made at its first use."""
        if self._random is None:
            self._random = random.Random(self._seed)
        return self._random

    @property
    def loop(self) -> WorkflowLoop:
        return self._loop

    @property
    def now(self) -> float:
        return self._loop.time()

    def pending_children(self) -> list[PendingChild]:
        """Child workflows to run now: start those ``recorded``, then await their end."""
        return [c for c in self.children.pending() if c.recorded]

    def pending_activities(self) -> list[PendingActivity]:
        """Attempts that should be running now (not those waiting out a backoff).

        While the run is paused, only the attempts already recorded as started:
        no new one is dispatched until it is resumed.
        """
        if not self.paused and not self._held_attempts:  # the usual case, kept cheap
            return [a for a in self._activities.values() if not a.backing_off]
        held = self._held_attempts
        return [
            a
            for a in self._activities.values()
            if not a.backing_off
            and (a.recorded or not self.paused)
            and (a.step, a.attempt) not in held
        ]

    def echoes(self, next_id: int, now: datetime) -> list[HistoryEvent]:
        """What a runtime records next, numbered from ``next_id``.

        A ``marker_recorded`` for each patch not recorded yet, an
        ``activity_started`` for each attempt not recorded yet, then the
        run's terminal event if it has an outcome that is not recorded yet.
        """
        events: list[HistoryEvent] = []
        for change_id, recorded in self._markers.items():
            if not recorded:
                events.append(
                    HistoryEvent(
                        id=next_id + len(events),
                        type=EventType.MARKER_RECORDED,
                        timestamp=now,
                        change_id=change_id,
                    )
                )
        for changes in self._upserts:
            events.append(
                HistoryEvent(
                    id=next_id + len(events),
                    type=EventType.SEARCH_ATTRIBUTES_UPSERTED,
                    timestamp=now,
                    search_attributes=changes,
                )
            )
        for act in self.pending_activities():
            if not act.recorded:
                events.append(
                    HistoryEvent(
                        id=next_id + len(events),
                        type=EventType.ACTIVITY_STARTED,
                        timestamp=now,
                        activity_name=act.name,
                        input=act.input,
                        step=act.step,
                        attempt=act.attempt,
                    )
                )
        if self.updates.accepted:
            events += self.updates.echoes(next_id + len(events), now)
        if (self.children.children or self.children.signals) and not self.paused:
            events += self.children.echoes(next_id + len(events), now)
        outcome = self.outcome
        if outcome is not None and not self.outcome_recorded:
            carried_on = outcome.status is WorkflowStatus.CONTINUED_AS_NEW
            events.append(
                HistoryEvent(
                    id=next_id + len(events),
                    type=outcome.event_type,
                    timestamp=now,
                    result=None if carried_on else outcome.result,
                    input=outcome.result if carried_on else None,
                    new_run_id=outcome.next_run_id,
                    error=describe_failure(outcome.failure) if outcome.failure else None,
                    failure=outcome.failure,
                )
            )
        return events

    def pending_timers(self) -> dict[int, PendingTimer]:
        """Timers that should be armed, by step (while paused, only the workflow timeout)."""
        if self.paused:
            return {k: t for k, t in self._timers.items() if k == WORKFLOW_TIMEOUT_STEP}
        return dict(self._timers)

    def info(self) -> WorkflowInfo:
        """What ``ctx.info()`` returns at this point of the run."""
        length = self.last_event_id
        return WorkflowInfo(
            workflow_id=self.workflow_id,
            run_id=self.run_id,
            workflow_type=self.workflow_type,
            history_length=length,
            should_continue_as_new=self.suggest_after is not None and length >= self.suggest_after,
            previous_run_ids=self.previous_run_ids,
        )

    def carried_signals(self) -> list[tuple[str, Any]]:
        """Signals delivered but not received by the code, in arrival order.

        A run that continued as new hands these to the next run, so none is lost.
        """
        waiting: list[tuple[int, str, Any]] = []
        for name, channel in self._channels.items():
            waiting += [(seq, name, payload) for seq, payload in channel.buffered()]
        return [(name, payload) for _, name, payload in sorted(waiting, key=lambda w: w[0])]

    def awaited_signals(self) -> list[str]:
        """Names of the signals the code waits for right now."""
        return sorted(name for name, ch in self._channels.items() if ch.awaited())

    def backing_off(self) -> list[PendingActivity]:
        """Failed attempts whose retry waits out its backoff timer."""
        return [a for a in self._activities.values() if a.backing_off]

    def snapshot(self) -> tuple[Any, ...]:
        """Everything a runtime acts on, for comparing two instances of one run."""
        acts = sorted(
            (a.step, a.name, a.attempt, repr(a.input), a.recorded, a.backing_off)
            for a in self._activities.values()
        )
        outcome = None
        if self.outcome is not None:
            outcome = (self.outcome.status, repr(self.outcome.result), self.outcome_recorded)
        markers = sorted(self._markers.items())
        updates = self.updates.snapshot()
        return (
            self.last_event_id,
            acts,
            sorted(self._timers.items()),
            outcome,
            self._step,
            markers,
            updates,
            self.children.snapshot(),
        )

    def summary(self) -> str:
        """The pending work in words, for error messages."""
        parts = [
            f"activity {a.name!r} at step {a.step} (attempt {a.attempt})"
            for a in sorted(self._activities.values(), key=lambda a: a.step)
        ]
        parts += self.children.summary()
        parts += [f"a {t.kind.value} timer at step {t.step}" for t in self._timers.values()]
        if self.outcome is not None:
            parts.append(self.outcome.event_type.value)
        return ", ".join(parts) or "nothing pending"

    def is_current_attempt(self, step: int, attempt: int) -> bool:
        act = self._activities.get(step)
        return (
            act is not None
            and act.attempt == attempt
            and not act.backing_off
            and (step, attempt) not in self._held_attempts  # its result waits for a resume
        )

    def is_current_timer(self, step: int, attempt: int | None) -> bool:
        timer = self._timers.get(step)
        return timer is not None and timer.attempt == attempt and step not in self._held_timers

    @property
    def query_names(self) -> list[str]:
        return sorted(self._query_handlers)

    def query(self, name: str) -> Any:
        """Run a registered query handler; raises ``KeyError`` if there is none."""
        handler = self._query_handlers[name]
        return to_payload(handler(), f"result of query {name!r}")

    @property
    def update_names(self) -> list[str]:
        return sorted(self.updates.handlers)

    def update(self, update_id: str) -> UpdateState | None:
        """The accepted update ``update_id`` (running or done), or None if never accepted."""
        return self.updates.accepted.get(update_id)

    def validate_update(self, name: str, payload: Any) -> None:
        """Check an update before it is recorded; raises if it must not be.

        :class:`UpdateNotFoundError` when the code registered no handler
        ``name``; :class:`UpdateRejectedError` with the validator's message
        when its validator raises. Runs the validator outside the workflow's
        loop, like a query: it must only read the workflow's state.
        """
        self.updates.validate(name, payload)

    # -- applying history -----------------------------------------------------
    def replay(self, history: Sequence[HistoryEvent]) -> None:
        """Apply a recorded history, from its first event, seeing it ahead.

        Use this rather than ``apply`` in a loop: ``ctx.patched()`` looks at
        what was recorded after the event being applied. ``history`` may be
        the list the runtime keeps appending to.
        """
        self._recorded = history
        for event in history:
            self.apply(event)

    def apply(self, event: HistoryEvent) -> None:
        """Apply the next event of the run; raises :class:`NonDeterminismError` on divergence."""
        if self.stuck is not None:
            raise self.stuck
        if event.id != self.last_event_id + 1:
            raise self._diverged(
                event, f"event {self.last_event_id + 1} next", f"event {event.id} instead"
            )
        self.last_event_id = event.id
        try:
            self._dispatch(event)
        except NonDeterminismError as err:
            self.stuck = err
            self.close()
            raise

    def _dispatch(self, event: HistoryEvent) -> None:
        kind = event.type
        if kind is EventType.ACTIVITY_STARTED:
            self._on_activity_started(event)
            return
        if kind is EventType.MARKER_RECORDED:
            self._on_marker(event)
            return
        if kind is EventType.SEARCH_ATTRIBUTES_UPSERTED:
            # Like a marker, an upsert the code no longer makes is let through: search
            # attributes never steer the code, and readers take them from the history.
            if self._upserts:
                self._upserts.popleft()
            else:
                merge_attributes(self.search_attributes, event.search_attributes or {})
            return
        if kind is EventType.UPDATE_COMPLETED:
            expected = self.updates.on_completed(event)
            if expected is not None:
                raise self._diverged(event, expected or self._expectation(None), _describe(event))
            return
        if kind is EventType.CHILD_WORKFLOW_STARTED:
            if not self.children.on_started(event):
                raise self._diverged(event, self._expectation(event.step), _describe(event))
            return
        if kind is EventType.CHILD_WORKFLOW_SIGNALED:
            if not self.children.on_signaled(event):
                raise self._diverged(event, self._expectation(event.step), _describe(event))
            return
        if kind in TERMINAL_EVENTS:
            self._on_terminal(event)
            return
        if kind is EventType.WORKFLOW_PAUSED:
            self.paused = True
            return
        if kind is EventType.WORKFLOW_RESUMED:
            self.paused = False
            # what arrived while paused is applied now, in order, at the resume's time
            held, self._held = self._held, []
            self._held_attempts.clear()
            self._held_timers.clear()
            for waiting in held:
                self._on_input(waiting, event.timestamp)
            return
        if self.paused and not _passes_pause(event):
            self._held.append(event)
            if event.step is not None and event.type in _RESULTS:
                self._held_attempts.add((event.step, event.attempt or 0))
            elif event.step is not None and event.type is EventType.TIMER_FIRED:
                self._held_timers.add(event.step)
            return
        self._on_input(event, event.timestamp)

    def _on_input(self, event: HistoryEvent, at: datetime) -> None:
        kind = event.type
        if self.outcome is not None:
            raise self._diverged(event, "nothing more (the run has ended)", _describe(event))
        self._loop.set_time(_epoch(at))
        if kind is EventType.WORKFLOW_STARTED:
            self._on_started(event)
        elif kind is EventType.ACTIVITY_COMPLETED:
            self._on_activity_completed(event)
        elif kind is EventType.ACTIVITY_FAILED:
            act = self._current_activity(event)
            if event.heartbeat_details is not None:
                act.heartbeat_details = event.heartbeat_details
            self._attempt_failed(act, event.failure or FailureInfo(type="Error", message=""))
        elif kind is EventType.TIMER_FIRED:
            self._on_timer_fired(event)
        elif kind is EventType.SIGNAL_RECEIVED:
            self._signal_seq += 1
            channel = self._signal_channel(event.signal_name or "")
            channel.deliver(event.signal_payload, self._signal_seq)
        elif kind in (EventType.CHILD_WORKFLOW_COMPLETED, EventType.CHILD_WORKFLOW_FAILED):
            if not self.children.on_end(event):
                raise self._diverged(event, self._expectation(event.step), _describe(event))
        elif kind is EventType.CANCEL_REQUESTED:
            self.cancel_requested = True
            if event.failure is not None and event.failure.type == TERMINATED:
                # terminated: the run ends here, none of its code runs again
                self._settle(Outcome(WorkflowStatus.CANCELED, failure=event.failure))
                return
            if self._main is not None and not self._main.done():
                self._main.cancel()
        elif kind is EventType.UPDATE_ACCEPTED and not self.updates.on_accepted(event):
            raise self._diverged(
                event, f"update {event.change_id!r} accepted once", "it accepted a second time"
            )
        self._run()

    def _on_started(self, event: HistoryEvent) -> None:
        if self._main is not None:
            raise self._diverged(event, "one workflow_started", "a second workflow_started")
        self.previous_run_ids = tuple(event.previous_run_ids or ())
        self.search_attributes = dict(event.search_attributes or {})
        self.suggest_after = event.continue_as_new_suggested_after
        self._main = self._loop.create_task(
            self._run_code(event.input), name=f"workflow:{self.workflow_id}"
        )
        if self.timeout is not None:
            self._timers[WORKFLOW_TIMEOUT_STEP] = PendingTimer(
                WORKFLOW_TIMEOUT_STEP,
                self.now + self.timeout,
                TimerKind.WORKFLOW_TIMEOUT,
                duration=self.timeout,
            )

    async def _run_code(self, payload: Any) -> Any:
        sig = signature_of(self._fn, 1)
        if sig.params == 0:
            return await self._fn(self._ctx)
        return await self._fn(self._ctx, from_payload(payload, sig.input_hint, "workflow input"))

    def _on_activity_started(self, event: HistoryEvent) -> None:
        act = self._activities.get(event.step if event.step is not None else -1)
        expected = self._expectation(event.step)
        if (
            act is None
            or act.name != event.activity_name
            or act.attempt != event.attempt
            or act.recorded
            or act.backing_off
        ):
            raise self._diverged(event, expected, _describe(event))
        act.recorded = True

    def _on_marker(self, event: HistoryEvent) -> None:
        # A marker the code did not ask for is let through, as Temporal does: code
        # from after deprecate_patch was removed replays a history that has one.
        if event.change_id is not None and self._markers.get(event.change_id) is False:
            self._markers[event.change_id] = True

    def _current_activity(self, event: HistoryEvent) -> PendingActivity:
        act = self._activities.get(event.step if event.step is not None else -1)
        if act is None or act.attempt != event.attempt or not act.recorded or act.backing_off:
            raise self._diverged(event, self._expectation(event.step), _describe(event))
        return act

    def _on_activity_completed(self, event: HistoryEvent) -> None:
        act = self._current_activity(event)
        self._finish_activity(act)
        assert act.future is not None
        if act.future.done():
            return
        try:
            value = from_payload(
                event.result,
                signature_of(act.fn).return_hint,
                f"result of activity {act.name!r}",
            )
        except PayloadError as exc:
            act.future.set_exception(exc)
        else:
            act.future.set_result(value)

    def _attempt_failed(self, act: PendingActivity, failure: FailureInfo) -> None:
        self._timers.pop(act.step, None)  # the attempt's timeout, if armed
        if not failure.non_retryable and act.attempt < act.retry.max_attempts:
            unit = random.Random(f"{self.run_id}:{act.step}:{act.attempt}").uniform(-1.0, 1.0)
            act.backing_off = True
            self.arm_retry(act.step, act.attempt, act.name, act.retry.interval(act.attempt, unit))
            return
        self._finish_activity(act)
        assert act.future is not None
        if not act.future.done():
            err = ActivityError(act.name, act.attempt, failure.message)
            err.__cause__ = decode_failure(failure)
            act.future.set_exception(err)

    def arm_retry(self, step: int, attempt: int, name: str, delay: float) -> None:
        """Wait ``delay`` before the next attempt of the activity or child at ``step``."""
        self._timers[step] = PendingTimer(
            step,
            self.now + delay,
            TimerKind.RETRY,
            attempt=attempt,
            activity_name=name,
            duration=delay,
        )

    def _finish_activity(self, act: PendingActivity) -> None:
        self._activities.pop(act.step, None)
        self._timers.pop(act.step, None)

    def _on_timer_fired(self, event: HistoryEvent) -> None:
        step = event.step if event.step is not None else -1
        timer = self._timers.get(step)
        if timer is None or timer.attempt != event.attempt:
            raise self._diverged(event, self._expectation(step), _describe(event))
        del self._timers[step]
        if timer.kind is TimerKind.USER:
            self._handle_steps.pop(id(self._loop_timers[step]), None)
            self._loop.fire_timer(self._loop_timers.pop(step))
        elif timer.kind is TimerKind.RETRY and self.children.retry(step):
            pass
        elif timer.kind is TimerKind.RETRY:
            act = self._activities[step]
            act.attempt += 1
            act.backing_off = False
            act.recorded = False
            self._arm_attempt_timeout(act)
        elif timer.kind is TimerKind.ACTIVITY_TIMEOUT:
            act = self._activities[step]
            if event.heartbeat_details is not None:
                act.heartbeat_details = event.heartbeat_details
            self._attempt_failed(
                act,
                FailureInfo(
                    type="builtins.TimeoutError",
                    message=(
                        f"activity {act.name!r} attempt {act.attempt} did not finish "
                        f"within its timeout of {act.timeout:g}s"
                    ),
                    timeout=act.timeout,
                ),
            )
        else:
            assert self.timeout is not None
            err = WorkflowTimeoutError(self.workflow_id, self.timeout)
            self._settle(Outcome(WorkflowStatus.FAILED, failure=encode_failure(err), error=err))

    def _on_terminal(self, event: HistoryEvent) -> None:
        if (
            self.outcome is None
            or self.outcome.event_type is not event.type
            or self.outcome_recorded
        ):
            expected = (
                f"{self.outcome.event_type.value}"
                if self.outcome is not None
                else self._expectation(None)
            )
            raise self._diverged(event, expected, _describe(event))
        self.outcome_recorded = True

    # -- running the code -----------------------------------------------------
    def _run(self) -> None:
        self._loop.run_until_idle()
        main = self._main
        if self.outcome is not None or main is None or not main.done():
            return
        if main.cancelled():
            self._settle(Outcome(WorkflowStatus.CANCELED))
            return
        exc = main.exception()
        if exc is None:
            try:
                result = to_payload(main.result(), "workflow result")
            except PayloadError as err:
                exc = err
            else:
                self._settle(Outcome(WorkflowStatus.COMPLETED, result=result))
                return
        if isinstance(exc, ContinueAsNewError):
            self._settle(
                Outcome(
                    WorkflowStatus.CONTINUED_AS_NEW, result=exc.input, next_run_id=exc.next_run_id
                )
            )
            return
        if isinstance(exc, _ControlFlow):
            return
        if isinstance(exc, asyncio.CancelledError):
            self._settle(Outcome(WorkflowStatus.CANCELED))
            return
        self._settle(
            Outcome(WorkflowStatus.FAILED, failure=encode_failure(exc, with_stack=True), error=exc)
        )

    def _settle(self, outcome: Outcome) -> None:
        self.outcome = outcome
        self.updates.settle(outcome.status)  # answered now, so no caller waits forever
        # work the code left behind is abandoned, as when a Temporal workflow returns
        self.children.settle()
        self._activities.clear()
        self._timers.clear()
        self.close()

    def close(self) -> None:
        """Stop the code: cancel its tasks, ignoring any durable call they still make."""
        if self._closed:
            return
        self._closed = True
        tasks = self._loop.pending_tasks()
        for task in tasks:
            task.cancel()
        try:
            self._loop.run_until_idle()
        except BaseException:  # the code's own cleanup must never break closing it
            log.debug("error while closing workflow %s", self.workflow_id, exc_info=True)
        for task in tasks:
            if task.done() and not task.cancelled():
                task.exception()  # mark retrieved
        self._loop.close()

    # -- commands issued by the context ---------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise _InstanceClosed()

    def next_step(self) -> int:
        self._check_open()
        self._step += 1
        return self._step

    def schedule_activity(
        self,
        fn: Callable[..., Any],
        name: str,
        payload: Any,
        retry: RetryPolicy,
        timeout: float | None,
        heartbeat_timeout: float | None = None,
    ) -> asyncio.Future[Any]:
        step = self.next_step()
        future: asyncio.Future[Any] = self._loop.create_future()
        act = PendingActivity(
            step, name, fn, payload, 1, retry, timeout, heartbeat_timeout, future=future
        )
        self._activities[step] = act
        self._arm_attempt_timeout(act)

        def on_done(fut: asyncio.Future[Any]) -> None:
            if fut.cancelled() and self._activities.get(step) is act:
                self._finish_activity(act)

        future.add_done_callback(on_done)
        return future

    def _arm_attempt_timeout(self, act: PendingActivity) -> None:
        if act.timeout is not None:
            self._timers[act.step] = PendingTimer(
                act.step,
                self.now + act.timeout,
                TimerKind.ACTIVITY_TIMEOUT,
                attempt=act.attempt,
                activity_name=act.name,
                duration=act.timeout,
            )

    def start_loop_timer(self, handle: asyncio.TimerHandle) -> None:
        step = self.next_step()
        when = handle.when()
        self._loop_timers[step] = handle
        self._handle_steps[id(handle)] = step
        # rounded: (now + d) - now is not exactly d in floating point
        self._timers[step] = PendingTimer(
            step, when, TimerKind.USER, duration=round(when - self.now, 6)
        )

    def cancel_loop_timer(self, handle: asyncio.TimerHandle) -> None:
        step = self._handle_steps.pop(id(handle), None)
        if step is not None:
            self._loop_timers.pop(step, None)
            self._timers.pop(step, None)

    def patched(self, change_id: str, *, deprecated: bool = False) -> bool:
        """Whether this run takes the new branch of patch ``change_id``; see the module doc."""
        self._check_open()
        known = self._patches.get(change_id)
        if known is not None:
            return known
        if self._patcher is not None:
            taken = self._patcher(change_id, deprecated)
        else:
            replaying, markers = self._recorded_ahead()
            taken = change_id in markers or not replaying or deprecated
            if change_id in markers or not replaying:
                self._markers.setdefault(change_id, False)
        self._patches[change_id] = taken
        return taken

    def upsert_search_attributes(self, changes: dict[str, Any]) -> None:
        """Change the run's search attributes now; a ``search_attributes_upserted`` records it."""
        self._check_open()
        if self._upserter is not None:  # the host records it its own way (or refuses)
            self._upserter(changes)
        else:
            self._upserts.append(changes)
        merge_attributes(self.search_attributes, changes)

    def _recorded_ahead(self) -> tuple[bool, set[str]]:
        """Whether history goes on past this event, and the patches its echoes mark."""
        later = self._recorded[self.last_event_id :]
        markers: set[str] = set()
        for event in later:
            if event.type not in _ECHOES:
                break
            if event.type is EventType.MARKER_RECORDED and event.change_id:
                markers.add(event.change_id)
        return bool(later), markers

    def continue_as_new(self, payload: Any) -> ContinueAsNewError:
        """The exception that ends this run and starts the next with ``payload``."""
        self._check_open()
        if self._no_continue_as_new is not None:
            raise WorkflowError(
                f"ctx.continue_as_new is not supported on {self._no_continue_as_new}; "
                "run this workflow on the embedded DefaultExecutor, or end the run and "
                "start a new one with the next input"
            )
        # derived from the run id, so a replay names the same next run
        seed = random.Random(f"{self.run_id}:continue-as-new").getrandbits(128)
        return ContinueAsNewError(payload, uuid.UUID(int=seed, version=4).hex)

    def add_query_handler(self, name: str, fn: Callable[[], Any]) -> None:
        self._query_handlers[name] = fn

    def add_update_handler(self, name: str, handler: UpdateHandler) -> None:
        self.updates.add_handler(name, handler)

    def _signal_channel(self, name: str) -> Any:
        from ._context import SignalChannel

        channel = self._channels.get(name)
        if channel is None:
            channel = self._channels[name] = SignalChannel(self, name)
        return channel

    # -- errors ---------------------------------------------------------------
    def _expectation(self, step: int | None) -> str:
        if self.outcome is not None:
            return f"{self.outcome.event_type.value} (the code has ended)"
        if step is None:
            return "nothing at this point"
        child = self.children.expectation(step)
        if child is not None:
            return child
        act = self._activities.get(step)
        if act is not None:
            state = "backing off" if act.backing_off else f"attempt {act.attempt}"
            return f"activity {act.name!r} at step {step} ({state})"
        timer = self._timers.get(step)
        if timer is not None:
            return f"a {timer.kind.value} timer at step {step}"
        if step > self._step:
            return f"nothing at step {step} (the code has issued only {self._step} steps)"
        return f"nothing pending at step {step}"

    def _diverged(self, event: HistoryEvent, expected: str, recorded: str) -> NonDeterminismError:
        return NonDeterminismError(self.workflow_id, event.id, expected, recorded)
