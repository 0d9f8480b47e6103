"""Workflows and activities of the conformance suite.

One importable module, so that a runtime whose worker runs in another
process can load the same code by name (``workflows`` and ``activities``).
Activities keep no in-process counters: behaviour that depends on the try
comes from ``activity.info().attempt``.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from app.workflow import (
    ActivityError,
    ChildWorkflowError,
    InvalidArgumentError,
    NonRetryableError,
    PayloadError,
    RetryPolicy,
    WorkflowContext,
    activity,
)

FAST_RETRY = RetryPolicy(max_attempts=3, initial_interval=0.01, max_interval=0.05)


@dataclass
class Order:
    order_id: str
    amount: float
    items: list[str]


class Receipt(BaseModel):
    order_id: str
    total: float
    lines: int


# -- activities -----------------------------------------------------------------
def double(x: int) -> int:
    return x * 2


async def async_double(x: int) -> int:
    await asyncio.sleep(0)
    return x * 2


def succeed_on_third(x: int) -> dict[str, int]:
    attempt = activity.info().attempt
    if attempt < 3:
        raise ConnectionError(f"transient failure on attempt {attempt}")
    return {"value": x, "attempt": attempt}


def always_fail(x: int) -> None:
    raise ValueError(f"boom {x}")


def fail_for_good(x: int) -> None:
    raise NonRetryableError(f"card {x} declined")


async def hang(seconds: float) -> str:
    await asyncio.sleep(seconds)
    return "finished"


def cleanup(tag: str) -> str:
    return f"cleaned {tag}"


def ready(tag: str) -> str:
    return tag


def charge(order: Order) -> Receipt:
    return Receipt(order_id=order.order_id, total=order.amount, lines=len(order.items))


def describe() -> dict[str, Any]:
    info = activity.info()
    return {
        "workflow_id": info.workflow_id,
        "activity_id": info.activity_id,
        "attempt": info.attempt,
        "name": info.activity_name,
    }


def not_serializable(x: int) -> object:
    return object()


def two_inputs(a: int, b: int) -> int:
    return a + b


# -- workflows ------------------------------------------------------------------
async def sequential(ctx: WorkflowContext, n: int) -> list[int]:
    a = await ctx.execute_activity(double, n)
    b = await ctx.execute_activity(async_double, a)
    c = await ctx.execute_activity(double, b)
    return [a, b, c]


async def retry_until_success(ctx: WorkflowContext, x: int) -> dict[str, int]:
    result: dict[str, int] = await ctx.execute_activity(succeed_on_third, x, retry=FAST_RETRY)
    return result


async def retry_exhausted(ctx: WorkflowContext, x: int) -> None:
    await ctx.execute_activity(always_fail, x, retry=FAST_RETRY)


async def non_retryable(ctx: WorkflowContext, x: int) -> None:
    await ctx.execute_activity(fail_for_good, x, retry=FAST_RETRY)


async def activity_timeout(ctx: WorkflowContext, seconds: float) -> str:
    policy = RetryPolicy(max_attempts=2, initial_interval=0.01, max_interval=0.01)
    result: str = await ctx.execute_activity(hang, 30.0, retry=policy, timeout=seconds)
    return result


async def fan_out(ctx: WorkflowContext, n: int) -> list[int]:
    return list(await asyncio.gather(*(ctx.execute_activity(double, i) for i in range(n))))


async def signals_in_order(ctx: WorkflowContext, count: int) -> list[Any]:
    await ctx.receive_signal("go").receive()
    items = ctx.receive_signal("item")
    return [await items.receive() for _ in range(count)]


async def wait_after_ready(ctx: WorkflowContext, tag: str) -> Any:
    await ctx.execute_activity(ready, tag)
    return await ctx.receive_signal("go").receive()


async def receive_with_timeout(ctx: WorkflowContext, seconds: float) -> str:
    try:
        payload = await ctx.receive_signal("reply").receive(timeout=seconds)
    except TimeoutError:
        return "timed out"
    return f"got {payload}"


async def iterate_signals(ctx: WorkflowContext, count: int) -> list[Any]:
    seen: list[Any] = []
    async for payload in ctx.receive_signal("item"):
        seen.append(payload)
        if len(seen) == count:
            break
    return seen


async def sleeper(ctx: WorkflowContext, seconds: float) -> str:
    before = ctx.now()
    await ctx.sleep(seconds)
    return f"{(ctx.now() - before).total_seconds():.3f}"


async def cancel_with_cleanup(ctx: WorkflowContext, tag: str) -> str:
    try:
        await ctx.execute_activity(hang, 30.0)
        return "not canceled"
    finally:
        await ctx.execute_activity(cleanup, tag)


async def with_query(ctx: WorkflowContext, steps: int) -> int:
    progress = {"done": 0}
    ctx.set_query_handler("progress", lambda: dict(progress))
    for _ in range(steps):
        await ctx.execute_activity(double, 1)
        progress["done"] += 1
    await ctx.receive_signal("finish").receive()
    return progress["done"]


async def long_chain(ctx: WorkflowContext, n: int) -> int:
    total = 0
    for i in range(n):
        total += await ctx.execute_activity(double, i)
    return total


async def typed_order(ctx: WorkflowContext, order: Order) -> Receipt:
    assert isinstance(order, Order)
    receipt: Receipt = await ctx.execute_activity(charge, order)
    assert isinstance(receipt, Receipt)
    return receipt


async def activity_info(ctx: WorkflowContext) -> dict[str, Any]:
    info: dict[str, Any] = await ctx.execute_activity(describe)
    return info


async def replay_safe_values(ctx: WorkflowContext) -> dict[str, Any]:
    await ctx.execute_activity(double, 1)
    values = {
        "now": ctx.now().isoformat(),
        "random": ctx.random().random(),
        "uuid": str(ctx.uuid4()),
        "workflow_id": ctx.workflow_id,
        "run_id": ctx.run_id,
    }
    # answered after the end by replaying the history: shows what a replay computes
    ctx.set_query_handler("values", lambda: values)
    return values


async def failing_workflow(ctx: WorkflowContext, message: str) -> None:
    raise RuntimeError(message)


async def catches_activity_error(ctx: WorkflowContext, x: int) -> str:
    try:
        await ctx.execute_activity(fail_for_good, x)
    except ActivityError as err:
        return f"{err.activity_name}:{err.attempts}:{type(err.__cause__).__name__}"
    return "no error"


async def bad_activity_result(ctx: WorkflowContext) -> None:
    await ctx.execute_activity(not_serializable, 1)


async def sleep_forever(ctx: WorkflowContext) -> None:
    await ctx.sleep(3600)


async def calls_two_input_activity(ctx: WorkflowContext) -> int:
    return int(await ctx.execute_activity(two_inputs, 1))


async def too_many_inputs(ctx: WorkflowContext, a: int, b: int) -> int:
    return a + b


workflows = [
    sequential,
    retry_until_success,
    retry_exhausted,
    non_retryable,
    activity_timeout,
    fan_out,
    signals_in_order,
    wait_after_ready,
    receive_with_timeout,
    iterate_signals,
    sleeper,
    cancel_with_cleanup,
    with_query,
    long_chain,
    typed_order,
    activity_info,
    replay_safe_values,
    failing_workflow,
    catches_activity_error,
    bad_activity_result,
    sleep_forever,
    calls_two_input_activity,
]

activities = [
    double,
    async_double,
    succeed_on_third,
    always_fail,
    fail_for_good,
    hang,
    cleanup,
    ready,
    charge,
    describe,
    not_serializable,
    two_inputs,
]


async def swallow_cancel(ctx: WorkflowContext) -> str:
    try:
        await ctx.sleep(3600)
    except asyncio.CancelledError:
        return "cleaned up and finished"
    return "slept"


async def retry_forever(ctx: WorkflowContext) -> None:
    slow = RetryPolicy(max_attempts=10, initial_interval=30, max_interval=60)
    await ctx.execute_activity(always_fail, 1, retry=slow)


async def timeout_during_activity(ctx: WorkflowContext) -> str:
    result: str = await ctx.execute_activity(hang, 30.0)
    return result


workflows += [swallow_cancel, retry_forever, timeout_during_activity]


def check_amount(amount: int) -> None:
    if amount < 0:
        raise ValueError(f"amount must be zero or more, got {amount}")


async def with_updates(ctx: WorkflowContext, start: int) -> int:
    total = {"value": start}

    async def add(amount: int) -> int:
        doubled: int = await ctx.execute_activity(double, amount)
        total["value"] += doubled
        return total["value"]

    async def fail(message: str) -> None:
        raise ValueError(message)

    async def hold(tag: str) -> Any:
        await ctx.execute_activity(ready, tag)
        return await ctx.receive_signal("release").receive()

    ctx.set_update_handler("add", add, validator=check_amount)
    ctx.set_update_handler("fail", fail)
    ctx.set_update_handler("hold", hold)
    ctx.set_update_handler("peek", lambda: total["value"])
    await ctx.receive_signal("finish").receive()
    return total["value"]


workflows += [with_updates]


async def counter(ctx: WorkflowContext, state: dict[str, int]) -> dict[str, int]:
    """Sums ``add`` signals, continuing as new after every ``every`` of them."""
    total, count = state["total"], state["count"]
    add = ctx.receive_signal("add", int)
    ctx.set_query_handler("run_number", lambda: state["runs"])
    if state.get("gate"):  # wait for "go" first: the adds sent before it queue up
        await ctx.receive_signal("go").receive()
        state = {**state, "gate": 0}
    for _ in range(state["every"]):
        total += await add.receive()
        count += 1
        if count == state["target"]:
            return {"total": total, "count": count, "runs": state["runs"]}
    ctx.continue_as_new({**state, "total": total, "count": count, "runs": state["runs"] + 1})


async def info_probe(ctx: WorkflowContext, continued: bool) -> dict[str, Any]:
    """Reports ``ctx.info()`` after each of two signals; continues as new once."""
    seen = []
    for _ in range(2):
        await ctx.receive_signal("tick").receive()
        info = ctx.info()
        seen.append([info.history_length, info.should_continue_as_new])
    if not continued:
        ctx.continue_as_new(True)
    info = ctx.info()
    return {
        "seen": seen,
        "previous": len(info.previous_run_ids),
        "run_id": info.run_id,
        "workflow_id": info.workflow_id,
    }


async def bad_continue_as_new(ctx: WorkflowContext) -> str:
    try:
        ctx.continue_as_new(object())
    except PayloadError as err:
        return f"rejected: {type(err).__name__}"
    return "continued"


workflows += [counter, info_probe, bad_continue_as_new]


# -- child workflows ------------------------------------------------------------
CHILD_RUNS: dict[str, int] = {}
"""How many times ``count_run`` ran per key: a child's retries in this process."""


