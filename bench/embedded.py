"""Throughput and latency of the embedded runtime on the in-memory and SQLite stores.

Usage::

    python -m bench.embedded [--quick] [--store memory|sqlite|both] [--only W1,W4]

Every workload runs on a fresh :class:`DefaultExecutor` over a fresh store
(SQLite: a new file in its own temporary directory, default
``synchronous=FULL``):

- W1: many short workflows (3 sequential activities), bounded concurrency.
- W2: fan-out: each workflow gathers many activities at once.
- W3: signal round trip: signal, the workflow runs an activity, the client
  hears of its completion through a hook. Also the bare ``signal()`` latency.
- W4: one long workflow: per-step cost at the start vs. the end of its history.
- W5: many workflows sleeping on durable timers at the same time.

Targets apply to the SQLite results and are only printed: timing never makes
the script fail. It exits 1 only when a workload raises (the engine broke).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import itertools
import math
import os
import platform
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Literal

from app.workflow import DefaultExecutor, Hooks, Signal, WorkflowContext, WorkflowOptions
from providers.inmemory import InMemoryStore
from providers.sqlite import SQLiteStore

StoreKind = Literal["memory", "sqlite"]
Opener = Callable[[Hooks | None], AbstractAsyncContextManager[DefaultExecutor]]

# Generous bound on any single wait: only a hung engine reaches it, never a slow one.
WAIT_S = 120.0
W3_WARMUP = 10  # round trips left out of W3's numbers (first-call costs, imports)


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


WORKFLOWS = [three_steps, fan_out, signal_echo, chain, nap]
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


FULL = Sizes(
    w1_workflows=500,
    w1_concurrency=50,
    w2_workflows=50,
    w2_fan_out=20,
    w3_round_trips=200,
    w4_steps=1000,
    w4_window=100,
    w5_workflows=200,
    w5_sleep_s=1.0,
)
QUICK = Sizes(
    w1_workflows=100,
    w1_concurrency=50,
    w2_workflows=10,
    w2_fan_out=20,
    w3_round_trips=50,
    w4_steps=300,
    w4_window=100,
    w5_workflows=50,
    w5_sleep_s=1.0,
)


@dataclass(frozen=True)
class Target:
    """A bound a SQLite result should meet."""

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


METRICS = [
    Metric("W1", "rate", "workflows/s", Target(300, at_least=True)),
    Metric("W1", "p50", "workflow latency p50 (ms)"),
    Metric("W1", "p99", "workflow latency p99 (ms)"),
    Metric("W2", "rate", "workflows/s"),
    Metric("W2", "activities", "activities/s"),
    Metric("W3", "rt_p50", "round trip p50 (ms)", Target(5, at_least=False)),
    Metric("W3", "rt_p99", "round trip p99 (ms)"),
    Metric("W3", "sig_p50", "signal() p50 (ms)"),
    Metric("W3", "sig_p99", "signal() p99 (ms)"),
    Metric("W4", "first", "first-window step (ms)"),
    Metric("W4", "last", "last-window step (ms)"),
    Metric("W4", "ratio", "last/first (means)", Target(1.2, at_least=False)),
    Metric("W4", "median", "last/first (medians)"),
    Metric("W5", "wall", "wall, first start to all done (s)", Target(1.5, at_least=False)),
    Metric("W5", "started", "all started after (s)"),
]


def percentile(samples: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile: always one of the samples."""
    ordered = sorted(samples)
    return ordered[max(1, math.ceil(fraction * len(ordered))) - 1]


def _ms(seconds: float) -> float:
    return seconds * 1000.0


def _check(what: str, got: Any, expected: Any) -> None:
    # A wrong result means the engine is broken, and its timings are meaningless.
    if got != expected:
        raise RuntimeError(f"{what}: expected {expected!r}, got {got!r}")


# -- workloads ------------------------------------------------------------------
async def run_w1(open_executor: Opener, sizes: Sizes) -> dict[str, float]:
    """Short workflows, at most ``w1_concurrency`` in flight."""
    latencies: list[float] = []
    todo = iter(range(sizes.w1_workflows))
    async with open_executor(None) as executor:

        async def client() -> None:
            # A fixed pool of clients bounds concurrency like a semaphore would,
            # without hundreds of parked tasks: the engine scans every live task
            # of the process when a workflow ends, so they would skew the numbers.
            for i in todo:
                began = time.perf_counter()
                handle = await executor.execute(three_steps, WorkflowOptions(id=f"w1-{i}", input=i))
                result = await handle.result(timeout=WAIT_S)
                latencies.append(time.perf_counter() - began)
                _check(f"w1-{i}", result, i + 3)

        began = time.perf_counter()
        async with asyncio.TaskGroup() as group:
            for _ in range(sizes.w1_concurrency):
                group.create_task(client())
        wall = time.perf_counter() - began
    return {
        "rate": sizes.w1_workflows / wall,
        "p50": _ms(percentile(latencies, 0.50)),
        "p99": _ms(percentile(latencies, 0.99)),
    }


