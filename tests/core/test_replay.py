"""The deterministic core on its own: golden histories, divergence, asyncio inside workflows."""

from __future__ import annotations

import ast
import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

import app.workflow as public
from app.workflow import (
    EventType,
    HistoryEvent,
    NonDeterminismError,
    RetryPolicy,
    WorkflowContext,
    WorkflowStatus,
)
from app.workflow._core import TimerKind, WorkflowInstance
from tests.core import golden_workflows as golden
from tests.core.driver import Driver


def double(x: int) -> int:
    return 2 * x


def triple(x: int) -> int:
    return 3 * x


# -- golden histories --------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(golden.WORKFLOWS))
def test_golden_history_replays(name: str) -> None:
    raw = json.loads((golden.GOLDEN / f"{name}.json").read_text())
    meta, events = raw[0], [HistoryEvent.model_validate(e) for e in raw[1:]]
    instance = WorkflowInstance(
        workflow_id=meta["workflow_id"],
        run_id=meta["run_id"],
        workflow_type=name,
        fn=golden.WORKFLOWS[name],
    )
    instance.replaying = True
    for event in events:
        instance.apply(event)
    assert instance.outcome is not None and instance.outcome_recorded
    assert instance.outcome.event_type is events[-1].type
    assert instance.outcome.result == events[-1].result
    assert not instance.pending_activities() and not instance.pending_timers()


# -- replay ----------------------------------------------------------------------
async def two_steps(ctx: WorkflowContext, x: int) -> int:
    a = await ctx.execute_activity(double, x)
    await ctx.sleep(10)
    return int(await ctx.execute_activity(double, a))


def test_replay_rebuilds_pending_work_without_rerunning() -> None:
    d = Driver(two_steps, 5)
    d.complete(1, 10)
    assert d.instance.pending_timers()[2].due == pytest.approx(d.now() + 10)
    due = d.instance.pending_timers()[2].due
    replayed = d.replay()
    # the completed activity is not pending again; the timer keeps its original due time
    assert [a.step for a in replayed.pending_activities()] == []
    assert replayed.pending_timers()[2].due == due
    d.fire(2)
    act = d.instance.pending_activities()[0]
    assert (act.step, act.input, act.recorded) == (3, 10, True)
    replayed = d.replay()
    assert [(a.step, a.recorded) for a in replayed.pending_activities()] == [(3, True)]
    d.complete(3, 20)
    assert d.instance.outcome is not None and d.instance.outcome.result == 20


async def renamed(ctx: WorkflowContext, x: int) -> int:
    return int(await ctx.execute_activity(triple, x))


async def sleeps_first(ctx: WorkflowContext, x: int) -> int:
    await ctx.sleep(1)
    return x


async def does_less(ctx: WorkflowContext, x: int) -> int:
    return x


def test_divergence_names_the_event_and_both_sides() -> None:
    d = Driver(two_steps, 5)
    d.complete(1, 10)
    with pytest.raises(NonDeterminismError) as info:
        d.replay(renamed)
    assert info.value.event_id == 2
    assert "'triple'" in info.value.expected and "'double'" in info.value.recorded
    with pytest.raises(NonDeterminismError) as info:
        d.replay(sleeps_first)
    assert info.value.event_id == 2 and "sleep" in info.value.expected
    with pytest.raises(NonDeterminismError) as info:
        d.replay(does_less)
    assert info.value.event_id == 2
    assert "workflow_completed" in info.value.expected
    assert "activity_started" in info.value.recorded


def test_a_stuck_instance_stays_stuck() -> None:
    d = Driver(two_steps, 5)
    instance = WorkflowInstance(workflow_id="wf", run_id="run", workflow_type="t", fn=renamed)
    instance.apply(d.history[0])
    with pytest.raises(NonDeterminismError):
        instance.apply(d.history[1])
    with pytest.raises(NonDeterminismError):
        instance.apply(d.history[1])
    assert instance.stuck is not None


def test_events_must_come_in_id_order() -> None:
    d = Driver(two_steps, 5)
    instance = d.new_instance()
    with pytest.raises(NonDeterminismError, match="event 1"):
        instance.apply(d.history[1])