def count_run(key: str) -> int:
    CHILD_RUNS[key] = CHILD_RUNS.get(key, 0) + 1
    return CHILD_RUNS[key]


async def child_double(ctx: WorkflowContext, x: int) -> int:
    doubled: int = await ctx.execute_activity(double, x)
    return doubled


async def parent_fans_out(ctx: WorkflowContext, n: int) -> int:
    """Runs ``n`` children at once, each doubling its input with an activity."""
    results = await asyncio.gather(
        *(ctx.execute_child(child_double, i, id=f"{ctx.workflow_id}-c{i}") for i in range(n))
    )
    return sum(results)


async def parent_of_failing(ctx: WorkflowContext, message: str) -> str:
    try:
        await ctx.execute_child(failing_workflow, message, id=f"{ctx.workflow_id}-child")
    except ChildWorkflowError as err:
        return f"{err.workflow_id} after {err.attempts}: {err.__cause__}"
    return "no error"


async def fails_twice(ctx: WorkflowContext, key: str) -> int:
    run: int = await ctx.execute_activity(count_run, key)
    if run < 3:
        raise ValueError(f"run {run} of {key} fails")
    return run


async def parent_retries_child(ctx: WorkflowContext, key: str) -> int:
    policy = RetryPolicy(max_attempts=3, initial_interval=0.01, max_interval=0.05)
    result: int = await ctx.execute_child(fails_twice, key, id=f"{key}-child", retry=policy)
    return result


