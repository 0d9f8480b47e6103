"""Visibility benchmark: ``list`` over many workflows in SQLite.

``python -m bench.visibility [--workflows 100000] [--small 10000]`` fills two
SQLite files with that many workflow headers (a ``workflow_started`` and, for
half of them, a terminal event; every one with three search attributes) and
times the first page of several queries in each, with the memory one call
allocates at its peak (``tracemalloc``). The ratio between the two sizes shows
whether a page's cost depends on the total. For comparison, the first page of
the store's older ``list`` (states with their histories) is timed too.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
import tracemalloc
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from app.workflow import WorkflowFilter, WorkflowQuery, WorkflowStatus
from app.workflow._store import append_events
from app.workflow._types import EventType, HistoryEvent, WorkflowState
from providers.sqlite import SQLiteStore

T0 = datetime(2026, 1, 1, tzinfo=UTC)
REPEAT = 15
TYPES = ("order", "refund", "invoice", "shipment")


def _state(i: int) -> WorkflowState:
    start = T0 + timedelta(seconds=i)
    attrs = {"customer": f"c{i % 1000}", "tier": "gold" if i % 10 == 0 else "free", "n": i}
    return WorkflowState(
        workflow_id=f"wf-{i:07}",
        run_id=f"run-{i}",
        workflow_type=TYPES[i % len(TYPES)],
        input={"n": i},
        history=[
            HistoryEvent(
                id=1,
                type=EventType.WORKFLOW_STARTED,
                timestamp=start,
                input={"n": i},
                search_attributes=attrs,
                memo={"note": "bench"},
            )
        ],
        created_at=start,
        updated_at=start,
    )


async def fill(store: SQLiteStore, count: int) -> float:
    """Store ``count`` workflows (half of them ended); returns the seconds it took."""
    began = time.perf_counter()
    chunk = 2000
    for first in range(0, count, chunk):
        states = [_state(i) for i in range(first, min(first + chunk, count))]
        await asyncio.gather(*(store.save(s) for s in states))
        ended = []
        for s in states[::2]:
            end = HistoryEvent(
                id=2,
                type=EventType.WORKFLOW_COMPLETED,
                timestamp=s.created_at + timedelta(seconds=5),
                result=1,
            )
            s.history.append(end)
            s.status, s.result, s.updated_at = WorkflowStatus.COMPLETED, 1, end.timestamp
            ended.append(append_events(store, s, [end]))
        await asyncio.gather(*ended)
    return time.perf_counter() - began


async def measure(call: Callable[[], Awaitable[Any]]) -> tuple[float, float, float]:
    """(median ms, p90 ms, peak KiB allocated by one call) over :data:`REPEAT` calls."""
    await call()  # warm: statement cache, pages in the OS cache
    times = []
    for _ in range(REPEAT):
        began = time.perf_counter()
        await call()
        times.append((time.perf_counter() - began) * 1000)
    tracemalloc.start()
    await call()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    times.sort()
    return statistics.median(times), times[int(len(times) * 0.9) - 1], peak / 1024


def queries(count: int) -> dict[str, Callable[[SQLiteStore], Awaitable[Any]]]:
    mid = T0 + timedelta(seconds=count // 2)
    return {
        "newest 50": lambda s: s.list_workflows(WorkflowQuery(page_size=50)),
        "status=completed": lambda s: s.list_workflows(
            WorkflowQuery(status="completed", page_size=50)
        ),
        "type=refund": lambda s: s.list_workflows(
            WorkflowQuery(workflow_type="refund", page_size=50)
        ),
        "attr tier=gold (10%)": lambda s: s.list_workflows(
            WorkflowQuery(search_attributes={"tier": "gold"}, page_size=50)
        ),
        "attr customer=c7 (0.1%)": lambda s: s.list_workflows(
            WorkflowQuery(search_attributes={"customer": "c7"}, page_size=50)
        ),
        "started before middle": lambda s: s.list_workflows(
            WorkflowQuery(started_before=mid, page_size=50)
        ),
        "old list(limit=50)": lambda s: s.list(WorkflowFilter(limit=50)),
    }


async def run(sizes: Sequence[int]) -> dict[int, dict[str, tuple[float, float, float]]]:
    results: dict[int, dict[str, tuple[float, float, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for count in sizes:
            async with SQLiteStore(Path(tmp) / f"v{count}.db", synchronous="NORMAL") as store:
                took = await fill(store, count)
                print(f"filled {count:,} workflows in {took:.1f} s", flush=True)
                results[count] = {
                    name: await measure(lambda q=q: q(store)) for name, q in queries(count).items()
                }
    return results


def render(results: dict[int, dict[str, tuple[float, float, float]]]) -> str:
    small, large = sorted(results)
    lines = [
        f"{'query (first page of 50)':<26} {small:>9,} ms {large:>9,} ms  ratio  "
        f"peak KiB {small:,} / {large:,}",
    ]
    for name in results[large]:
        a, b = results[small][name], results[large][name]
        lines.append(
            f"{name:<26} {a[0]:>12.2f} {b[0]:>12.2f}  {b[0] / a[0]:5.2f}  "
            f"{a[2]:>8.0f} / {b[2]:.0f}   (p90 {b[1]:.2f} ms)"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workflows", type=int, default=100_000, help="the large size")
    parser.add_argument("--small", type=int, default=10_000, help="the small size")
    args = parser.parse_args(argv)
    if not 0 < args.small < args.workflows:
        parser.error("need 0 < --small < --workflows")
    results = asyncio.run(run([args.small, args.workflows]))
    print(render(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
