"""Where an executor partition keeps its workflows: three tables and a cache.

- ``workflows``: one header per run (its state without the history, the ids
  of commands seen, and its latest events, the "tail"), so that a step is
  one atomic write;
- ``history``: the run's older events, one record each, moved out of the
  header in batches (:meth:`RunStore.archive`);
- ``timers``: the run's pending timers, read by the timer loop;
- a bounded cache of live runs; a miss replays the run from its history.
"""

from __future__ import annotations

import asyncio
import json
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any

from app.workflow._payloads import Payloads
from app.workflow._types import HistoryEvent, ParentClosePolicy, WorkflowState
from topics import Topology

from ._consumer import Producer
from ._machine import Machine, Run
from ._metrics import WorkerMetrics
from ._outputs import changelog_table

MOVED_KEY = b"\x00moved/"  # workflows-table key of a partition's new generation
_TAIL = 32  # events repeated in each run header
_TAIL_BYTES = 1024 * 1024


class RunStore:
    """The runs of the partitions a worker owns."""

    def __init__(
        self,
        producer: Producer,
        topology: Topology,
        machine: Machine,
        metrics: WorkerMetrics,
        cache_size: int,
        payloads: Payloads | None = None,
    ) -> None:
        self.runs = changelog_table(producer, topology.changelog("workflows"))
        self.history = changelog_table(producer, topology.changelog("history"))
        self.timers = changelog_table(producer, topology.changelog("timers"), json.loads)
        self.tables = [self.runs, self.history, self.timers]
        self.machine = machine
        self.metrics = metrics
        self.cache_size = cache_size
        # the tables hold encoded payloads; runs in the cache are plain
        self.payloads = payloads or Payloads(None)
        self.cache: OrderedDict[str, Run] = OrderedDict()

    async def load(self, workflow_id: str) -> Run | None:
        """The run, from the cache or else replayed from the tables; None if unknown."""
        run = self.cache.get(workflow_id)
        if run is not None:
            self.cache.move_to_end(workflow_id)
            self.metrics.cache.labels("hit").inc()
            return run
        self.metrics.cache.labels("miss").inc()
        raw = self.runs.get(workflow_id.encode())
        if raw is None:
            return None
        run = await self._decode(workflow_id, raw)
        if run.running and run.moved_to is None:
            self.metrics.replays.inc()
            self.machine.restore(run)
        self.remember(run)
        return run

    def remember(self, run: Run) -> None:
        """Put ``run`` in the cache, evicting (and closing) the least recently used."""
        wid = run.state.workflow_id
        self.cache[wid] = run
        self.cache.move_to_end(wid)
        while len(self.cache) > self.cache_size:
            _, old = self.cache.popitem(last=False)
            old.close()
        self.metrics.cached_runs.set(len(self.cache))

    def evict(self, workflow_id: str) -> None:
        """Drop a run from the cache (it is not closed: the caller owns it)."""
        self.cache.pop(workflow_id, None)

    def headers(self) -> Iterator[tuple[bytes, dict[str, Any]]]:
        """Every run header (parsed), keyed by workflow id; a snapshot."""
        for key, raw in self.runs.items():
            if not key.startswith(MOVED_KEY):
                yield key, json.loads(raw)

    def partition_of(self, workflow_id: str) -> int | None:
        raw = None if workflow_id.startswith("\x00") else self.runs.get(workflow_id.encode())
        return None if raw is None else int(json.loads(raw)["p"])

    def forget(self, partitions: set[int]) -> None:
        """Drop the cached runs and the table entries of ``partitions``."""
        for wid, run in list(self.cache.items()):
            if self.partition_of(wid) in partitions:
                run.close()
                del self.cache[wid]
        for table in self.tables:
            table.drop(partitions)

    def close(self) -> None:
        for run in self.cache.values():
            run.close()
        self.cache.clear()

    # -- generations ---------------------------------------------------------------
    def moved_partition(self, partition: int) -> int | None:
        """The generation ``partition`` was moved to, if it was."""
        raw = self.runs.get(MOVED_KEY + str(partition).encode())
        return None if raw is None else int(raw)

    async def mark_moved(self, partition: int, generation: int) -> None:
        await self.runs.set(
            MOVED_KEY + str(partition).encode(), str(generation).encode(), partition
        )

    # -- writing -------------------------------------------------------------------
    async def write_header(self, run: Run, partition: int) -> None:
        """Write the run's header (after moving a full tail to the history table)."""
        await self.archive(run)
        await self.runs.set(
            run.state.workflow_id.encode(), await self.header(run, partition), partition
        )

    async def import_history(self, run: Run, partition: int) -> None:
        """Write a handed-over run's whole history to the history table."""
        wid = run.state.workflow_id
        for event in run.state.history:
            key = f"{wid}#{event.id}".encode()
            encoded = await self.payloads.encode_event(event)
            await self.history.set(
                key, encoded.model_dump_json(exclude_defaults=True).encode(), partition
            )
        run.archived = len(run.state.history)

    async def write_timers(self, run: Run, partition: int) -> None:
        """Make the timers table hold the run's pending timers."""
        wanted = self.machine.pending_timers(run)
        key = run.state.workflow_id.encode()
        value = (
            json.dumps(
                {
                    "p": partition,
                    "run": run.state.run_id,
                    "timers": [[t.step, t.due, t.attempt] for t in wanted.values()],
                }
            ).encode()
            if wanted
            else None
        )
        if value != self.timers.get(key):
            if value is None:
                await self.timers.delete(key, partition)
            else:
                await self.timers.set(key, value, partition)

    async def archive(self, run: Run) -> None:
        """Move the oldest events of a full header tail to the history table.

        Recent events travel only in the header (one atomic write per step).
        When the tail holds ``2 * _TAIL`` events (or ``_TAIL_BYTES`` of JSON),
        all but the last ``_TAIL`` are written to the history table. The header
        keeps them until the brokers have acknowledged those records (a header
        never points at an event whose record might be lost): the first header
        written after that drops them. Nothing waits for the acknowledgements
        unless the tail doubles meanwhile (a broker slower than the steps).
        """
        if run.archiving is not None:
            upto, acks = run.archiving
            if not all(a.done() for a in acks):
                if not self._full(run, 2):
                    return
                await asyncio.gather(*acks)  # raises if one of them was not acknowledged
            run.archiving = None
            if all(not a.cancelled() and a.exception() is None for a in acks):
                run.archived = upto
                run.encoded = {i: v for i, v in run.encoded.items() if i > upto}
            # else: the flush before the next commit raises and the partition is read again
        if not self._full(run, 1):
            return
        history = run.state.history
        keep = min(_TAIL, len(history) - run.archived - 1)
        wid = run.state.workflow_id
        assert run.partition is not None
        acks = []
        for event in history[run.archived : len(history) - keep]:
            ack = await self.history.set(
                f"{wid}#{event.id}".encode(),
                (await self._event_json(run, event)).encode(),
                run.partition,
            )
            acks.append(asyncio.ensure_future(ack))
        run.archiving = (len(history) - keep, acks)

    @staticmethod
    def _full(run: Run, times: int) -> bool:
        """Whether the header's tail holds ``times`` times what is due for the archive."""
        tail = run.state.history[run.archived :]
        if len(tail) >= 2 * _TAIL * times:
            return True
        size = sum(len(run.encoded.get(e.id, "")) for e in tail)
        return len(tail) > 1 and size > _TAIL_BYTES * times

    async def _event_json(self, run: Run, event: HistoryEvent) -> str:
        # Each event is encoded and serialized once, and kept while it is in the tail:
        # it is repeated in every header until archived.
        json_text = run.encoded.get(event.id)
        if json_text is None:
            json_text = (await self.payloads.encode_event(event)).model_dump_json(
                exclude_defaults=True  # most fields are unset: a table record half the size
            )
            run.encoded[event.id] = json_text
        return json_text

    async def header(self, run: Run, partition: int) -> bytes:
        """The run's header record: its state without history, plus the tail."""
        state = run.state
        if self.payloads.enabled:
            if run.sealed_input is None:  # the input never changes: encoded once per run
                run.sealed_input = await self.payloads.encode_value(state.input)
            state = state.model_copy(
                update={
                    "input": run.sealed_input,
                    "result": await self.payloads.encode_value(state.result),
                    "error": await self.payloads.encode_text(state.error),
                }
            )
        header = state.model_dump(mode="json", exclude={"history"})
        history = run.state.history
        fields = json.dumps(
            {
                "state": header,
                "events": len(history),
                "seen": list(run.seen),
                "start": run.start_command,
                "p": partition,
                "moved": run.moved_to,
                **({"inherited": sorted(run.inherited)} if run.inherited else {}),
                **(
                    {"ended_by": run.ended_by, "closing": [[c, p.value] for c, p in run.closing]}
                    if run.ended_by is not None
                    else {}
                ),
            }
        )
        # The latest events ride along in the header's own (atomic) write.
        tail = ",".join([await self._event_json(run, e) for e in history[run.archived :]])
        return f'{fields[:-1]}, "tail": [{tail}]}}'.encode()

    async def _decode(self, workflow_id: str, raw: bytes) -> Run:
        header = json.loads(raw)
        count = header["events"]
        tail = header.get("tail", [])
        first_tail = count - len(tail) + 1
        events = []
        for i in range(1, count + 1):
            if i >= first_tail:
                events.append(tail[i - first_tail])
                continue
            data = self.history.get(f"{workflow_id}#{i}".encode())
            if data is None:
                raise RuntimeError(f"event {i} of {workflow_id!r} is missing from the table")
            events.append(json.loads(data))
        state = WorkflowState.model_validate({**header["state"], "history": events})
        state = await self.payloads.decode_state(state)
        run = Run(
            state=state,
            start_command=header.get("start"),
            moved_to=header.get("moved"),
            partition=header.get("p"),
            archived=count - len(tail),
            inherited={(step, attempt) for step, attempt in header.get("inherited", [])},
            ended_by=header.get("ended_by"),
            closing=[(c, ParentClosePolicy(p)) for c, p in header.get("closing", [])],
        )
        run.seen.extend(header.get("seen", []))
        return run