async def child_waits_for_go(ctx: WorkflowContext, start: int) -> int:
    await ctx.execute_activity(ready, f"child {ctx.workflow_id}")
    got: int = await ctx.receive_signal("go").receive()
    return start + got


async def parent_signals_child(ctx: WorkflowContext, amount: int) -> int:
    child = await ctx.start_child(child_waits_for_go, 100, id=f"{ctx.workflow_id}-child")
    await child.signal("go", amount)
    result: int = await child.result()
    return result


async def parent_awaits_child(ctx: WorkflowContext, start: int) -> int:
    """Awaits a child that waits for its "go" signal from the test."""
    result: int = await ctx.execute_child(child_waits_for_go, start, id=f"{ctx.workflow_id}-child")
    return result


async def parent_leaves_child(ctx: WorkflowContext, policy: str) -> str:
    """Starts a child that sleeps for an hour and ends at once, under ``policy``."""
    child = await ctx.start_child(
        cancel_with_cleanup, "child", id=f"{ctx.workflow_id}-child", parent_close_policy=policy
    )
    await ctx.execute_activity(ready, child.id)  # the child is started by now
    return child.id


async def parent_with_child_timeout(ctx: WorkflowContext) -> str:
    try:
        await ctx.execute_child(sleeper, 30.0, id=f"{ctx.workflow_id}-child", timeout=0.3)
    except ChildWorkflowError as err:
        return f"{type(err.__cause__).__name__}"
    return "no timeout"


