"""A run's header moves its oldest events to the history table without waiting on the broker.

No broker: a producer whose acknowledgements the test gives. The header keeps
repeating events written to the history table until those records are
acknowledged (a header never points at an event that might be lost), drops
them at the first write after that, and waits only when the tail has doubled
meanwhile (a broker slower than the steps).
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from typing import Any, cast

from app.streaming._consumer import Producer
from app.streaming._machine import Command, CommandKind, Machine, Run
from app.streaming._metrics import WorkerMetrics
from app.streaming._runs import _TAIL, RunStore
from app.workflow._names import FunctionTable
from tests.conformance import workflows as wf
from topics import Topology


class _HeldProducer:
    """Takes records; acknowledges them only when told to."""

    def __init__(self) -> None:
        self.acks: list[asyncio.Future[Any]] = []

    async def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        partition: int | None = None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> asyncio.Future[Any]:
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.acks.append(fut)
        return fut

    def acknowledge(self) -> None:
        for fut in self.acks:
            if not fut.done():
                fut.set_result(None)

    async def flush(self) -> None:
        await asyncio.gather(*self.acks)


class _Steps:
    def __init__(self) -> None:
        self.machine = Machine(
            FunctionTable("workflow", [wf.counter]), FunctionTable("activity", [])
        )
        self.producer = _HeldProducer()
        store = RunStore(
            cast(Producer, self.producer), Topology(app_id="t"), self.machine, WorkerMetrics(), 10
        )
        self.store = store
        self.signals = 0

    async def start(self) -> Run:
        state = {"total": 0, "count": 0, "target": 10_000, "every": 10_000, "runs": 1}
        run, _ = self.machine.handle(
            None, _cmd(CommandKind.START, "s", name="counter", payload=state)
        )
        assert run is not None
        return await self.write(run)

    def signal(self, run: Run) -> Run:
        self.signals += 1
        after, fx = self.machine.handle(
            run, _cmd(CommandKind.SIGNAL, f"{self.signals:032x}", name="add", payload=1)
        )
        assert after is not None and fx.reply is not None and fx.reply.ok
        return after

    async def write(self, run: Run) -> Run:
        run.partition = 0
        await self.store.write_header(run, 0)
        return run

    def tail(self, run: Run) -> int:
        header = self.store.runs.get(run.state.workflow_id.encode())
        assert header is not None
        return len(json.loads(header)["tail"])


def _cmd(kind: str, command_id: str, **fields: Any) -> Command:
    return Command(
        command_id=command_id, kind=kind, workflow_id="w", issued_at=datetime.now(UTC), **fields
    )


async def _archive_waits_for_nothing_until_the_tail_doubles() -> None:
    s = _Steps()
    run = await s.start()
    while len(run.state.history) < 2 * _TAIL:
        run = await s.write(s.signal(run))
    archived = len(s.store.history)
    assert archived == 2 * _TAIL - _TAIL  # written to the history table ...
    assert s.tail(run) == len(run.state.history)  # ... and still in the header

    s.producer.acknowledge()
    run = await s.write(s.signal(run))
    assert s.tail(run) == len(run.state.history) - archived  # dropped once acknowledged

    # Unacknowledged again: the writes go on until the tail has doubled, then wait.
    while True:
        run = s.signal(run)
        write = asyncio.ensure_future(s.write(run))
        await asyncio.sleep(0)
        if not write.done():
            break
        await write
    assert len(run.state.history) - run.archived >= 4 * _TAIL
    for _ in range(3):
        await asyncio.sleep(0)
    assert not write.done()
    s.producer.acknowledge()
    await asyncio.wait_for(write, 5)
    assert s.tail(run) <= 3 * _TAIL  # the next lot is written, not acknowledged yet
    s.producer.acknowledge()
    run = await s.write(s.signal(run))
    assert s.tail(run) < 2 * _TAIL

    # Read back from the tables (a restart): the whole history, in order.
    s.producer.acknowledge()
    s.store.cache.clear()
    again = await s.store.load("w")
    assert again is not None
    assert [e.id for e in again.state.history] == [e.id for e in run.state.history]


def test_archive_waits_for_nothing_until_the_tail_doubles() -> None:
    asyncio.run(_archive_waits_for_nothing_until_the_tail_doubles())
