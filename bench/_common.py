"""What both benchmarks share: the workloads W1-W7, their sizes, metrics and output.

A workload gets an :data:`Opener` (hooks -> a started executor, stopped on
exit) and :class:`Sizes`; it returns its numbers by name. The runtime under
test is only in the opener, so the embedded and streaming runs do the same
work and their numbers compare.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import math
import statistics
import time
from collections.abc import Callable, Coroutine, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from app.workflow import Hooks, Signal, WorkflowContext, WorkflowOptions
from app.workflow._executor import DurableExecutor

# Generous bound on any single wait: only a hung runtime reaches it, never a slow one.
WAIT_S = 120.0
W3_WARMUP = 10  # round trips left out of W3's numbers (first-call costs, group settling)
W1_STEPS = 3  # activities per W1 workflow

Opener = Callable[[Hooks | None], AbstractAsyncContextManager[DurableExecutor]]
# Started just before W1's clients, stopped just after: extra numbers of the run.
Probe = Callable[[], Callable[[int], dict[str, float]]]


# -- workflows and activities ---------------------------------------------------
async def tiny(x: int) -> int:
    """The smallest activity: async, so it runs on the loop without a thread hop."""
    return x + 1


async def three_steps(ctx: WorkflowContext, x: int) -> int:
    a = await ctx.execute_activity(tiny, x)
    b = await ctx.execute_activity(tiny, a)
    c: int = await ctx.execute_activity(tiny, b)
    return c


async def fan_out(ctx: WorkflowContext, n: int) -> int:
    return sum(await asyncio.gather(*(ctx.execute_activity(tiny, i) for i in range(n))))


async def signal_echo(ctx: WorkflowContext, n: int) -> int:
    pings = ctx.receive_signal("ping", int)
    for _ in range(n):
        await ctx.execute_activity(tiny, await pings.receive())
    return n


async def chain(ctx: WorkflowContext, n: int) -> int:
    total = 0
    for i in range(n):
        total += await ctx.execute_activity(tiny, i)
    return total


async def nap(ctx: WorkflowContext, seconds: float) -> str:
    await ctx.sleep(seconds)
    return "rested"


async def tally(ctx: WorkflowContext, state: dict[str, int]) -> dict[str, int]:
    """Sums ``add`` signals (an activity each), continuing as new after ``every`` of them."""
    adds = ctx.receive_signal("add", int)
    total, count = state["total"], state["count"]
    for _ in range(state["every"]):
        total += await ctx.execute_activity(tiny, await adds.receive()) - 1
        count += 1
        if count == state["target"]:
            return {"total": total, "count": count, "runs": state["runs"]}
    ctx.continue_as_new({**state, "total": total, "count": count, "runs": state["runs"] + 1})


async def one_step(ctx: WorkflowContext, x: int) -> int:
    """A child of W7: one activity."""
    result: int = await ctx.execute_activity(tiny, x)
    return result


async def parent(ctx: WorkflowContext, n: int) -> int:
    """Fans out to ``n`` child workflows at once and sums their results."""
    children = (ctx.execute_child(one_step, i, id=f"{ctx.workflow_id}-{i}") for i in range(n))
    return sum(await asyncio.gather(*children))


WORKFLOWS: list[Callable[..., Any]] = [
    three_steps,
    fan_out,
    signal_echo,
    chain,
    nap,
    tally,
    one_step,
    parent,
]
ACTIVITIES = [tiny]


# -- sizes, metrics, targets ----------------------------------------------------
@dataclass(frozen=True)
class Sizes:
    w1_workflows: int
    w1_concurrency: int
    w2_workflows: int
    w2_fan_out: int
    w3_round_trips: int
    w4_steps: int
    w4_window: int
    w5_workflows: int
    w5_sleep_s: float
    rt_messages: int = 0  # the broker round trip (streaming only)
    w6_signals: int = 10_000
    w6_every: int = 500
    w6_window: int = 20  # signals the client keeps in flight
    w7_parents: int = 5
    w7_children: int = 100
    w4_long_steps: int = 10_000  # W4L (streaming): W4 at a length where growth would show
    w4_long_window: int = 1_000


@dataclass(frozen=True)
class Target:
    """A bound a result should meet on this machine."""

    bound: float
    at_least: bool  # True: the value must reach the bound; False: stay at or under it

    def met(self, value: float) -> bool:
        return value >= self.bound if self.at_least else value <= self.bound

    def __str__(self) -> str:
        return f"{'>=' if self.at_least else '<='} {self.bound:g}"


@dataclass(frozen=True)
class Metric:
    workload: str
    key: str
    label: str
    target: Target | None = None
    per_rt: bool = False  # a step time in ms: also shown as a multiple of a broker hop


def percentile(samples: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile: always one of the samples."""
    ordered = sorted(samples)
    return ordered[max(1, math.ceil(fraction * len(ordered))) - 1]


