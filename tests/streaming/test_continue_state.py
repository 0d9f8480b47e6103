"""What a partition keeps for a workflow that continues as new many times.

No broker: commands go straight to :class:`Machine` and the effects to a
:class:`RunStore` whose producer only records what it is given. A long chain
of runs must cost each step what the first run's steps cost: the header
written per step, the tables and the remembered command ids stay bounded by
one run, however many runs came before.
"""

from __future__ import annotations

import asyncio
import itertools
from datetime import UTC, datetime
from typing import Any, cast

from app.streaming._consumer import Producer
from app.streaming._machine import SEEN_LIMIT, Command, CommandKind, Machine, Run
from app.streaming._metrics import WorkerMetrics
from app.streaming._runs import RunStore
from app.workflow._names import FunctionTable
from app.workflow._types import EventType
from tests.conformance import workflows as wf
from topics import Topology

EVERY = 40  # signals per run
RUNS = 30  # SEEN_LIMIT is passed after 13 runs


class _Producer:
    """Takes records and acknowledges them at once; counts them per topic."""

    def __init__(self) -> None:
        self.sent: dict[str, int] = {}

    async def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        partition: int | None = None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> asyncio.Future[Any]:
        self.sent[topic] = self.sent.get(topic, 0) + 1
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        fut.set_result(None)
        return fut

    async def flush(self) -> None:
        return None


def _cmd(kind: str, command_id: str, **fields: Any) -> Command:
    return Command(
        command_id=command_id, kind=kind, workflow_id="w", issued_at=datetime.now(UTC), **fields
    )


async def _chain() -> tuple[list[list[int]], RunStore, Run, _Producer]:
    """Runs ``counter`` for RUNS runs; the header sizes written in each run."""
    machine = Machine(FunctionTable("workflow", [wf.counter]), FunctionTable("activity", []))
    producer = _Producer()
    # the store needs only send and flush of a producer
    store = RunStore(cast(Producer, producer), Topology(app_id="t"), machine, WorkerMetrics(), 10)
    state = {"total": 0, "count": 0, "target": EVERY * RUNS, "every": EVERY, "runs": 1}
    run, _ = machine.handle(None, _cmd(CommandKind.START, "s", name="counter", payload=state))
    assert run is not None
    run.partition = 0
    await store.write_header(run, 0)
    sizes: list[list[int]] = [[]]
    for i in range(1, EVERY * RUNS + 1):
        run, fx = machine.handle(run, _cmd(CommandKind.SIGNAL, f"{i:032x}", name="add", payload=1))
        assert run is not None and fx.reply is not None and fx.reply.ok
        run.partition = 0
        await store.write_header(run, 0)
        sizes[-1].append(len(await store.header(run, 0)))
        if fx.ended:
            sizes.append([])
    return [s for s in sizes if s], store, run, producer


def test_the_header_and_tables_do_not_grow_with_the_chain() -> None:
    sizes, store, run, _ = asyncio.run(_chain())
    assert len(sizes) == RUNS
    assert run.state.status.value == "completed"
    assert run.state.result == {
        "total": EVERY * RUNS,
        "count": EVERY * RUNS,
        "runs": RUNS,
    }
    # Once SEEN_LIMIT signal ids are remembered, a run's headers are as large as
    # the run before's: only the chain of run ids in workflow_started (while it
    # is in the tail) grows, by one id per run (ids and payloads keep one length here).
    full = -(-SEEN_LIMIT // EVERY) + 1
    steady = sizes[full:-1]
    for earlier, later in itertools.pairwise(steady):
        assert max(later) - max(earlier) <= 40
    assert len(run.seen) == SEEN_LIMIT
    # the history table holds one run's events, overwritten by each next run
    assert len(store.history) < 3 * EVERY
    assert len(store.runs) == 1


def test_a_continued_run_starts_clean() -> None:
    _, _, run, _ = asyncio.run(_chain())
    history = run.state.history
    first = history[0]
    assert first.type is EventType.WORKFLOW_STARTED
    assert len(first.previous_run_ids or []) == RUNS - 1
    # the last run recorded only its own events: started, its signals, completed
    assert len(history) == 1 + EVERY + 1
    assert not run.carried
