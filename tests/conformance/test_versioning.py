"""Versioning: ``ctx.patched`` / ``ctx.deprecate_patch`` across deploys, and the replayer."""

from __future__ import annotations

from typing import Any

import pytest

from app.testing import replay
from app.workflow import (
    EventType,
    InvalidArgumentError,
    NonDeterminismError,
    WorkflowContext,
    WorkflowOptions,
    WorkflowStatus,
)
from tests.conformance.conftest import WAIT, Recorder, Runtime, signal

RAN: list[str] = []


def old_greeting(name: str) -> str:
    RAN.append(f"old {name}")
    return f"hello {name}"


def new_greeting(name: str) -> str:
    RAN.append(f"new {name}")
    return f"Hello, {name}!"


async def greet_v1(ctx: WorkflowContext, name: str) -> str:
    text = await ctx.execute_activity(old_greeting, name)
    go = await ctx.receive_signal("go").receive()
    return f"{text} {go}"


async def greet_v2(ctx: WorkflowContext, name: str) -> str:
    if ctx.patched("polite-greeting"):
        text = await ctx.execute_activity(new_greeting, name)
    else:
        text = await ctx.execute_activity(old_greeting, name)
    assert ctx.patched("polite-greeting") == (text.startswith("Hello,"))  # one answer per run
    go = await ctx.receive_signal("go").receive()
    return f"{text} {go}"


async def greet_v3(ctx: WorkflowContext, name: str) -> str:
    ctx.deprecate_patch("polite-greeting")
    text = await ctx.execute_activity(new_greeting, name)
    go = await ctx.receive_signal("go").receive()
    return f"{text} {go}"


async def greet_unpatched(ctx: WorkflowContext, name: str) -> str:
    text = await ctx.execute_activity(new_greeting, name)  # changed without a patch
    go = await ctx.receive_signal("go").receive()
    return f"{text} {go}"


ACTIVITIES = [old_greeting, new_greeting]


def deploy(fn: Any) -> dict[str, Any]:
    return {"workflows": {"greet": fn}, "activities": ACTIVITIES}


async def test_patched_keeps_old_runs_on_the_old_branch(restartable: Runtime) -> None:
    RAN.clear()
    recorder = Recorder()
    async with restartable.open(hooks=recorder.hooks(), **deploy(greet_v1)) as ex:
        await ex.execute(greet_v1, WorkflowOptions(id="old-run", input="ada"))
        await recorder.wait_for("activity_complete", "old-run")
        v1_history = (await ex.describe("old-run")).history

    # the replayer, before deploying: the unpatched change diverges, the patched one not
    broken = replay(greet_unpatched, v1_history)
    assert not broken.ok
    assert broken.event_id == 2
    assert "old_greeting" in broken.reason and "new_greeting" in broken.reason
    with pytest.raises(NonDeterminismError, match="event 2"):
        broken.raise_if_diverged()
    assert replay(greet_v2, v1_history).ok

    recorder = Recorder()
    async with restartable.open(hooks=recorder.hooks(), **deploy(greet_v2)) as ex:
        await ex.execute(greet_v2, WorkflowOptions(id="new-run", input="bob"))
        await recorder.wait_for("activity_complete", "new-run")
        await signal(ex, "old-run", "go", "v2")
        assert await ex.get_handle("old-run").result(timeout=WAIT) == "hello ada v2"
        old_state = await ex.describe("old-run")
        assert old_state.status is WorkflowStatus.COMPLETED and old_state.error is None
        new_history = (await ex.describe("new-run")).history
    assert RAN == ["old ada", "new bob"]
    assert EventType.MARKER_RECORDED not in [e.type for e in old_state.history]
    assert replay(greet_v2, new_history).ok
    assert replay(greet_v3, new_history).ok
    # v1 code cannot take over a run that took the new branch
    assert replay(greet_v1, new_history).event_id is not None

    # every run from before the patch has ended: v3 deprecates it
    async with restartable.open(**deploy(greet_v3)) as ex:
        await signal(ex, "new-run", "go", "v3")
        assert await ex.get_handle("new-run").result(timeout=WAIT) == "Hello, bob! v3"
        fresh = await ex.execute(greet_v3, WorkflowOptions(id="v3-run", input="cy"))
        await signal(ex, "v3-run", "go", "now")
        assert await fresh.result(timeout=WAIT) == "Hello, cy! now"
        for workflow_id in ("new-run", "v3-run"):
            state = await ex.describe(workflow_id)
            assert state.error is None, state.error
            assert replay(greet_v3, state).ok
    assert RAN == ["old ada", "new bob", "new cy"]


async def test_new_runs_record_a_marker(runtime: Runtime) -> None:
    async with runtime.open(**deploy(greet_v2)) as ex:
        await ex.execute(greet_v2, WorkflowOptions(id="marked", input="di"))
        await signal(ex, "marked", "go", "!")
        assert await ex.get_handle("marked").result(timeout=WAIT) == "Hello, di! !"
        state = await ex.describe("marked")
    markers = [e for e in state.history if e.type is EventType.MARKER_RECORDED]
    assert [m.change_id for m in markers] == ["polite-greeting"]
    # the marker comes before the activity the new branch runs
    kinds = [e.type for e in state.history]
    assert kinds.index(EventType.MARKER_RECORDED) < kinds.index(EventType.ACTIVITY_STARTED)


async def bad_patches(ctx: WorkflowContext) -> list[str]:
    refused = []
    for change_id in ("", "  ", 7, None):
        try:
            ctx.patched(change_id)  # type: ignore[arg-type]  # the point of the test
        except InvalidArgumentError as err:
            refused.append(str(err))
        try:
            ctx.deprecate_patch(change_id)  # type: ignore[arg-type]
        except InvalidArgumentError as err:
            refused.append(str(err))
    return refused


async def test_an_invalid_change_id_is_refused_at_the_call(runtime: Runtime) -> None:
    async with runtime.open(workflows={"bad_patches": bad_patches}, activities=[]) as ex:
        handle = await ex.execute(bad_patches, WorkflowOptions(id="bad"))
        refused = await handle.result(timeout=WAIT)
    assert len(refused) == 8
    assert all("non-empty string" in message for message in refused)
