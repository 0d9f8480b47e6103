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
- W6: one workflow consuming signals, continuing as new every segment:
  the mean step of each segment (each run of the chain) should stay flat.
- W7: a parent fanning out to many child workflows (an activity each).

Targets apply to the SQLite results and are only printed: timing never makes
the script fail. It exits 1 only when a workload raises (the engine broke).
"""

from __future__ import annotations

import asyncio
import gc
import os
import platform
import sqlite3
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Literal

from app.workflow import DefaultExecutor, Hooks
from bench._common import (
    ACTIVITIES,
    RUNS,
    SUMMARIES,
    WORKFLOWS,
    Metric,
    Opener,
    Sizes,
    Target,
    Workload,
    align,
    fmt,
    new_parser,
    selected,
)
from providers.inmemory import InMemoryStore
from providers.sqlite import SQLiteStore

StoreKind = Literal["memory", "sqlite"]

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
    w6_signals=600,
    w6_every=100,
    w7_parents=3,
    w7_children=20,
)

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
    Metric("W4", "fit", "last/first (line through all windows)"),
    Metric("W5", "wall", "wall, first start to all done (s)", Target(1.5, at_least=False)),
    Metric("W5", "started", "all started after (s)"),
    Metric("W6", "first", "first-segment step (ms)"),
    Metric("W6", "last", "last-segment step (ms)"),
    Metric("W6", "ratio", "last/first segment", Target(1.2, at_least=False)),
    Metric("W6", "spread", "slowest/fastest segment"),
    Metric("W6", "handoff", "step across a continue-as-new (ms)"),
    Metric("W7", "wall", "parent with its children, median (ms)"),
    Metric("W7", "best", "parent with its children, best (ms)"),
    Metric("W7", "children", "children/s (best parent)"),
]

WORKLOADS: dict[str, Workload[Opener]] = {
    name: Workload(name, SUMMARIES[name], run) for name, run in RUNS.items()
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


def run_one(kind: StoreKind, workload: Workload[Opener], sizes: Sizes) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix=f"bench-{workload.name}-") as tmp:
        opener: Opener = partial(open_executor, kind, Path(tmp) / "workflows.db")
        # Garbage left by the previous workload must not be collected on this one's clock.
        gc.collect()
        # A loop per workload: no task or thread of one can slow down the next.
        return asyncio.run(workload.run(opener, sizes))


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
            row.append(fmt(value))
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
    return align(rows)


def main(argv: Sequence[str] | None = None) -> int:
    parser = new_parser("python -m bench.embedded", __doc__)
    parser.add_argument("--store", choices=["memory", "sqlite", "both"], default="both")
    args = parser.parse_args(argv)
    names = selected(parser, args.only, list(WORKLOADS))
    sizes = QUICK if args.quick else FULL
    stores: list[StoreKind] = ["memory", "sqlite"] if args.store == "both" else [args.store]

    print(
        f"embedded runtime benchmark ({'quick' if args.quick else 'full'}): "
        f"Python {platform.python_version()}, SQLite {sqlite3.sqlite_version}, "
        f"{os.cpu_count()} CPUs, {platform.system()} {platform.machine()}"
    )
    print(f"SQLite files under {tempfile.gettempdir()}, synchronous=FULL (the default)")
    for name in names:
        print(f"  {name}: {WORKLOADS[name].summary(sizes)}")
    print()

    results: dict[tuple[StoreKind, str], dict[str, float]] = {}
    errors: dict[tuple[StoreKind, str], str] = {}
    for kind in stores:
        for name in names:
            began = time.perf_counter()
            try:
                values = run_one(kind, WORKLOADS[name], sizes)
            except Exception as exc:
                errors[(kind, name)] = f"{type(exc).__name__}: {exc}"
                print(f"[{kind:6}] {name} FAILED: {errors[(kind, name)]}", flush=True)
                continue
            results[(kind, name)] = values
            shown = ", ".join(f"{key}={fmt(value)}" for key, value in values.items())
            print(f"[{kind:6}] {name} ({time.perf_counter() - began:.1f}s): {shown}", flush=True)

    print()
    print(render_table(stores, results, errors, names))
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
