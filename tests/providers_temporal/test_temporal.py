"""TemporalExecutor and TemporalStore on the real Temporal dev server.

The engine conformance suite runs on TemporalExecutor too (runtime
``temporal``); these tests cover what is specific to the provider: the
registry entry, connection errors, the mapping of Temporal's history to the
engine's, and interoperation with plain Temporal clients.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from temporalio.client import Client, WorkflowExecutionStatus

from app.testing import HookRecorder
from app.workflow import (
    ApplicationError,
    ChildWorkflowError,
    Config,
    EventType,
    InvalidArgumentError,
    RetryPolicy,
    Signal,
    WorkflowContext,
    WorkflowError,
    WorkflowFilter,
    WorkflowOptions,
    WorkflowQuery,
    WorkflowStatus,
    activity,
    list_providers,
    new,
)
from providers.temporal import (
    DEFAULT_TASK_QUEUE,
    TemporalConnectionError,
    TemporalExecutor,
    TemporalStore,
    connect,
)
from tests import servers
from tests.conformance import workflows as wf

WAIT = 15.0
QUEUE = "provider-tests"


def _names(state: Any) -> list[str]:
    return [e.type.value for e in state.history]


# -- registry and configuration -----------------------------------------------------
async def test_registered_as_temporal_with_the_seed_keys(temporal_client: Client) -> None:
    assert "temporal" in list_providers()
    executor = new(
        "temporal",
        Config(
            extra={
                "client": temporal_client,
                "task_queue": QUEUE,
                "workflows": [wf.sequential],
                "activities": [wf.double, wf.async_double],
            }
        ),
    )
    assert isinstance(executor, TemporalExecutor)
    assert executor.task_queue == QUEUE
    async with executor as ex:
        handle = await ex.execute(wf.sequential, WorkflowOptions(id="reg", input=1))
        assert await handle.result(timeout=WAIT) == [2, 4, 8]
    description = await temporal_client.get_workflow_handle("reg").describe()
    assert description.task_queue == QUEUE
    assert description.workflow_type == "sequential"


def test_registry_rejects_unknown_keys_and_a_store() -> None:
    with pytest.raises(InvalidArgumentError, match=r"bogus.*accepted: .*client.*task_queue"):
        new("temporal", Config(extra={"bogus": 1}))
    with pytest.raises(InvalidArgumentError, match=r"Config\.store"):
        new("temporal", Config(store=object(), extra={}))  # type: ignore[arg-type]
    assert TemporalExecutor().task_queue == DEFAULT_TASK_QUEUE
    with pytest.raises(InvalidArgumentError, match="client"):
        TemporalExecutor("not a client")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="task_queue"):
        TemporalExecutor(task_queue="")


# -- connection failures ------------------------------------------------------------
async def test_unreachable_server_fails_fast_naming_the_address() -> None:
    address = f"127.0.0.1:{servers.free_port()}"  # nothing listens there
    started = time.monotonic()
    with pytest.raises(TemporalConnectionError, match=address) as info:
        await connect(address, timeout=1.0)
    assert time.monotonic() - started < 5
    assert "within 1s" in str(info.value)
    assert isinstance(info.value, ConnectionError)
    executor = TemporalExecutor(target_host=address, connect_timeout=0.5)
    with pytest.raises(TemporalConnectionError, match=address):
        async with executor:
            pass


async def test_missing_namespace_is_named(temporal_address: str) -> None:
    client = await connect(temporal_address, "no-such-namespace")
    with pytest.raises(TemporalConnectionError, match=r"'no-such-namespace'.*does not exist"):
        async with TemporalExecutor(client, task_queue=QUEUE):
            pass


# -- the store: Temporal history as the engine's history ----------------------------
async def signal_then_sleep(ctx: WorkflowContext, n: int) -> dict[str, Any]:
    doubled = await ctx.execute_activity(wf.double, n)
    approval = await ctx.receive_signal("approve").receive()
    await ctx.sleep(0.05)
    return {"doubled": doubled, "approval": approval}


async def test_store_maps_history_and_visibility(temporal_client: Client) -> None:
    store = TemporalStore(temporal_client, task_queue=QUEUE)
    recorder = HookRecorder()
    async with TemporalExecutor(
        temporal_client,
        task_queue=QUEUE,
        workflows=[signal_then_sleep, wf.retry_exhausted],
        activities=[wf.double, wf.always_fail],
        hooks=recorder.hooks(),
    ) as ex:
        done = await ex.execute(signal_then_sleep, WorkflowOptions(id="mapped", input=4))
        await recorder.wait_for("activity_complete", "mapped")
        await ex.signal("mapped", Signal("approve", {"by": "ann"}, sender_id="ann"))
        assert await done.result(timeout=WAIT) == {"doubled": 8, "approval": {"by": "ann"}}
        failed = await ex.execute(wf.retry_exhausted, WorkflowOptions(id="broken", input=3))
        with pytest.raises(Exception, match="boom 3"):
            await failed.result(timeout=WAIT)
        await ex.execute(signal_then_sleep, WorkflowOptions(id="waiting", input=1, timeout=600))
        await recorder.wait_for("activity_complete", "waiting")

        state = await store.load("mapped")
        assert state is not None
        assert state.run_id == done.run_id
        assert state.workflow_type == "signal_then_sleep"
        assert state.status is WorkflowStatus.COMPLETED
        assert state.input == 4 and state.result == {"doubled": 8, "approval": {"by": "ann"}}
        assert _names(state) == [
            "workflow_started",
            "activity_started",
            "activity_completed",
            "signal_received",
            "timer_fired",
            "workflow_completed",
        ]
        sig = state.history[3]
        assert (sig.signal_name, sig.signal_payload, sig.sender_id) == (
            "approve",
            {"by": "ann"},
            "ann",
        )
        act = state.history[1]
        assert (act.activity_name, act.step, act.attempt, act.input) == ("double", 1, 1, 4)
        timer = state.history[4]
        assert timer.step == 2 and timer.duration == pytest.approx(0.05)
        assert [e.id for e in state.history] == [1, 2, 3, 4, 5, 6]
        assert state.created_at <= state.updated_at

        broken = await store.load("broken")
        assert broken is not None and broken.status is WorkflowStatus.FAILED
        assert broken.error is not None and "3 attempts" in broken.error
        kinds = _names(broken)
        assert kinds.count("activity_failed") == 3 and kinds.count("timer_fired") == 2
        retries = [e for e in broken.history if e.type is EventType.TIMER_FIRED]
        assert [(e.step, e.attempt, e.activity_name) for e in retries] == [
            (1, 1, "always_fail"),
            (1, 2, "always_fail"),
        ]

        running = await store.list(WorkflowFilter(status=WorkflowStatus.RUNNING))
        assert [s.workflow_id for s in running] == ["waiting"]
        assert running[0].timeout == 600
        assert {s.workflow_id for s in await store.list(WorkflowFilter())} == {
            "mapped",
            "broken",
            "waiting",
        }
        assert len(await store.list(WorkflowFilter(limit=2))) == 2
        newest = await store.list(WorkflowFilter())
        assert [s.created_at for s in newest] == sorted(
            (s.created_at for s in newest), reverse=True
        )
        assert await store.load("never-started") is None
        # save and delete are no-ops: Temporal owns the state
        await store.delete("mapped")
        await store.save(state.model_copy(update={"status": WorkflowStatus.FAILED}))
        again = await store.load("mapped")
        assert again is not None and again.status is WorkflowStatus.COMPLETED
        await ex.cancel("waiting")


# -- Temporal clients interoperate ----------------------------------------------------
async def query_and_wait(ctx: WorkflowContext, tag: str) -> str:
    seen: list[Any] = []
    ctx.set_query_handler("seen", lambda: list(seen))
    async for payload in ctx.receive_signal("item"):
        seen.append(payload)
        if payload == "stop":
            break
    return f"{tag}:{len(seen)}"


async def test_plain_temporal_signal_query_and_cancel(temporal_client: Client) -> None:
    async with TemporalExecutor(
        temporal_client,
        task_queue=QUEUE,
        workflows=[query_and_wait, wf.cancel_with_cleanup],
        activities=[wf.hang, wf.cleanup],
    ) as ex:
        handle = await ex.execute(query_and_wait, WorkflowOptions(id="interop", input="t"))
        native = temporal_client.get_workflow_handle("interop")
        await native.signal("item", "a")  # a Temporal signal is an engine signal
        await ex.signal("interop", Signal("item", "b"))
        assert await _eventually(lambda: native.query("seen"), ["a", "b"])
        assert await ex.query("interop", "seen") == ["a", "b"]
        assert await native.query("status") == "running"
        await native.signal("item", "stop")
        assert await handle.result(timeout=WAIT) == "t:3"
        assert await native.result() == "t:3"  # the result is the workflow's own, in Temporal

        cancelled = await ex.execute(wf.cancel_with_cleanup, WorkflowOptions(id="nc", input="z"))
        await _eventually(lambda: _scheduled(temporal_client, "nc"), True)
        await temporal_client.get_workflow_handle("nc").cancel()  # a Temporal cancel
        with pytest.raises(Exception, match="canceled"):
            await cancelled.result(timeout=WAIT)
        description = await temporal_client.get_workflow_handle("nc").describe()
        assert description.status is WorkflowExecutionStatus.CANCELED
        state = await ex.describe("nc")
    assert [e.activity_name for e in state.history if e.type is EventType.ACTIVITY_COMPLETED] == [
        "cleanup"
    ]


async def _scheduled(client: Client, workflow_id: str) -> bool:
    handle = client.get_workflow_handle(workflow_id)
    events = [e async for e in handle.fetch_history_events()]
    return any(e.HasField("activity_task_scheduled_event_attributes") for e in events)


async def _eventually(check: Any, expected: Any, timeout: float = WAIT) -> bool:
    """Poll ``check()`` until it returns ``expected`` (queries cannot be awaited for a change)."""
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value == expected:
            return True
        assert time.monotonic() < deadline, f"still {value!r}, want {expected!r}"
        await asyncio.sleep(0.05)


async def test_each_attempt_is_a_temporal_activity_and_backoffs_are_timers(
    temporal_client: Client,
) -> None:
    async with TemporalExecutor(
        temporal_client,
        task_queue=QUEUE,
        workflows=[wf.retry_until_success],
        activities=[wf.succeed_on_third],
    ) as ex:
        handle = await ex.execute(wf.retry_until_success, WorkflowOptions(id="att", input=2))
        assert await handle.result(timeout=WAIT) == {"value": 2, "attempt": 3}
    events = [e async for e in temporal_client.get_workflow_handle("att").fetch_history_events()]
    scheduled = [
        e.activity_task_scheduled_event_attributes
        for e in events
        if e.HasField("activity_task_scheduled_event_attributes")
    ]
    assert [s.activity_id for s in scheduled] == ["1.1", "1.2", "1.3"]
    assert {s.activity_type.name for s in scheduled} == {"succeed_on_third"}
    assert all(s.retry_policy.maximum_attempts == 1 for s in scheduled)
    timers = [e for e in events if e.HasField("timer_started_event_attributes")]
    assert len(timers) == 2
    summary = temporal_client.data_converter.payload_converter.from_payload(
        timers[0].user_metadata.summary
    )
    assert summary == "retry backoff of 'succeed_on_third' after attempt 1 (step 1)"


# -- a stopping worker does not cost an attempt ------------------------------------------
STARTED: list[int] = []


async def slow_first(tag: str) -> str:
    STARTED.append(activity.info().attempt)
    await asyncio.sleep(60)
    return "slow"


async def fast_second(tag: str) -> str:
    STARTED.append(activity.info().attempt)
    return f"fast {tag}"


async def one_step(ctx: WorkflowContext, tag: str) -> str:
    result: str = await ctx.execute_activity(
        slow_first, tag, retry=RetryPolicy(max_attempts=1), name="slow_step"
    )
    return result


async def test_attempt_cut_by_a_stopping_worker_runs_again(temporal_client: Client) -> None:
    STARTED.clear()
    recorder = HookRecorder()
    async with TemporalExecutor(
        temporal_client,
        task_queue=QUEUE,
        workflows=[one_step],
        activities={"slow_step": slow_first},
        hooks=recorder.hooks(),
        workflow_task_timeout=2,
    ) as ex:
        await ex.execute(one_step, WorkflowOptions(id="cut", input="x"))
        await recorder.wait_for("activity_start", "cut")
        await _eventually(lambda: _started(), True)
    # the next executor's activity of that name finishes the same attempt
    async with TemporalExecutor(
        temporal_client,
        task_queue=QUEUE,
        workflows=[one_step],
        activities={"slow_step": fast_second},
    ) as ex:
        assert await ex.get_handle("cut").result(timeout=WAIT) == "fast x"
        state = await ex.describe("cut")
    assert STARTED == [1, 1]
    assert _names(state) == [
        "workflow_started",
        "activity_started",
        "activity_completed",
        "workflow_completed",
    ]
    assert state.history[2].attempt == 1


async def _started() -> bool:
    return bool(STARTED)


# -- child workflows are Temporal's own ---------------------------------------------------
async def test_each_child_attempt_is_a_temporal_child_workflow(temporal_client: Client) -> None:
    key = "temporal-child-attempts"
    wf.CHILD_RUNS.pop(key, None)
    async with TemporalExecutor(
        temporal_client,
        task_queue=QUEUE,
        workflows=[wf.parent_retries_child, wf.fails_twice],
        activities=[wf.count_run],
    ) as ex:
        handle = await ex.execute(wf.parent_retries_child, WorkflowOptions(id="kids", input=key))
        assert await handle.result(timeout=WAIT) == 3
        child = await ex.describe(f"{key}-child")
    events = [e async for e in temporal_client.get_workflow_handle("kids").fetch_history_events()]
    starts = [
        e.start_child_workflow_execution_initiated_event_attributes
        for e in events
        if e.HasField("start_child_workflow_execution_initiated_event_attributes")
    ]
    assert [s.workflow_id for s in starts] == [f"{key}-child"] * 3
    assert {s.workflow_type.name for s in starts} == {"fails_twice"}
    assert {s.task_queue.name for s in starts} == {QUEUE}
    assert all(s.retry_policy.maximum_attempts == 1 for s in starts)
    assert {s.parent_close_policy for s in starts} == {3}  # REQUEST_CANCEL
    failed = [e for e in events if e.HasField("child_workflow_execution_failed_event_attributes")]
    assert len(failed) == 2
    timers = [e for e in events if e.HasField("timer_started_event_attributes")]
    assert len(timers) == 2  # the backoffs between attempts, armed by the parent
    # the last run of the child: its parent, and the parent's step and attempt
    first = child.history[0]
    assert (first.parent_workflow_id, first.step, first.attempt) == ("kids", 1, 3)
    assert first.parent_close_policy == "cancel"


async def parent_of_taken(ctx: WorkflowContext, child_id: str) -> str:
    try:
        await ctx.execute_child(wf.child_waits_for_go, 1, id=child_id)
    except ChildWorkflowError as err:
        # rebuilt from history as an ApplicationError carrying the original type
        cause = err.__cause__
        return cause.type if isinstance(cause, ApplicationError) else repr(cause)
    return "started"


async def test_a_child_whose_id_is_running_fails_to_start(temporal_client: Client) -> None:
    async with TemporalExecutor(
        temporal_client,
        task_queue=QUEUE,
        workflows=[parent_of_taken, wf.child_waits_for_go],
        activities=[wf.ready],
    ) as ex:
        await ex.execute(wf.child_waits_for_go, WorkflowOptions(id="taken", input=1))
        handle = await ex.execute(parent_of_taken, WorkflowOptions(id="taker", input="taken"))
        assert (await handle.result(timeout=WAIT)).endswith("WorkflowAlreadyRunningError")
        parent = await ex.describe("taker")
        await ex.cancel("taken")
    assert _names(parent) == [
        "workflow_started",
        "child_workflow_started",
        "child_workflow_failed",
        "workflow_completed",
    ]
    failure = parent.history[2].failure
    assert failure is not None and failure.type.endswith("WorkflowAlreadyRunningError")


async def tagged(ctx: WorkflowContext, n: int) -> Any:
    if n < 0:
        ctx.upsert_search_attributes({"stage": "x"})
    if n > 0:
        ctx.continue_as_new(n - 1)
    return ctx.search_attributes()


async def test_start_attributes_and_memo_are_recorded_and_listed(
    temporal_client: Client,
) -> None:
    async with TemporalExecutor(temporal_client, task_queue=QUEUE, workflows=[tagged]) as ex:
        options = WorkflowOptions(
            id="tagged", input=1, search_attributes={"customer": "c1"}, memo={"note": "n"}
        )
        handle = await ex.execute(tagged, options)
        # carried to the run it continued as
        assert await handle.result(timeout=WAIT) == {"customer": "c1"}
        await ex.execute(tagged, WorkflowOptions(id="other", input=0))
        page = await ex.list(WorkflowQuery(search_attributes={"customer": "c1"}))
        (found,) = page.items
        assert (found.workflow_id, found.memo) == ("tagged", {"note": "n"})
        assert found.status is WorkflowStatus.COMPLETED
        refused = await ex.execute(tagged, WorkflowOptions(id="upsert", input=-1))
        with pytest.raises(
            Exception, match="upsert_search_attributes is not supported on the Temporal"
        ):
            await refused.result(timeout=WAIT)


async def test_pause_is_refused_naming_the_feature(temporal_client: Client) -> None:
    async with TemporalExecutor(temporal_client, task_queue=QUEUE, workflows=[tagged]) as ex:
        with pytest.raises(WorkflowError, match="pause and resume are not supported on the"):
            await ex.pause("any")
        with pytest.raises(WorkflowError, match="not supported on the Temporal provider"):
            await ex.resume("any")
        with pytest.raises(WorkflowError, match="reset is not supported on the Temporal"):
            await ex.reset("any", 3)