async def run_w2(open_executor: Opener, sizes: Sizes) -> dict[str, float]:
    """Fan-out workflows, all started at once."""
    n = sizes.w2_fan_out
    expected = sum(range(1, n + 1))
    async with open_executor(None) as executor:

        async def one(i: int) -> None:
            handle = await executor.execute(fan_out, WorkflowOptions(id=f"w2-{i}", input=n))
            _check(f"w2-{i}", await handle.result(timeout=WAIT_S), expected)

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
        # The hook runs once the completion is durable: the client now knows.
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
        _check("w3", await handle.result(timeout=WAIT_S), total)
    return {
        "rt_p50": _ms(percentile(round_trips, 0.50)),
        "rt_p99": _ms(percentile(round_trips, 0.99)),
        "sig_p50": _ms(percentile(signal_calls, 0.50)),
        "sig_p99": _ms(percentile(signal_calls, 0.99)),
    }


async def run_w4(open_executor: Opener, sizes: Sizes) -> dict[str, float]:
    """One workflow of many sequential steps, timed from inside by a hook."""
    stamps: list[float] = []

    def activity_done(workflow_id: str, result: Any) -> None:
        stamps.append(time.perf_counter())

    n, window = sizes.w4_steps, sizes.w4_window
    async with open_executor(Hooks(on_activity_complete=activity_done)) as executor:
        handle = await executor.execute(chain, WorkflowOptions(id="w4", input=n))
        _check("w4", await handle.result(timeout=WAIT_S), sum(range(1, n + 1)))
    _check("w4 completed activities", len(stamps), n)
    # Steps between consecutive completions: the first one, which also pays
    # for starting the workflow, is left out.
    steps = [later - earlier for earlier, later in itertools.pairwise(stamps)]
    first, last = statistics.fmean(steps[:window]), statistics.fmean(steps[-window:])
    # Medians shrug off a stray pause (GC, another process on the CPU) that
    # can swing a 100-step mean; a real growth with history moves both.
    median_ratio = statistics.median(steps[-window:]) / statistics.median(steps[:window])
    return {"first": _ms(first), "last": _ms(last), "ratio": last / first, "median": median_ratio}


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
    _check("w5 results", set(results), {"rested"})
    return {"wall": wall, "started": started - began}


@dataclass(frozen=True)
class Workload:
    name: str
    summary: Callable[[Sizes], str]
    run: Callable[[Opener, Sizes], Coroutine[Any, Any, dict[str, float]]]


WORKLOADS = {
    w.name: w
    for w in [
        Workload(
            "W1",
            lambda s: f"{s.w1_workflows} workflows x 3 activities, {s.w1_concurrency} at once",
            run_w1,
        ),
        Workload(
            "W2",
            lambda s: f"{s.w2_workflows} workflows gathering {s.w2_fan_out} activities each",
            run_w2,
        ),
        Workload(
            "W3",
            lambda s: f"{s.w3_round_trips} sequential signal -> activity round trips",
            run_w3,
        ),
        Workload(
            "W4",
            lambda s: f"1 workflow x {s.w4_steps} sequential activities, windows of {s.w4_window}",
            run_w4,
        ),
        Workload(
            "W5",
            lambda s: f"{s.w5_workflows} workflows sleeping {s.w5_sleep_s:g}s, started at once",
            run_w5,
        ),
    ]
}


# -- running --------------------------------------------------------------------
@asynccontextmanager
async def open_executor(
    kind: StoreKind, db_path: Path, hooks: Hooks | None
) -> AsyncIterator[DefaultExecutor]:
    """An executor over a new store of ``kind``; the store is closed afterwards."""
    store = InMemoryStore() if kind == "memory" else SQLiteStore(db_path)
    try:
        async with DefaultExecutor(
            store=store, hooks=hooks, workflows=WORKFLOWS, activities=ACTIVITIES
        ) as executor:
            yield executor
    finally:
        await store.close()