def ms(seconds: float) -> float:
    return seconds * 1000.0


def check(what: str, got: Any, expected: Any) -> None:
    """A wrong result means the runtime is broken, and its timings are meaningless."""
    if got != expected:
        raise RuntimeError(f"{what}: expected {expected!r}, got {got!r}")


def fmt(value: float) -> str:
    if math.isnan(value):
        return "n/a"
    if abs(value) >= 100:
        return f"{value:,.1f}"
    return f"{value:.2f}" if abs(value) >= 10 else f"{value:.3f}"


def align(rows: list[list[str]]) -> str:
    """Rows as a text table under a rule: text columns (the first two and the
    last) left-aligned, numbers right-aligned."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for n, row in enumerate(rows):
        cells = [
            cell.ljust(width) if i < 2 or i == len(row) - 1 else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
        if n == 0:
            lines.append("  ".join("-" * width for width in widths))
    return "\n".join(lines)


# -- workloads ------------------------------------------------------------------
async def run_w1(
    open_executor: Opener, sizes: Sizes, probe: Probe | None = None
) -> dict[str, float]:
    """Short workflows, at most ``w1_concurrency`` in flight."""
    latencies: list[float] = []
    todo = iter(range(sizes.w1_workflows))
    async with open_executor(None) as executor:

        async def client() -> None:
            # A fixed pool of clients bounds concurrency like a semaphore would,
            # without hundreds of parked tasks: the embedded engine scans every
            # live task of the process when a workflow ends.
            for i in todo:
                began = time.perf_counter()
                handle = await executor.execute(three_steps, WorkflowOptions(id=f"w1-{i}", input=i))
                result = await handle.result(timeout=WAIT_S)
                latencies.append(time.perf_counter() - began)
                check(f"w1-{i}", result, i + W1_STEPS)

        stop_probe = probe() if probe is not None else None
        began = time.perf_counter()
        async with asyncio.TaskGroup() as group:
            for _ in range(sizes.w1_concurrency):
                group.create_task(client())
        wall = time.perf_counter() - began
        extra = stop_probe(sizes.w1_workflows) if stop_probe is not None else {}
    p50 = percentile(latencies, 0.50)
    return {
        "rate": sizes.w1_workflows / wall,
        "p50": ms(p50),
        "p99": ms(percentile(latencies, 0.99)),
        "step": ms(p50) / W1_STEPS,
        **extra,
    }


async def run_w2(open_executor: Opener, sizes: Sizes) -> dict[str, float]:
    """Fan-out workflows, all started at once."""
    n = sizes.w2_fan_out
    expected = sum(range(1, n + 1))
    async with open_executor(None) as executor:

        async def one(i: int) -> None:
            handle = await executor.execute(fan_out, WorkflowOptions(id=f"w2-{i}", input=n))
            check(f"w2-{i}", await handle.result(timeout=WAIT_S), expected)

        began = time.perf_counter()
        async with asyncio.TaskGroup() as group:
            for i in range(sizes.w2_workflows):
                group.create_task(one(i))
        wall = time.perf_counter() - began
    return {
        "rate": sizes.w2_workflows / wall,
        "activities": sizes.w2_workflows * n / wall,
    }


async def run_w3(open_executor: Opener, sizes: Sizes) -> dict[str, float]:
    """Sequential signal round trips to one workflow, timed from the client."""
    loop = asyncio.get_running_loop()
    processed: asyncio.Future[None] = loop.create_future()

    def activity_done(workflow_id: str, result: Any) -> None:
        # The hook runs once the completion is recorded: the client now knows.
        if workflow_id == "w3" and not processed.done():
            processed.set_result(None)

    total = W3_WARMUP + sizes.w3_round_trips
    round_trips: list[float] = []
    signal_calls: list[float] = []
    async with open_executor(Hooks(on_activity_complete=activity_done)) as executor:
        handle = await executor.execute(signal_echo, WorkflowOptions(id="w3", input=total))
        for i in range(total):
            processed = loop.create_future()
            began = time.perf_counter()
            await executor.signal("w3", Signal(name="ping", payload=i))
            signaled = time.perf_counter()
            await asyncio.wait_for(processed, WAIT_S)
            done = time.perf_counter()
            if i >= W3_WARMUP:
                signal_calls.append(signaled - began)
                round_trips.append(done - began)
        check("w3", await handle.result(timeout=WAIT_S), total)
    return {
        "rt_p50": ms(percentile(round_trips, 0.50)),
        "rt_p99": ms(percentile(round_trips, 0.99)),
        "sig_p50": ms(percentile(signal_calls, 0.50)),
        "sig_p99": ms(percentile(signal_calls, 0.99)),
    }


async def run_w4(open_executor: Opener, sizes: Sizes) -> dict[str, float]:
    """One workflow of many sequential steps, timed by the client's hook."""
    stamps: list[float] = []
    n, window = sizes.w4_steps, sizes.w4_window
    all_heard = asyncio.Event()

    def activity_done(workflow_id: str, result: Any) -> None:
        if workflow_id == "w4":
            stamps.append(time.perf_counter())
            if len(stamps) >= n:
                all_heard.set()

    async with open_executor(Hooks(on_activity_complete=activity_done)) as executor:
        handle = await executor.execute(chain, WorkflowOptions(id="w4", input=n))
        check("w4", await handle.result(timeout=WAIT_S), sum(range(1, n + 1)))
        # A client's hooks may run behind the result (the streaming history tail).
        await asyncio.wait_for(all_heard.wait(), WAIT_S)
    check("w4 completed activities", len(stamps), n)
    # Steps between consecutive completions: the first one, which also pays
    # for starting the workflow, is left out.
    steps = [later - earlier for earlier, later in itertools.pairwise(stamps)]
    starts = list(range(0, max(len(steps) - window, 0) + 1, window))
    if starts[-1] + window < len(steps):
        starts.append(len(steps) - window)  # the last window ends with the last step
    means = [statistics.fmean(steps[i : i + window]) for i in starts]
    first, last = means[0], means[-1]
    return {
        "first": ms(first),
        "last": ms(last),
        "ratio": last / first,
        "fit": fitted_growth(means),
    }


