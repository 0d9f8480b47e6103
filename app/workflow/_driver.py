"""The loop every runtime runs around the core, with the runtime's I/O left out.

A step of a run is always the same: record the input event, apply it, record
the echoes of what the code asked for (``activity_started``, markers, child
starts, the terminal event...) and apply those. Only *recording* differs: the
embedded runtime awaits a store write, the streaming machine appends to the
effects of the command it handles. So :func:`step` is a generator that
yields each batch of events to record and resumes once they are durable;
:func:`run_step` drives it with an ``async`` write and :func:`run_step_sync`
with a plain one. A write that fails is thrown into the generator, which
takes the events back out of the run's state before the error goes on.

The same goes for what comes after: :func:`next_run` builds the run that a
run continued as new starts, and :func:`sync_keyed` aligns the tasks a
runtime keeps per step (activity attempts, child watchers, Temporal handles)
with what the instance wants.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable, Generator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

from ._core import Outcome, PendingActivity, TimerKind, WorkflowInstance, parent_of
from ._errors import NonDeterminismError
from ._types import (
    TERMINAL_EVENTS,
    TERMINAL_STATUS,
    EventType,
    HistoryEvent,
    WorkflowState,
)

Batch = list[HistoryEvent]


@dataclass(slots=True)
class Settled:
    """How a step left the run."""

    echoes: list[HistoryEvent] = field(default_factory=list)
    """The echoes recorded and applied in this step, in order."""
    new_attempts: list[PendingActivity] = field(default_factory=list)
    """Activity attempts recorded as started in this step (to dispatch)."""
    outcome: Outcome | None = None
    """The run's end, recorded in this step or before."""
    diverged: NonDeterminismError | None = None
    """Applying an event raised: the runtime parks the run with this."""


def record(state: WorkflowState, events: Batch, *, parked: bool = False) -> tuple[Any, ...]:
    """Append ``events`` to ``state`` and move its status; returns what :func:`unrecord` needs."""
    before = (len(state.history), state.status, state.result, state.error, state.updated_at)
    state.history.extend(events)
    last = events[-1]
    state.updated_at = last.timestamp
    if last.type in TERMINAL_EVENTS:
        state.status = TERMINAL_STATUS[last.type]
        state.result = last.result
        state.error = last.error
    elif not parked:
        state.error = None
    return before


def unrecord(state: WorkflowState, before: tuple[Any, ...]) -> None:
    """Undo :func:`record` after the write of its events failed."""
    del state.history[before[0] :]
    state.status, state.result, state.error, state.updated_at = before[1:]


def step(
    state: WorkflowState,
    instance: WorkflowInstance | None,
    event: HistoryEvent | None,
    now: Callable[[], datetime],
    *,
    parked: bool = False,
    check: Callable[[], bool] | None = None,
) -> Generator[Batch, None, Settled]:
    """Record and apply ``event`` (None: only reconcile), then the echoes it caused.

    Yields each batch to make durable; the caller sends ``None`` once it is,
    or throws the write's error in. A parked run (or one without an instance)
    only records ``event``: it is applied when the code is fixed and the run
    rebuilt from its history. ``check``, called once the input is applied and
    before the echoes are, may stop the step (False: the runtime parked the
    run, e.g. its replay check failed).
    """
    settled = Settled()
    parked = parked or instance is None
    # Both batches are recorded the same way (record, yield, take back on a failed
    # write), written out twice on purpose: a sub-generator per batch was measurable
    # on every step of every runtime.
    if event is not None:
        batch = [event]
        before = record(state, batch, parked=parked)
        try:
            yield batch
        except BaseException:
            unrecord(state, before)
            raise
    if parked or instance is None:
        return settled
    if event is not None and not _applied(instance, event, settled):
        return settled
    if check is not None and not check():
        return settled
    echoes = instance.echoes(len(state.history) + 1, now())
    settled.outcome = instance.outcome
    if echoes:
        # an attempt is new until its activity_started (among these echoes) is applied
        new_attempts = [a for a in instance.pending_activities() if not a.recorded]
        before = record(state, echoes, parked=parked)
        try:
            yield echoes
        except BaseException:
            unrecord(state, before)
            raise
        for echo in echoes:
            if not _applied(instance, echo, settled):
                return settled
            settled.echoes.append(echo)
        settled.new_attempts = new_attempts
    return settled