# -- asyncio inside workflows ---------------------------------------------------------
async def asyncio_features(ctx: WorkflowContext, _: None) -> dict[str, Any]:
    ready = asyncio.Event()
    order: list[str] = []

    async def waiter() -> None:
        await ready.wait()
        order.append("waiter")

    task = asyncio.create_task(waiter())
    order.append("main")
    ready.set()
    await task
    try:
        await asyncio.wait_for(ctx.execute_activity(double, 1), timeout=5)
        timed_out = False
    except TimeoutError:
        timed_out = True
    async with asyncio.TaskGroup() as group:
        first = group.create_task(ctx.execute_activity(double, 2))
        second = group.create_task(ctx.execute_activity(double, 3))
    await asyncio.sleep(1)  # a plain asyncio sleep is a durable timer too
    return {"order": order, "timed_out": timed_out, "sum": first.result() + second.result()}


def test_asyncio_primitives_are_deterministic() -> None:
    d = Driver(asyncio_features)
    timers = d.instance.pending_timers()
    assert [t.kind for t in timers.values()] == [TimerKind.USER]  # wait_for's timeout
    d.fire(next(iter(timers)))  # wait_for times out before the activity finishes
    acts = sorted(a.step for a in d.instance.pending_activities())
    assert len(acts) == 2  # the timed-out activity was canceled; the group's two run
    d.complete(acts[1], 6)
    d.complete(acts[0], 4)
    sleep_step = next(iter(d.instance.pending_timers()))
    d.fire(sleep_step)
    assert d.instance.outcome is not None
    expected = {"order": ["main", "waiter"], "timed_out": True, "sum": 10}
    assert d.instance.outcome.result == expected
    assert d.replay().outcome == d.instance.outcome


async def uses_threads(ctx: WorkflowContext, _: None) -> None:
    await asyncio.get_running_loop().run_in_executor(None, print, "x")


def test_blocking_calls_in_workflow_code_fail_it() -> None:
    d = Driver(uses_threads)
    outcome = d.instance.outcome
    assert outcome is not None and outcome.status is WorkflowStatus.FAILED
    assert outcome.failure is not None and "execute_activity" in outcome.failure.message


async def workflow_with_retry(ctx: WorkflowContext, _: None) -> int:
    policy = RetryPolicy(max_attempts=4, initial_interval=1, backoff_coefficient=3, max_interval=5)
    return int(await ctx.execute_activity(double, 1, retry=policy))


def test_retry_backoff_is_exponential_capped_and_replay_safe() -> None:
    d = Driver(workflow_with_retry)
    delays = []
    for attempt in (1, 2, 3):
        d.add(
            EventType.ACTIVITY_FAILED,
            step=1,
            attempt=attempt,
            failure=public.FailureInfo(type="builtins.OSError", message="down"),
        )
        timer = d.instance.pending_timers()[1]
        assert timer.kind is TimerKind.RETRY
        delays.append(timer.duration)
        replayed = d.replay()
        assert replayed.pending_timers()[1] == timer  # same jitter on replay
        d.fire(1)
    base = [1, 3, 5]  # 1, 1*3, min(9, 5)
    for delay, b in zip(delays, base, strict=True):
        assert b * 0.8 - 1e-9 <= delay <= min(5, b * 1.2) + 1e-9
    d.add(
        EventType.ACTIVITY_FAILED,
        step=1,
        attempt=4,
        failure=public.FailureInfo(type="builtins.OSError", message="down"),
    )
    outcome = d.instance.outcome
    assert outcome is not None and outcome.failure is not None
    assert outcome.failure.attempts == 4 and outcome.failure.cause is not None
    assert outcome.failure.cause.type == "builtins.OSError"


def test_retry_policy_without_jitter_is_exact() -> None:
    policy = RetryPolicy(initial_interval=0.5, backoff_coefficient=2, max_interval=3, jitter=0)
    assert [policy.interval(n, 1.0) for n in range(1, 6)] == [0.5, 1.0, 2.0, 3.0, 3.0]