def fitted_growth(means: Sequence[float]) -> float:
    """Last/first window of the least-squares line through all the window means.

    One window can hold a stray pause (a full garbage collection, another
    process on the CPU) that swings its mean by a tenth or more; a growth with
    history moves the whole line. (A median of single steps no longer works
    here: a client hears the steps of one fetch at once, so most gaps are ~0.)
    """
    if len(means) < 2:
        return 1.0
    slope, intercept = statistics.linear_regression(range(len(means)), means)
    return (intercept + slope * (len(means) - 1)) / intercept


async def run_w5(open_executor: Opener, sizes: Sizes) -> dict[str, float]:
    """Many workflows sleeping on durable timers, all started at once."""
    async with open_executor(None) as executor:
        began = time.perf_counter()
        handles = await asyncio.gather(
            *(
                executor.execute(nap, WorkflowOptions(id=f"w5-{i}", input=sizes.w5_sleep_s))
                for i in range(sizes.w5_workflows)
            )
        )
        started = time.perf_counter()
        results = await asyncio.gather(*(h.result(timeout=WAIT_S) for h in handles))
        wall = time.perf_counter() - began
    check("w5 results", set(results), {"rested"})
    return {"wall": wall, "started": started - began}


async def run_w6(open_executor: Opener, sizes: Sizes) -> dict[str, float]:
    """One workflow consuming many signals, continuing as new every ``w6_every``.

    The client keeps ``w6_window`` signals in flight (so the runs' histories
    stay short: a flood would be carried over from run to run). Each signal
    is one step: an activity whose completion the client's hook stamps. The
    numbers are the mean step of each segment (one run of the chain): flat
    when a run's cost does not grow with the chain.
    """
    n, every = sizes.w6_signals, sizes.w6_every
    stamps: list[float] = []
    room = asyncio.Semaphore(sizes.w6_window)
    all_heard = asyncio.Event()

    def activity_done(workflow_id: str, result: Any) -> None:
        if workflow_id == "w6":
            stamps.append(time.perf_counter())
            room.release()
            if len(stamps) >= n:
                all_heard.set()

    state = {"total": 0, "count": 0, "target": n, "every": every, "runs": 1}
    async with open_executor(Hooks(on_activity_complete=activity_done)) as executor:
        handle = await executor.execute(tally, WorkflowOptions(id="w6", input=state))
        for i in range(1, n + 1):
            await asyncio.wait_for(room.acquire(), WAIT_S)
            await executor.signal("w6", Signal("add", i))
        runs = -(-n // every)
        expected = {"total": n * (n + 1) // 2, "count": n, "runs": runs}
        check("w6", await handle.result(timeout=WAIT_S), expected)
        await asyncio.wait_for(all_heard.wait(), WAIT_S)
    check("w6 completed activities", len(stamps), n)
    steps = [later - earlier for earlier, later in itertools.pairwise(stamps)]
    # segment k: the steps of run k (the first step, which pays for the start, left out)
    segments = [steps[max(0, k * every - 1) : (k + 1) * every - 1] for k in range(runs)]
    means = [statistics.fmean(seg) for seg in segments if seg]
    # the step across a hand-off: the last activity of a run to the first of the next
    handoffs = [steps[k * every - 1] for k in range(1, runs)]
    return {
        "first": ms(means[0]),
        "last": ms(means[-1]),
        "ratio": means[-1] / means[0],
        "spread": max(means) / min(means),
        "handoff": ms(statistics.fmean(handoffs)) if handoffs else math.nan,
        # every segment's mean step (ms), printed with the run's numbers
        **{f"seg{k + 1}": ms(mean) for k, mean in enumerate(means)},
    }


async def run_w7(open_executor: Opener, sizes: Sizes) -> dict[str, float]:
    """Parents fanning out to ``w7_children`` child workflows each, one parent at a time.

    Each parent's wall time runs from its start to its result: the children's
    starts, their activities and their ends recorded back in the parent.
    """
    n = sizes.w7_children
    walls: list[float] = []
    async with open_executor(None) as executor:
        for k in range(sizes.w7_parents):
            began = time.perf_counter()
            handle = await executor.execute(parent, WorkflowOptions(id=f"w7-{k}", input=n))
            check("w7", await handle.result(timeout=WAIT_S), sum(i + 1 for i in range(n)))
            walls.append(time.perf_counter() - began)
    best = min(walls)
    return {"wall": ms(statistics.median(walls)), "best": ms(best), "children": n / best}


Run = Callable[[Opener, Sizes], Coroutine[Any, Any, dict[str, float]]]
RUNS: dict[str, Run] = {
    "W1": run_w1,
    "W2": run_w2,
    "W3": run_w3,
    "W4": run_w4,
    "W5": run_w5,
    "W6": run_w6,
    "W7": run_w7,
}

Ctx = TypeVar("Ctx")


@dataclass(frozen=True)
class Workload(Generic[Ctx]):
    """A named workload; ``Ctx`` is what the benchmark hands it (an opener, an env)."""

    name: str
    summary: Callable[[Sizes], str]
    run: Callable[[Ctx, Sizes], Coroutine[Any, Any, dict[str, float]]]


SUMMARIES: dict[str, Callable[[Sizes], str]] = {
    "W1": lambda s: (
        f"{s.w1_workflows} workflows x {W1_STEPS} activities, {s.w1_concurrency} at once"
    ),
    "W2": lambda s: f"{s.w2_workflows} workflows gathering {s.w2_fan_out} activities each",
    "W3": lambda s: f"{s.w3_round_trips} sequential signal -> activity round trips",
    "W4": lambda s: f"1 workflow x {s.w4_steps} sequential activities, windows of {s.w4_window}",
    "W5": lambda s: f"{s.w5_workflows} workflows sleeping {s.w5_sleep_s:g}s, started at once",
    "W6": lambda s: (
        f"1 workflow x {s.w6_signals} signals (an activity each), continuing as new "
        f"every {s.w6_every}; {s.w6_window} signals in flight"
    ),
    "W7": lambda s: (
        f"{s.w7_parents} parents, one at a time, each fanning out to {s.w7_children} "
        "child workflows (an activity each)"
    ),
}


# -- command line ---------------------------------------------------------------
def new_parser(prog: str, doc: str | None) -> argparse.ArgumentParser:
    """A parser with the options both benchmarks take (``--quick``, ``--only``)."""
    parser = argparse.ArgumentParser(prog=prog, description=doc.splitlines()[0] if doc else None)
    parser.add_argument("--quick", action="store_true", help="smaller counts, for a smoke run")
    parser.add_argument(
        "--only", help="comma-separated workloads to run (default: all)", metavar="W1,W3,..."
    )
    return parser


def selected(parser: argparse.ArgumentParser, only: str | None, names: Sequence[str]) -> list[str]:
    """The workloads ``--only`` names, in their usual order; an unknown one is an error."""
    if only is None:
        return list(names)
    wanted = [name.strip().upper() for name in only.split(",") if name.strip()]
    unknown = [name for name in wanted if name not in names]
    if unknown:
        parser.error(f"unknown workload(s) {', '.join(unknown)}; choose from {', '.join(names)}")
    return [name for name in names if name in wanted]