async def bad_children(ctx: WorkflowContext) -> list[str]:
    errors = []
    for call in (
        lambda: ctx.execute_child(double, 1),  # type: ignore[arg-type]
        lambda: ctx.execute_child(child_double, 1, id=ctx.workflow_id),
        lambda: ctx.execute_child(child_double, 1, parent_close_policy="explode"),  # type: ignore[arg-type]
        lambda: ctx.execute_child(child_double, 1, retry=3),  # type: ignore[arg-type]
        lambda: ctx.execute_child(child_double, 1, timeout=-1),
    ):
        try:
            await call()
        except InvalidArgumentError as err:
            errors.append(str(err))
    return errors


workflows += [
    child_double,
    parent_fans_out,
    parent_of_failing,
    fails_twice,
    parent_retries_child,
    child_waits_for_go,
    parent_signals_child,
    parent_awaits_child,
    parent_leaves_child,
    parent_with_child_timeout,
    bad_children,
]
activities += [count_run]


async def pausable(ctx: WorkflowContext, n: int) -> list[int]:
    """Doubles ``n`` signalled items, one activity each, then sleeps briefly."""
    items = ctx.receive_signal("item", int)
    done = []
    for _ in range(n):
        done.append(int(await ctx.execute_activity(double, await items.receive())))
    await ctx.sleep(0.3)
    return done


workflows += [pausable]


SHIP_BUG = {"on": True}
"""The deployed ``ship`` has a bug while this is on (a reset test turns it off)."""
SHIPPED = {"charge": 0}


def charge_once(order: int) -> int:
    SHIPPED["charge"] += 1
    return order * 10


def ship(amount: int) -> str:
    if SHIP_BUG["on"]:
        raise NonRetryableError("ship: the label printer code has a bug")
    return f"shipped {amount}"


async def charge_and_ship(ctx: WorkflowContext, n: int) -> str:
    amount = int(await ctx.execute_activity(charge_once, n))
    return str(await ctx.execute_activity(ship, amount))


workflows += [charge_and_ship]
activities += [charge_once, ship]


async def cancels_its_child(ctx: WorkflowContext, tag: str) -> str:
    """Starts a child that waits forever, cancels it, and reports how it ended."""
    child = await ctx.start_child(sleep_forever, None, id=f"{ctx.workflow_id}-kid")
    await ctx.sleep(0.05)
    await child.cancel()
    try:
        await child.result()
    except ChildWorkflowError as exc:
        return f"child ended: {type(exc.__cause__).__name__}"
    return "child completed"


workflows += [cancels_its_child]