# -- structure ----------------------------------------------------------------------
PUBLIC_NAMES = [
    "ActivityCancelledError",
    "ActivityError",
    "AppendingStore",
    "ApplicationError",
    "BlobStore",
    "ChildWorkflowError",
    "ChildWorkflowHandle",
    "ClaimCheckCodec",
    "CodecChain",
    "CompressionCodec",
    "Config",
    "ContinueAsNewError",
    "DefaultExecutor",
    "DurableExecutor",
    "Duration",
    "EncryptionCodec",
    "EventType",
    "ExecutorStoppedError",
    "FailureInfo",
    "HistoryEvent",
    "Hooks",
    "HumanManager",
    "InteractionRequest",
    "InvalidArgumentError",
    "KafkaExecutor",
    "LocalBlobStore",
    "Middleware",
    "NonDeterminismError",
    "NonRetryableError",
    "ParentClosePolicy",
    "PayloadCodec",
    "PayloadCodecError",
    "PayloadError",
    "ProviderRegistry",
    "QueryNotFoundError",
    "RetryPolicy",
    "S3BlobStore",
    "Signal",
    "SignalChannel",
    "StoreClosedError",
    "StoreConflictError",
    "UpdateFailedError",
    "UpdateNotFoundError",
    "UpdateRejectedError",
    "WorkflowAlreadyRunningError",
    "WorkflowCanceledError",
    "WorkflowContext",
    "WorkflowError",
    "WorkflowFailedError",
    "WorkflowFilter",
    "WorkflowFunc",
    "WorkflowHandle",
    "WorkflowInfo",
    "WorkflowNotFoundError",
    "WorkflowOptions",
    "WorkflowPage",
    "WorkflowQuery",
    "WorkflowState",
    "WorkflowStatus",
    "WorkflowStore",
    "WorkflowSummary",
    "WorkflowTimeoutError",
    "activity",
    "apply_middleware",
    "compose_hooks",
    "default_retry_policy",
    "human_activity",
    "list_providers",
    "llm_activity",
    "load_codec",
    "named",
    "new",
    "new_key",
    "register",
    "tool_activity",
    "with_hooks",
    "with_tracing",
]


def test_public_api_is_pinned() -> None:
    assert public.__all__ == sorted(public.__all__)
    assert public.__all__ == PUBLIC_NAMES
    for name in public.__all__:
        assert getattr(public, name) is not None


def test_error_tree() -> None:
    errors = [getattr(public, n) for n in PUBLIC_NAMES if n.endswith("Error")]
    # continue-as-new unwinds the code: except Exception must let it through
    errors.remove(public.ContinueAsNewError)
    assert not issubclass(public.ContinueAsNewError, Exception)
    assert all(issubclass(e, public.WorkflowError) for e in errors)
    assert issubclass(public.WorkflowTimeoutError, public.WorkflowFailedError)
    assert issubclass(public.InvalidArgumentError, ValueError)
    assert issubclass(public.PayloadError, TypeError)
    assert public.EventType.__members__.keys() >= {
        "WORKFLOW_STARTED",
        "WORKFLOW_COMPLETED",
        "WORKFLOW_FAILED",
        "WORKFLOW_CANCELED",
        "ACTIVITY_STARTED",
        "ACTIVITY_COMPLETED",
        "ACTIVITY_FAILED",
        "SIGNAL_RECEIVED",
        "TIMER_FIRED",
    }


CORE = Path(public.__file__).parent / "_core"
ALLOWED_IMPORTS = {
    "__future__",
    "asyncio",
    "collections",
    "collections.abc",
    "contextvars",
    "dataclasses",
    "datetime",
    "enum",
    "logging",
    "random",
    "typing",
    "uuid",
    "weakref",
}
CLOCK_READS = {"now", "utcnow", "today"}


@pytest.mark.parametrize("path", sorted(CORE.glob("*.py")), ids=lambda p: p.name)
def test_core_does_no_io(path: Path) -> None:
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                assert alias.name in ALLOWED_IMPORTS, f"{path.name} imports {alias.name}"
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            assert node.module in ALLOWED_IMPORTS, f"{path.name} imports {node.module}"
        elif (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in ("datetime", "date")
            and node.attr in CLOCK_READS
        ):
            raise AssertionError(f"{path.name}:{node.lineno} reads the clock: {node.attr}()")
