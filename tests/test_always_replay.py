"""Always-replay mode catches workflow code that is not deterministic, at the first step."""

from __future__ import annotations

import itertools

import pytest

from app.workflow import DefaultExecutor, NonDeterminismError, WorkflowContext, WorkflowOptions
from providers.inmemory import InMemoryStore

_calls = itertools.count()


def double(x: int) -> int:
    return 2 * x


async def flips_a_coin(ctx: WorkflowContext, _: None) -> int:
    # a process-global counter is not replay-safe: each replay takes the other branch
    if next(_calls) % 2 == 0:
        return int(await ctx.execute_activity(double, 1))
    await ctx.sleep(0.01)
    return 0


async def test_always_replay_parks_non_deterministic_code() -> None:
    async with DefaultExecutor(store=InMemoryStore(), always_replay=True) as ex:
        handle = await ex.execute(flips_a_coin, WorkflowOptions("coin"))
        with pytest.raises(NonDeterminismError) as info:
            await handle.result(timeout=10)
        assert info.value.event_id == 1
        assert "sleep timer at step 1" in str(info.value)
        assert "activity 'double' at step 1" in str(info.value)
        assert await ex.query("coin", "status") == "running"


async def test_without_always_replay_the_same_code_runs() -> None:
    async with DefaultExecutor(store=InMemoryStore()) as ex:
        handle = await ex.execute(flips_a_coin, WorkflowOptions("coin2"))
        assert await handle.result(timeout=10) in (0, 2)