def run_one(kind: StoreKind, workload: Workload, sizes: Sizes) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix=f"bench-{workload.name}-") as tmp:
        opener: Opener = partial(open_executor, kind, Path(tmp) / "workflows.db")
        # Garbage left by the previous workload must not be collected on this one's clock.
        gc.collect()
        # A loop per workload: no task or thread of one can slow down the next.
        return asyncio.run(workload.run(opener, sizes))


def _fmt(value: float) -> str:
    if abs(value) >= 100:
        return f"{value:,.1f}"
    return f"{value:.2f}" if abs(value) >= 10 else f"{value:.3f}"


def render_table(
    stores: Sequence[StoreKind],
    results: dict[tuple[StoreKind, str], dict[str, float]],
    errors: dict[tuple[StoreKind, str], str],
    selected: Sequence[str],
) -> str:
    """The results as an aligned text table, targets judged on SQLite."""
    header = ["workload", "metric", *stores]
    both = len(stores) == 2
    if both:
        header.append("sqlite/memory")
    if "sqlite" in stores:
        header.append("sqlite target")
    rows = [header]
    for metric in METRICS:
        if metric.workload not in selected:
            continue
        row = [metric.workload, metric.label]
        values: dict[StoreKind, float] = {}
        for kind in stores:
            if (kind, metric.workload) in errors:
                row.append("error")
                continue
            value = results[(kind, metric.workload)][metric.key]
            values[kind] = value
            row.append(_fmt(value))
        if both:
            memory, sqlite = values.get("memory"), values.get("sqlite")
            row.append(f"{sqlite / memory:.2f}x" if memory and sqlite is not None else "")
        if "sqlite" in stores:
            cell = ""
            if metric.target is not None:
                cell = str(metric.target)
                if "sqlite" in values:
                    cell += "  PASS" if metric.target.met(values["sqlite"]) else "  MISS"
            row.append(cell)
        rows.append(row)
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = []
    for n, row in enumerate(rows):
        cells = [
            # Text columns left-aligned, numbers right-aligned.
            cell.ljust(width) if i < 2 or i == len(row) - 1 else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
        if n == 0:
            lines.append("  ".join("-" * width for width in widths))
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.embedded", description=__doc__.splitlines()[0] if __doc__ else None
    )
    parser.add_argument("--quick", action="store_true", help="smaller counts, for a smoke run")
    parser.add_argument("--store", choices=["memory", "sqlite", "both"], default="both")
    parser.add_argument(
        "--only",
        default=",".join(WORKLOADS),
        help="comma-separated workloads to run (default: all)",
    )
    args = parser.parse_args(argv)
    args.only = [name.strip().upper() for name in args.only.split(",") if name.strip()]
    unknown = [name for name in args.only if name not in WORKLOADS]
    if unknown:
        parser.error(
            f"unknown workload(s) {', '.join(unknown)}; choose from {', '.join(WORKLOADS)}"
        )
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    sizes = QUICK if args.quick else FULL
    stores: list[StoreKind] = ["memory", "sqlite"] if args.store == "both" else [args.store]
    selected = [name for name in WORKLOADS if name in args.only]

    print(
        f"embedded runtime benchmark ({'quick' if args.quick else 'full'}): "
        f"Python {platform.python_version()}, SQLite {sqlite3.sqlite_version}, "
        f"{os.cpu_count()} CPUs, {platform.system()} {platform.machine()}"
    )
    print(f"SQLite files under {tempfile.gettempdir()}, synchronous=FULL (the default)")
    for name in selected:
        print(f"  {name}: {WORKLOADS[name].summary(sizes)}")
    print()

    results: dict[tuple[StoreKind, str], dict[str, float]] = {}
    errors: dict[tuple[StoreKind, str], str] = {}
    for kind in stores:
        for name in selected:
            began = time.perf_counter()
            try:
                values = run_one(kind, WORKLOADS[name], sizes)
            except Exception as exc:
                errors[(kind, name)] = f"{type(exc).__name__}: {exc}"
                print(f"[{kind:6}] {name} FAILED: {errors[(kind, name)]}", flush=True)
                continue
            results[(kind, name)] = values
            shown = ", ".join(f"{key}={_fmt(value)}" for key, value in values.items())
            print(f"[{kind:6}] {name} ({time.perf_counter() - began:.1f}s): {shown}", flush=True)

    print()
    print(render_table(stores, results, errors, selected))
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
