"""Activities that are bound methods of an object holding a client (a counter here)."""

from __future__ import annotations

from typing import Any

import pytest

from app.workflow import (
    DefaultExecutor,
    EventType,
    InvalidArgumentError,
    WorkflowContext,
    WorkflowOptions,
)
from tests.conformance.conftest import WAIT, Recorder, Runtime, signal


class Counter:
    """Stands for a client held by an object: its methods are the activities."""

    def __init__(self, start: int = 0) -> None:
        self.value = start
        self.calls: list[str] = []

    def add(self, amount: int) -> int:
        self.calls.append(f"add {amount}")
        self.value += amount
        return self.value

    async def read(self) -> int:
        self.calls.append("read")
        return self.value


COUNTER = Counter(100)


async def count_with_methods(ctx: WorkflowContext, amount: int) -> list[int]:
    added = await ctx.execute_activity(COUNTER.add, amount)
    go = await ctx.receive_signal("go").receive()
    read = await ctx.execute_activity(COUNTER.read)
    renamed = await ctx.execute_activity(COUNTER.add, go, name="counter-add")
    return [added, read, renamed]


def _setup() -> dict[str, Any]:
    return {
        "workflows": [count_with_methods],
        "activities": {
            "Counter.add": COUNTER.add,
            "Counter.read": COUNTER.read,
            "counter-add": COUNTER.add,
        },
    }


async def test_bound_methods_register_run_and_replay(restartable: Runtime) -> None:
    COUNTER.value, COUNTER.calls = 100, []
    recorder = Recorder()
    # two bound methods of one instance, listed plainly: each access makes a new
    # method object, which must not count as "two different activities"
    plain = {"workflows": [count_with_methods], "activities": [COUNTER.add, COUNTER.read]}
    named = _setup()
    async with restartable.open(hooks=recorder.hooks(), **plain) as ex:
        await ex.execute(count_with_methods, WorkflowOptions(id="methods", input=5))
        await recorder.wait_for("activity_complete", "methods")
    # a restart replays the recorded method call instead of running it again
    async with restartable.open(**named) as ex:
        await signal(ex, "methods", "go", 7)
        assert await ex.get_handle("methods").result(timeout=WAIT) == [105, 105, 112]
        state = await ex.describe("methods")
    names = [e.activity_name for e in state.history if e.type is EventType.ACTIVITY_COMPLETED]
    assert names == ["Counter.add", "Counter.read", "counter-add"]
    assert COUNTER.calls == ["add 5", "read", "add 7"]


def test_same_method_accessed_twice_registers_once() -> None:
    counter = Counter()
    executor = DefaultExecutor(activities=[counter.add, counter.add, counter.read])
    assert executor._activities.names() == ["Counter.add", "Counter.read"]


def test_two_objects_methods_under_one_name_are_ambiguous() -> None:
    first, second = Counter(), Counter()
    with pytest.raises(InvalidArgumentError, match=r"two different Counter objects.*'add'"):
        DefaultExecutor(activities=[first.add, second.add])
    # each under its own name is fine
    DefaultExecutor(activities={"first.add": first.add, "second.add": second.add})