def _applied(instance: WorkflowInstance, event: HistoryEvent, settled: Settled) -> bool:
    try:
        instance.apply(event)
    except NonDeterminismError as err:
        settled.diverged = err
        return False
    return True


async def run_step(
    steps: Generator[Batch, None, Settled], write: Callable[[Batch], Awaitable[None]]
) -> Settled:
    """Drive :func:`step` with an ``async`` write (a store)."""
    try:
        batch = next(steps)
        while True:
            try:
                await write(batch)
            except BaseException as exc:
                batch = steps.throw(exc)
            else:
                batch = steps.send(None)
    except StopIteration as done:
        settled: Settled = done.value
        return settled


def run_step_sync(
    steps: Generator[Batch, None, Settled], write: Callable[[Batch], None]
) -> Settled:
    """Drive :func:`step` with a plain write (effects collected in memory)."""
    try:
        batch = next(steps)
        while True:
            write(batch)
            batch = steps.send(None)
    except StopIteration as done:
        settled: Settled = done.value
        return settled


def will_retry(instance: WorkflowInstance, event: HistoryEvent) -> bool:
    """Whether ``event`` (not applied yet) fails an activity attempt that is tried again."""
    if event.type is EventType.ACTIVITY_FAILED:
        if event.failure is None or event.failure.non_retryable:
            return False
    elif event.type is EventType.TIMER_FIRED and event.step is not None:
        timer = instance.pending_timers().get(event.step)
        if timer is None or timer.kind is not TimerKind.ACTIVITY_TIMEOUT:
            return False
    else:
        return False
    for act in instance.pending_activities():
        if act.step == event.step:
            return act.attempt < act.retry.max_attempts
    return False


@dataclass
class NextRun:
    """The run a run continued as: its state (history empty), first event and carried signals."""

    state: WorkflowState
    started: HistoryEvent
    carried: deque[tuple[str, Any]]


def next_run(
    old: WorkflowState,
    instance: WorkflowInstance,
    outcome: Outcome,
    now: datetime,
    carried: deque[tuple[str, Any]],
) -> NextRun:
    """The next run of ``old``, which ended with ``outcome`` (continued as new).

    It takes the signals the old run did not consume, then ``carried`` (those
    handed to the old run and not recorded there), and keeps the chain's ids,
    its suggestion limit and, for a child, its parent.
    """
    assert outcome.next_run_id is not None
    parent = parent_of(old)
    started = HistoryEvent(
        id=1,
        type=EventType.WORKFLOW_STARTED,
        timestamp=now,
        input=outcome.result,
        previous_run_ids=[*old.previous_run_ids, old.run_id],
        continue_as_new_suggested_after=instance.suggest_after,
        # a workflow keeps its search attributes and memo across continue-as-new
        search_attributes=dict(instance.search_attributes) or None,
        memo=old.history[0].memo if old.history else None,
        **(parent.started_fields() if parent is not None else {}),
    )
    state = WorkflowState(
        workflow_id=old.workflow_id,
        run_id=outcome.next_run_id,
        workflow_type=old.workflow_type,
        input=outcome.result,
        timeout=old.timeout,
        history=[],
        created_at=now,
        updated_at=now,
    )
    return NextRun(state, started, deque([*instance.carried_signals(), *carried]))


def attempt_starts(history: Sequence[HistoryEvent]) -> dict[tuple[int, int], float]:
    """When each recorded activity attempt started (epoch seconds), by (step, attempt)."""
    return {
        (e.step, e.attempt): e.timestamp.timestamp()
        for e in history
        if e.type is EventType.ACTIVITY_STARTED and e.step is not None
        if e.attempt is not None
    }


Want = TypeVar("Want")
Handle = TypeVar("Handle")


def sync_keyed(
    current: dict[int, tuple[int, Handle]],
    wanted: Mapping[int, Want],
    attempt_of: Callable[[Want], int],
    start: Callable[[Want], Handle],
    cancel: Callable[[Handle], None],
) -> None:
    """Make ``current`` (step -> (attempt, handle)) match ``wanted`` (step -> work).

    A step no longer wanted, or wanted at another attempt, is cancelled; a
    wanted step without a handle is started.
    """
    for key, (attempt, handle) in list(current.items()):
        want = wanted.get(key)
        if want is None or attempt_of(want) != attempt:
            cancel(handle)
            del current[key]
    for key, want in wanted.items():
        if key not in current:
            current[key] = (attempt_of(want), start(want))
