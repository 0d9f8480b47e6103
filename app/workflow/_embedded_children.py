"""Child workflows in the embedded runtime: start, await, signal, close.

A parent's recorded ``child_workflow_started`` gets a watcher task: it
starts the child (unless a run of it for this parent step and attempt
exists: after a restart the watcher only attaches), follows the child's
chain of runs to its last, and records the end in the parent. Restarted
executors resume the watchers from the parents' histories, so a child's end
is never lost. A child is known as the parent's by its ``workflow_started``
(parent run id, step and attempt).

When a parent's run ends, the children it leaves running are canceled or
terminated by their close policy; a crash between the parent's end and that
is repaired at the next start (:meth:`EmbeddedChildren.close_orphans`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ._core import (
    CANCEL_SIGNAL,
    Parent,
    PendingChild,
    child_end,
    parent_of,
    signal_id,
    terminated_failure,
)
from ._errors import WorkflowAlreadyRunningError
from ._types import (
    EventType,
    FailureInfo,
    HistoryEvent,
    ParentClosePolicy,
    WorkflowState,
    WorkflowStatus,
)

if TYPE_CHECKING:
    from ._embedded import DefaultExecutor, _Run

log = logging.getLogger("app.workflow.embedded")

_POLL = 0.05  # seconds between looks at a child another task is still starting

ParentRef = tuple[str, str, int, int]
"""(parent workflow id, parent run id, step, attempt): which call a child answers."""


def _ref_of(state: WorkflowState) -> ParentRef | None:
    parent = parent_of(state)
    return None if parent is None else parent[:4]


def _refused(message: str) -> FailureInfo:
    return FailureInfo(type="app.workflow.ChildWorkflowError", message=message, non_retryable=True)


class EmbeddedChildren:
    """The child-workflow duties of one :class:`DefaultExecutor`."""

    def __init__(self, executor: DefaultExecutor) -> None:
        self._ex = executor
        # (parent run id, child id) -> set once the child's run exists, for signals to wait on
        self._started: dict[tuple[str, str], asyncio.Event] = {}
        # child id -> its start in progress, for a close policy to wait on
        self._starts: dict[str, asyncio.Task[Any]] = {}

    # -- a parent's children ----------------------------------------------------
    def sync(self, run: _Run) -> None:
        """One watcher per recorded child attempt of ``run``, none for the others."""
        instance = run.instance
        if instance is None or not (instance.children.children or run.child_tasks):
            return
        wanted = {c.step: c for c in instance.pending_children()}
        for step, (attempt, task) in list(run.child_tasks.items()):
            child = wanted.get(step)
            if child is None or child.attempt != attempt:
                task.cancel()
                del run.child_tasks[step]
        for step, child in wanted.items():
            if step not in run.child_tasks:
                key = (run.state.run_id, child.workflow_id)
                started = self._started[key] = asyncio.Event()
                task = self._ex._spawn(self._watch(run, child, started))
                task.add_done_callback(self._forget(key, started))
                run.child_tasks[step] = (child.attempt, task)

    def _forget(self, key: tuple[str, str], started: asyncio.Event) -> Callable[[Any], None]:
        def forget(_: Any) -> None:
            started.set()  # a signal still waiting goes on, and finds no child to take it
            if self._started.get(key) is started:
                del self._started[key]

        return forget

    async def _watch(self, run: _Run, child: PendingChild, started: asyncio.Event) -> None:
        ex = self._ex
        parent = run.state
        ref: ParentRef = (parent.workflow_id, parent.run_id, child.step, child.attempt)
        status, result, failure, child_run = await self._outcome(child, ref, started)
        kind, fields = child_end(status, result, failure)
        task = asyncio.current_task()

        def make(r: _Run) -> HistoryEvent | None:
            mine = r.child_tasks.get(child.step)
            if mine is None or mine[1] is not task or r.instance is None:
                return None
            del r.child_tasks[child.step]
            if not r.instance.children.is_current(child.step, child.attempt):
                return None
            return ex._event(
                r,
                kind,
                step=child.step,
                attempt=child.attempt,
                child_workflow_id=child.workflow_id,
                new_run_id=child_run,
                **fields,
            )

        await ex._input(run, make)

    async def _outcome(
        self, child: PendingChild, ref: ParentRef, started: asyncio.Event
    ) -> tuple[WorkflowStatus, Any, FailureInfo | None, str | None]:
        """Start the child if it is not there yet, then wait for its last run to end."""
        ex = self._ex
        wid = child.workflow_id
        while True:
            live = ex._runs.get(wid)
            if live is not None and _ref_of(live.state) == ref:
                started.set()
                outcome = await asyncio.shield(live.done)
                if outcome.status is WorkflowStatus.CONTINUED_AS_NEW:
                    continue  # the next run took its place before this one finished
                return outcome.status, outcome.result, outcome.failure, live.state.run_id
            if live is not None and not live.ended:
                return (
                    WorkflowStatus.FAILED,
                    None,
                    _refused(
                        f"workflow id {wid!r} is already in use by a running workflow "
                        f"(run {live.state.run_id}) that is not this parent's child"
                    ),
                    None,
                )
            # its own task: a parent that ends meanwhile must not cut a child's start short
            # (the close policy waits for it, then applies)
            task = self._starts[wid] = ex._spawn(self._look_or_start(child, ref))
            task.add_done_callback(self._unregister(wid))
            found = await asyncio.shield(task)
            if isinstance(found, FailureInfo):
                return WorkflowStatus.FAILED, None, found, None
            if found is not None:  # this call's child, stored
                if found.status not in (WorkflowStatus.RUNNING, WorkflowStatus.CONTINUED_AS_NEW):
                    last = found.history[-1] if found.history else None
                    failure = last.failure if last is not None else None
                    return found.status, found.result, failure, found.run_id
                await asyncio.sleep(_POLL)  # registered by a start or a hand-off in progress
            # started now, or by someone else meanwhile: look again

    def _unregister(self, wid: str) -> Callable[[asyncio.Task[Any]], None]:
        def unregister(task: asyncio.Task[Any]) -> None:
            if self._starts.get(wid) is task:
                del self._starts[wid]

        return unregister

    async def _look_or_start(
        self, child: PendingChild, ref: ParentRef
    ) -> WorkflowState | FailureInfo | None:
        """The child's stored run if it is this call's; else start it (None once started,
        or taken by another start meanwhile); a failure if its type is not registered."""
        ex = self._ex
        wid = child.workflow_id
        state = await ex._io.load(wid)
        if state is not None and _ref_of(state) == ref:
            return state
        fn = ex._workflows.get(child.workflow_type)
        if fn is None:
            known = ", ".join(ex._workflows.names()) or "none"
            return _refused(
                f"child workflow type {child.workflow_type!r} is not registered with this "
                f"executor (registered: {known})"
            )
        with contextlib.suppress(WorkflowAlreadyRunningError):  # taken meanwhile
            await ex._start_run(
                fn,
                child.workflow_type,
                wid,
                child.input,
                child.timeout,
                None,
                HistoryEvent(
                    id=1,
                    type=EventType.WORKFLOW_STARTED,
                    timestamp=ex._clock(),
                    **Parent(*ref, child.policy).started_fields(),
                ),
            )
        return None

    # -- signals to children ----------------------------------------------------
    def deliver(self, run: _Run, event: HistoryEvent) -> None:
        """Deliver a recorded ``child_workflow_signaled`` (again, after a restart)."""
        self._ex._spawn(self._deliver(run.state.run_id, event))

    async def _deliver(self, parent_run_id: str, event: HistoryEvent) -> None:
        ex = self._ex
        started = self._started.get((parent_run_id, event.child_workflow_id or ""))
        if started is not None:  # the parent's child: wait until its run exists
            await started.wait()
        target = ex._runs.get(event.child_workflow_id or "")
        if target is None or target.ended:
            log.info(
                "signal %r to child workflow %s dropped: it is not running",
                event.signal_name,
                event.child_workflow_id,
            )
            return
        sender = signal_id(parent_run_id, event.step or 0)

        def make(r: _Run) -> HistoryEvent | None:
            if any(e.sender_id == sender for e in r.state.history):
                return None  # delivered before a restart
            if event.signal_name == CANCEL_SIGNAL:  # the parent's handle.cancel()
                return ex._event(r, EventType.CANCEL_REQUESTED, sender_id=sender)
            return ex._event(
                r,
                EventType.SIGNAL_RECEIVED,
                signal_name=event.signal_name,
                signal_payload=event.signal_payload,
                sender_id=sender,
            )

        await ex._input(target, make)

    def redeliver(self, run: _Run) -> None:
        """Deliver the run's recorded child signals again: a restart may have cut one off."""
        for event in run.state.history:
            if event.type is EventType.CHILD_WORKFLOW_SIGNALED:
                self.deliver(run, event)

    # -- the parent-close policy ------------------------------------------------
    def close(self, run: _Run) -> None:
        """Apply the close policy to the children ``run`` left running at its end."""
        instance = run.instance
        if instance is None:
            return
        for child_id, policy in instance.children.closing():
            self._ex._spawn(self._close(child_id, run.state.workflow_id, run.state.run_id, policy))

    async def _close(
        self, child_id: str, parent_id: str, parent_run_id: str, policy: ParentClosePolicy
    ) -> None:
        if policy is ParentClosePolicy.ABANDON:
            return
        ex = self._ex
        starting = self._starts.get(child_id)
        if starting is not None:  # the parent ended while its child was being started
            await asyncio.wait([starting])
        child = ex._runs.get(child_id)
        ref = _ref_of(child.state) if child is not None else None
        if child is None or child.ended or ref is None or ref[1] != parent_run_id:
            return
        failure = None
        if policy is ParentClosePolicy.TERMINATE:
            failure = terminated_failure(f"terminated: its parent workflow {parent_id!r} ended")
        await ex._input(
            child,
            lambda r: ex._event(
                r,
                EventType.CANCEL_REQUESTED,
                failure=failure,
                error=None if failure is None else failure.message,
            ),
        )

    async def close_orphans(self) -> None:
        """Children still running whose parent's run has ended: apply their close policy."""
        ex = self._ex
        for run in list(ex._runs.values()):
            ref = parent_of(run.state)
            if ref is None or run.ended:
                continue
            if ref.policy is ParentClosePolicy.ABANDON:
                continue
            parent = ex._runs.get(ref.workflow_id)
            if parent is not None and parent.state.run_id == ref.run_id and not parent.ended:
                continue
            state = parent.state if parent is not None else await ex._io.load(ref.workflow_id)
            if (
                state is not None
                and state.run_id == ref.run_id
                and state.status is WorkflowStatus.RUNNING
            ):
                continue
            await self._close(run.state.workflow_id, ref.workflow_id, ref.run_id, ref.policy)
