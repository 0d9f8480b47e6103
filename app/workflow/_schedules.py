"""Schedules: start a workflow on a cron expression or every N seconds, durably.

A schedule is a workflow of the engine's own (type :data:`SCHEDULER_TYPE`, id
``__schedule__/<schedule id>``), so it is exactly as durable as any other on
every runtime: its wait for the next tick is a durable timer, each run it
starts is a child workflow with an id derived from the tick
(``<schedule id>@<tick, UTC>``) and the ``abandon`` close policy, recorded in
its history before it is started. A crash, a restart or a takeover replays
it, and a tick that was acted on is never acted on again; the ticks missed
while nothing ran are acted on when it resumes, if they are no older than
``catchup_window``. Control (pause, resume, trigger) is a signal; ``describe``
is a query; delete is a cancel (the runs it started go on).
"""

from __future__ import annotations

import asyncio
import math
import re
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, Protocol

from croniter import croniter

from ._core import WorkflowContext
from ._errors import InvalidArgumentError
from ._names import FunctionTable, named
from ._types import Duration, ParentClosePolicy, to_seconds

SCHEDULER_TYPE = "__schedule__"
"""The workflow type of every schedule."""
CONTROL = "__schedule_control__"
"""The signal a schedule is paused, resumed and triggered with."""
DESCRIBE = "__schedule__"
"""The query a schedule answers with its state."""
_ID = re.compile(r"[A-Za-z0-9_.\-]{1,200}")
RECENT = 10
"""Actions a schedule remembers (the latest first)."""
CONTINUE_AFTER = 2000
"""History events after which a schedule continues as new (its state carried)."""


class Overlap(StrEnum):
    """What a tick does while the run the schedule started before is still running."""

    SKIP = "skip"
    BUFFER_ONE = "buffer_one"
    ALLOW_ALL = "allow_all"
    CANCEL_OTHER = "cancel_other"


def workflow_id_of(schedule_id: str) -> str:
    """The id of the workflow that is schedule ``schedule_id``."""
    return f"{SCHEDULER_TYPE}/{schedule_id}"


