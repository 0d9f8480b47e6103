"""A child process that runs workflows on one store and SIGKILLs itself at one chosen point.

    python -m tests.crash.child --log PATH --point POINT --store sqlite --db PATH
    python -m tests.crash.child --log PATH --point POINT --store kafka \
        --bootstrap HOST:PORT --topic TOPIC
    python -m tests.crash.child --log PATH --point POINT --store nats \
        --nats-url nats://HOST:PORT --bucket BUCKET

Points:
* ``before:N`` / ``after:N`` — around the N-th store write of the target workflow
  (``save`` or ``append``; N counts from 1): the write is lost, or durable but
  not yet applied;
* ``activity:TAG`` — inside the activity called with TAG, after its side effect;
* ``sleep`` — while the target workflow's durable sleep is armed;
* ``none`` — no crash: run every workflow to its end.

Every activity appends ``TAG ATTEMPT PID`` to the side-effect log (flushed and
fsynced) before returning, so the parent can count executions. Without a
crash, the process prints the results as JSON on its last line and exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import builtins
import json
import os
import signal
import sys
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from app.workflow import (
    DefaultExecutor,
    EventType,
    HistoryEvent,
    Hooks,
    RetryPolicy,
    Signal,
    WorkflowContext,
    WorkflowFilter,
    WorkflowOptions,
    WorkflowState,
    activity,
)
from app.workflow._store import AppendingStore

TARGET = "target"
WORKFLOW_IDS = [TARGET, "bystander-1", "bystander-2", "bystander-3"]
SLEEP = 0.3

POINT = "none"
LOG_PATH = ""


def _die() -> None:
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def _side_effect(tag: str) -> None:
    with open(LOG_PATH, "a", encoding="utf-8") as log:
        log.write(f"{tag} {activity.info().attempt} {os.getpid()}\n")
        log.flush()
        os.fsync(log.fileno())
    if f"activity:{tag}" == POINT:
        _die()


def effect(tag: str) -> str:
    _side_effect(tag)
    return tag.upper()


async def async_effect(tag: str) -> str:
    await asyncio.sleep(0)
    _side_effect(tag)
    return tag.upper()


def flaky_effect(tag: str) -> str:
    _side_effect(tag)
    if activity.info().attempt == 1:
        raise ConnectionError("transient")
    return tag.upper()


async def crash_flow(ctx: WorkflowContext, name: str) -> dict[str, Any]:
    stage = {"at": "start"}
    ctx.set_query_handler("stage", lambda: stage["at"])
    a = await ctx.execute_activity(effect, f"{name}:a")
    b = await ctx.execute_activity(async_effect, f"{name}:b")
    c = await asyncio.gather(*(ctx.execute_activity(effect, f"{name}:c{i}") for i in range(3)))
    d = await ctx.execute_activity(
        flaky_effect, f"{name}:d", retry=RetryPolicy(max_attempts=3, initial_interval=0.05)
    )
    await ctx.execute_activity(effect, f"{name}:before-sleep")
    stage["at"] = "sleeping"
    await ctx.sleep(SLEEP)
    stage["at"] = "waiting"
    go = await ctx.receive_signal("go").receive()
    e = await ctx.execute_activity(effect, f"{name}:e")
    return {"a": a, "b": b, "c": list(c), "d": d, "go": go, "e": e}


def finished_attempts(history: Sequence[HistoryEvent]) -> set[tuple[str, int]]:
    """(tag, attempt) of every attempt whose completion or failure is recorded."""
    tags = {e.step: e.input for e in history if e.type is EventType.ACTIVITY_STARTED}
    return {
        (tags[e.step], e.attempt or 0)
        for e in history
        if e.type in (EventType.ACTIVITY_COMPLETED, EventType.ACTIVITY_FAILED)
    }


STORES = ("sqlite", "kafka", "nats")


class ClosableStore(AppendingStore, Protocol):
    """An appending store with an async ``close`` (all stores under test have one)."""

    async def close(self) -> None: ...


@dataclass(frozen=True)
class StoreSpec:
    """Which store a child (or the parent, to read histories) opens, and where."""

    kind: str
    db: str = ""
    bootstrap: str = ""
    topic: str = ""
    nats_url: str = ""
    bucket: str = ""

    def open(self) -> ClosableStore:
        """A new, not yet started store of this kind."""
        # Each child imports only its own store's client library: faster to start.
        if self.kind == "sqlite":
            from providers.sqlite import SQLiteStore

            return SQLiteStore(self.db)
        if self.kind == "kafka":
            from providers.kafka import KafkaStore

            # Tansu answers a fetch only when its wait expires: keep the wait short.
            return KafkaStore(
                bootstrap_servers=self.bootstrap, topic=self.topic, fetch_max_wait=0.01
            )
        if self.kind == "nats":
            from providers.nats import NatsStore

            return NatsStore(self.nats_url, bucket=self.bucket)
        raise ValueError(f"unknown store {self.kind!r}; expected one of {', '.join(STORES)}")

    def args(self) -> list[str]:
        """The command-line options that make a child open this store."""
        options = {
            "sqlite": ("--db", self.db),
            "kafka": ("--bootstrap", self.bootstrap, "--topic", self.topic),
            "nats": ("--nats-url", self.nats_url, "--bucket", self.bucket),
        }[self.kind]
        return ["--store", self.kind, *options]


class KillingStore:
    """Any appending store, plus a SIGKILL around the N-th write of the target workflow."""

    def __init__(self, inner: ClosableStore, point: str) -> None:
        self.inner = inner
        self.writes = 0
        when, _, n = point.partition(":")
        self.when = when if when in ("before", "after") else ""
        self.at = int(n) if self.when else 0

    async def _around(self, workflow_id: str, write: Awaitable[None]) -> None:
        if workflow_id != TARGET or not self.when:
            await write
            return
        self.writes += 1
        if self.writes == self.at and self.when == "before":
            _die()
        await write
        if self.writes == self.at and self.when == "after":
            _die()

    async def save(self, state: WorkflowState) -> None:
        await self._around(state.workflow_id, self.inner.save(state))

    async def append(self, state: WorkflowState, events: Sequence[HistoryEvent]) -> None:
        if not events:  # header-only updates are not steps
            await self.inner.append(state, events)
            return
        await self._around(state.workflow_id, self.inner.append(state, events))

    async def load(self, workflow_id: str) -> WorkflowState | None:
        return await self.inner.load(workflow_id)

    async def list(self, filter: WorkflowFilter) -> builtins.list[WorkflowState]:
        return await self.inner.list(filter)

    async def delete(self, workflow_id: str) -> None:
        await self.inner.delete(workflow_id)

    async def close(self) -> None:
        await self.inner.close()


async def run(spec: StoreSpec) -> dict[str, Any]:
    store = KillingStore(spec.open(), POINT)
    try:
        return await _run(store)
    finally:
        await store.close()


async def _run(store: KillingStore) -> dict[str, Any]:
    signaled: set[str] = set()
    pending: list[asyncio.Task[None]] = []
    executor: DefaultExecutor

    async def send_go(workflow_id: str) -> None:
        if workflow_id not in signaled:
            signaled.add(workflow_id)
            await executor.signal(workflow_id, Signal("go", f"go-{workflow_id}"))

    def on_complete(workflow_id: str, result: Any) -> None:
        if result == f"{workflow_id}:before-sleep".upper():
            if POINT == "sleep" and workflow_id == TARGET:
                # runs once the event is applied and the sleep's timer armed
                asyncio.get_running_loop().call_soon(_die)
            pending.append(asyncio.ensure_future(send_go(workflow_id)))

    executor = DefaultExecutor(
        store=store,
        hooks=Hooks(on_activity_complete=on_complete),
        workflows=[crash_flow],
        activities=[effect, async_effect, flaky_effect],
    )
    async with executor:
        handles = []
        for wid in WORKFLOW_IDS:
            state = await store.load(wid)
            if state is None:
                handles.append(await executor.execute(crash_flow, WorkflowOptions(wid, wid)))
                continue
            handles.append(executor.get_handle(wid))
            kinds = [(e.type.value, e.result) for e in state.history]
            done_before_sleep = ("activity_completed", f"{wid}:before-sleep".upper()) in kinds
            got_signal = any(k == "signal_received" for k, _ in kinds)
            if done_before_sleep and not got_signal:
                pending.append(asyncio.ensure_future(send_go(wid)))
            elif got_signal:
                signaled.add(wid)
        results = {h.id: await h.result(timeout=30) for h in handles}
        await asyncio.gather(*pending)
        running = await store.list(WorkflowFilter(status="running"))  # type: ignore[arg-type]
        assert not running, running
    return results


def main() -> None:
    global POINT, LOG_PATH
    parser = argparse.ArgumentParser()
    parser.add_argument("--log", required=True)
    parser.add_argument("--point", default="none")
    parser.add_argument("--store", choices=STORES, default="sqlite")
    parser.add_argument("--db", default="", help="SQLite file (--store sqlite)")
    parser.add_argument("--bootstrap", default="", help="Kafka host:port (--store kafka)")
    parser.add_argument("--topic", default="", help="Kafka topic (--store kafka)")
    parser.add_argument("--nats-url", default="", help="NATS server URL (--store nats)")
    parser.add_argument("--bucket", default="", help="NATS KV bucket (--store nats)")
    args = parser.parse_args()
    needed = {"sqlite": ("db",), "kafka": ("bootstrap", "topic"), "nats": ("nats_url", "bucket")}
    missing = [name for name in needed[args.store] if not getattr(args, name)]
    if missing:
        parser.error(
            f"--store {args.store} needs "
            + ", ".join("--" + name.replace("_", "-") for name in missing)
        )
    POINT, LOG_PATH = args.point, args.log
    spec = StoreSpec(args.store, args.db, args.bootstrap, args.topic, args.nats_url, args.bucket)
    results = asyncio.run(run(spec))
    print(json.dumps(results, sort_keys=True))


if __name__ == "__main__":
    main()