@dataclass(frozen=True)
class ScheduleSpec:
    """A schedule as created; checked when built (bad values raise at the call)."""

    schedule_id: str
    workflow: str
    input: Any = None
    cron: str | None = None
    every: float | None = None
    overlap: str = Overlap.SKIP.value
    jitter: float = 0.0
    catchup_window: float = 60.0
    start_at: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.schedule_id, str) or not _ID.fullmatch(self.schedule_id):
            raise InvalidArgumentError(
                "schedule_id must be 1-200 letters, digits, '_', '.' or '-', "
                f"got {self.schedule_id!r}"
            )
        if not isinstance(self.workflow, str) or not self.workflow:
            raise InvalidArgumentError(f"workflow must be a type name, got {self.workflow!r}")
        if (self.cron is None) == (self.every is None):
            raise InvalidArgumentError("give exactly one of cron=... or every=...")
        if self.cron is not None and (
            not isinstance(self.cron, str) or not croniter.is_valid(self.cron)
        ):
            raise InvalidArgumentError(f"cron must be a valid cron expression, got {self.cron!r}")
        if self.every is not None and not (
            isinstance(self.every, int | float) and math.isfinite(self.every) and self.every > 0
        ):
            raise InvalidArgumentError(f"every must be > 0 seconds, got {self.every!r}")
        try:
            object.__setattr__(self, "overlap", Overlap(self.overlap).value)
        except ValueError:
            choices = ", ".join(o.value for o in Overlap)
            raise InvalidArgumentError(
                f"overlap must be one of {choices}, got {self.overlap!r}"
            ) from None
        for name in ("jitter", "catchup_window"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
                raise InvalidArgumentError(f"{name} must be >= 0 seconds, got {value!r}")

    def ticks(self, after: datetime, until: datetime) -> list[datetime]:
        """The ticks in ``(after, until]``, in order."""
        out: list[datetime] = []
        tick = self.next_tick(after)
        while tick <= until:
            out.append(tick)
            tick = self.next_tick(tick)
        return out

    def next_tick(self, after: datetime) -> datetime:
        """The first tick strictly after ``after``."""
        if self.cron is not None:
            nxt: datetime = croniter(self.cron, after).get_next(datetime)
            return nxt
        assert self.every is not None
        anchor = datetime.fromisoformat(self.start_at)
        step = timedelta(seconds=self.every)
        count = math.floor((after - anchor) / step) + 1 if after >= anchor else 0
        return anchor + step * count


def make_spec(
    schedule_id: str,
    workflow: Any,
    input: Any,
    *,
    cron: str | None,
    every: Duration | None,
    overlap: str,
    jitter: Duration,
    catchup_window: Duration,
    now: datetime,
    namer: Any,
) -> ScheduleSpec:
    """A checked spec from ``create_schedule``'s arguments."""
    name = workflow if isinstance(workflow, str) else namer(workflow)
    return ScheduleSpec(
        schedule_id=schedule_id,
        workflow=name,
        input=input,
        cron=cron,
        every=None if every is None else to_seconds(every, "every"),
        overlap=overlap,
        jitter=to_seconds(jitter, "jitter", allow_zero=True),
        catchup_window=to_seconds(catchup_window, "catchup_window", allow_zero=True),
        start_at=now.astimezone(UTC).isoformat(),
    )


@named(SCHEDULER_TYPE)
async def scheduler(ctx: WorkflowContext, state: dict[str, Any]) -> dict[str, Any]:
    """The workflow that is a schedule (see the module doc)."""
    spec = ScheduleSpec(**state["spec"])
    paused: bool = state.get("paused", False)
    last = datetime.fromisoformat(state.get("last_tick") or spec.start_at)
    recent: list[dict[str, Any]] = list(state.get("recent", []))
    counts: dict[str, int] = dict(state.get("counts", {"started": 0, "skipped": 0, "missed": 0}))
    running: dict[str, asyncio.Task[None]] = {}
    handles: dict[str, Any] = {}
    buffered: list[datetime] = []
    control = ctx.receive_signal(CONTROL)

    def describe() -> dict[str, Any]:
        return {
            "schedule_id": spec.schedule_id,
            "spec": asdict(spec),
            "paused": paused,
            "last_tick": last.isoformat(),
            "next_tick": None if paused else spec.next_tick(last).isoformat(),
            "running": sorted(running),
            "buffered": [t.isoformat() for t in buffered],
            "recent": recent,
            **counts,
        }

    ctx.set_query_handler(DESCRIBE, describe)

    async def watch(child_id: str, handle: Any) -> None:
        outcome = "completed"
        try:
            await handle.result()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the scheduled run's failure is its own
            outcome = f"failed: {exc}"
        running.pop(child_id, None)
        handles.pop(child_id, None)
        _note(recent, {"workflow_id": child_id, "ended": outcome})
        if buffered and spec.overlap == Overlap.BUFFER_ONE.value:
            await start(buffered.pop(0), "buffered")

    async def start(tick: datetime, why: str) -> None:
        child_id = f"{spec.schedule_id}@{tick.astimezone(UTC):%Y%m%dT%H%M%S.%fZ}"
        handle = await ctx.start_child(
            spec.workflow, spec.input, id=child_id, parent_close_policy=ParentClosePolicy.ABANDON
        )
        counts["started"] += 1
        _note(recent, {"tick": tick.isoformat(), "workflow_id": child_id, "why": why})
        handles[child_id] = handle
        running[child_id] = asyncio.ensure_future(watch(child_id, handle))

    async def act(tick: datetime, why: str) -> None:
        if running and spec.overlap == Overlap.SKIP.value:
            counts["skipped"] += 1
            _note(recent, {"tick": tick.isoformat(), "skipped": "a run is still running"})
        elif running and spec.overlap == Overlap.BUFFER_ONE.value:
            if buffered:
                counts["skipped"] += 1  # one is buffered already
            else:
                buffered.append(tick)
        else:
            if spec.overlap == Overlap.CANCEL_OTHER.value:
                for other in list(handles.values()):
                    await other.cancel()  # its watcher notes how it ended
            await start(tick, why)

    try:
        while True:
            now = ctx.now()
            due = [] if paused else spec.ticks(last, now)
            for tick in due:
                if (now - tick).total_seconds() > spec.catchup_window:
                    counts["missed"] += 1  # older than the catch-up window
                else:
                    await act(tick, "scheduled")
            if due:
                last = due[-1]
            if ctx.info().should_continue_as_new and not running:
                ctx.continue_as_new(
                    {
                        "spec": asdict(spec),
                        "paused": paused,
                        "last_tick": last.isoformat(),
                        "recent": recent,
                        "counts": counts,
                    }
                )
            wait = None
            if not paused:
                nxt = spec.next_tick(last)
                jitter = ctx.random().uniform(0, spec.jitter) if spec.jitter else 0.0
                wait = max((nxt - now).total_seconds() + jitter, 0.001)
            try:
                message = await control.receive(timeout=wait)
            except TimeoutError:
                continue
            op = message.get("op") if isinstance(message, dict) else None
            if op == "pause":
                paused = True
            elif op == "resume":
                paused = False
                last = max(last, ctx.now())  # ticks missed while paused are not made up
            elif op == "trigger":
                await act(ctx.now(), "triggered")
    except asyncio.CancelledError:  # deleted: the runs it started go on (abandoned)
        for task in running.values():
            task.cancel()
        return describe()


def _note(recent: list[dict[str, Any]], entry: dict[str, Any]) -> None:
    recent.insert(0, entry)
    del recent[RECENT:]


class _Host(Protocol):
    """What an executor needs for :class:`ScheduleMethods`."""

    _workflows: FunctionTable

    async def execute(self, fn: Any, options: Any) -> Any: ...

    async def signal(self, workflow_id: str, signal: Any) -> None: ...

    async def query(self, workflow_id: str, query_type: str) -> Any: ...

    async def cancel(self, workflow_id: str) -> None: ...

    async def list(self, query: Any = None) -> Any: ...

    async def describe_schedule(self, schedule_id: str) -> dict[str, Any]: ...

    async def _control(self, schedule_id: str, op: str) -> None: ...


class ScheduleMethods:
    """The schedule calls of an executor, made of its own ``execute``, ``signal``,
    ``query``, ``cancel`` and ``list`` (the embedded and streaming executors)."""

    async def create_schedule(
        self: _Host,
        schedule_id: str,
        workflow: Any,
        input: Any = None,
        *,
        cron: str | None = None,
        every: Duration | None = None,
        overlap: str = "skip",
        jitter: Duration = 0,
        catchup_window: Duration = 60,
        paused: bool = False,
    ) -> dict[str, Any]:
        """Start ``workflow(input)`` on ``cron`` (UTC) or ``every`` seconds; returns its state.

        ``overlap`` says what a tick does while the last run is still running:
        ``skip`` it, ``buffer_one`` (run it when that one ends; later ones are
        skipped), ``allow_all`` or ``cancel_other`` (cancel it, then start).
        ``jitter`` delays each tick by up to that much; after downtime, missed
        ticks no older than ``catchup_window`` are acted on. Raises
        :class:`WorkflowAlreadyRunningError` if the id is taken.
        """
        from ._types import WorkflowOptions

        spec = make_spec(
            schedule_id,
            workflow,
            input,
            cron=cron,
            every=every,
            overlap=overlap,
            jitter=jitter,
            catchup_window=catchup_window,
            now=datetime.now(UTC),
            namer=self._workflows.name_of,
        )
        if not isinstance(paused, bool):
            raise InvalidArgumentError(f"paused must be a bool, got {paused!r}")
        options = WorkflowOptions(
            id=workflow_id_of(schedule_id),
            input={"spec": asdict(spec), "paused": paused},
            search_attributes={"schedule_id": schedule_id, "schedule_workflow": spec.workflow},
            continue_as_new_suggested_after=CONTINUE_AFTER,
        )
        await self.execute(scheduler, options)
        return {"schedule_id": schedule_id, "spec": asdict(spec), "paused": paused}

    async def describe_schedule(self: _Host, schedule_id: str) -> dict[str, Any]:
        """The schedule's state: spec, paused, last and next tick, running, recent actions."""
        answer: dict[str, Any] = await self.query(workflow_id_of(schedule_id), DESCRIBE)
        return answer

    async def list_schedules(self: _Host) -> list[dict[str, Any]]:
        """Every schedule that exists (not deleted), described."""
        from ._types import WorkflowStatus
        from ._visibility import WorkflowQuery

        out = []
        cursor = None
        while True:
            query = WorkflowQuery(
                workflow_type=SCHEDULER_TYPE,
                status=WorkflowStatus.RUNNING,
                page_size=1000,
                cursor=cursor,
            )
            page = await self.list(query)
            for item in page.items:
                out.append(await self.describe_schedule(item.search_attributes["schedule_id"]))
            cursor = page.next_cursor
            if cursor is None:
                return out

    async def pause_schedule(self: _Host, schedule_id: str) -> None:
        """Stop acting on ticks until :meth:`resume_schedule` (missed ticks are not made up)."""
        await self._control(schedule_id, "pause")

    async def resume_schedule(self: _Host, schedule_id: str) -> None:
        """Act on the ticks after now again."""
        await self._control(schedule_id, "resume")

    async def trigger_schedule(self: _Host, schedule_id: str) -> None:
        """Act now, as a tick would (the overlap policy applies)."""
        await self._control(schedule_id, "trigger")

    async def delete_schedule(self: _Host, schedule_id: str) -> None:
        """End the schedule; the runs it started go on."""
        await self.cancel(workflow_id_of(schedule_id))

    async def _control(self: _Host, schedule_id: str, op: str) -> None:
        from ._types import Signal

        await self.signal(workflow_id_of(schedule_id), Signal(CONTROL, {"op": op}))
