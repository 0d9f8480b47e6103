"""A schedule on the streaming runtime: one run per tick across workers and a SIGKILL.

Two worker processes share the partitions; the schedule's own workflow lives
on the first. Runs start every half second; the first worker is killed after
two of them, and a new one joins. Every tick up to the end must have exactly
one run (its id is derived from the tick), started once in the schedule's
history, and each run's activity ran once.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import Counter
from pathlib import Path

import pytest

from app.streaming import KafkaExecutor
from app.streaming._messages import partition_for
from app.streaming.admin import ensure_topics
from app.streaming.settings import test_settings
from app.workflow import EventType, Hooks
from app.workflow._schedules import workflow_id_of
from tests.streaming import crash_app
from tests.streaming.harness import WorkerProcess
from tests.streaming.test_child_crash import PARTITIONS, _check_child, _settled
from tests.streaming.test_crash import _runs
from tests.test_schedules import tick_ids

pytestmark = pytest.mark.crash

EVERY = 0.5
TICKS = 16  # 8 s of ticks: the kill, the takeover (about 6 s) and the catch-up fit in
WAIT = 90.0


async def test_one_run_per_tick_across_a_kill_of_the_schedules_worker(
    tmp_path: Path, kafka_bootstrap: str
) -> None:
    app_id = "sched-" + hashlib.sha256(str(tmp_path).encode()).hexdigest()[:12]
    runs_file = tmp_path / "runs.txt"
    settings = test_settings(kafka_bootstrap, app_id=app_id, partitions=PARTITIONS)
    await ensure_topics(settings)
    env = {"STREAMFLOW_TEST_RUNS": str(runs_file)}

    def worker(name: str) -> WorkerProcess:
        return WorkerProcess(
            name, kafka_bootstrap, app_id, "tests.streaming.crash_app", tmp_path, extra_env=env
        )

    procs = [worker("w0"), worker("w1")]
    try:
        for p in procs:
            p.start()
        owned = _settled(procs)
        sid = next(
            f"s{i}"
            for i in range(10_000)
            if partition_for(workflow_id_of(f"s{i}"), PARTITIONS) in owned[0]
        )
        done: set[str] = set()
        changed = asyncio.Event()

        def completed(workflow_id: str, result: object) -> None:
            done.add(workflow_id)
            changed.set()

        async def until_done(ids: list[str]) -> None:
            async with asyncio.timeout(WAIT):
                while not done.issuperset(ids):
                    changed.clear()
                    await changed.wait()

        hooks = Hooks(on_workflow_complete=completed)
        async with KafkaExecutor(settings=settings, hooks=hooks) as ex:
            created = await ex.create_schedule(
                # allow_all: every tick gets its run (skip would skip the ticks whose run
                # could not end while the takeover went on)
                sid,
                crash_app.chain,
                1,
                every=EVERY,
                catchup_window=60,
                overlap="allow_all",
            )
            ids = tick_ids(created, TICKS)
            await until_done(ids[:2])
            procs[0].kill()
            procs.append(worker("w2").start())
            try:
                await until_done(ids)
            except TimeoutError:
                for p in procs:
                    p.dump_stacks()
                state = await ex.describe_schedule(sid)
                missing = sorted(set(ids) - done)
                raise AssertionError(f"ticks without a completed run: {missing}; {state}") from None
            await ex.delete_schedule(sid)
            schedule = await ex.describe(workflow_id_of(sid))
            children = [await ex.describe(wid) for wid in ids]
        started = Counter(
            e.child_workflow_id
            for e in schedule.history
            if e.type is EventType.CHILD_WORKFLOW_STARTED
        )
        assert all(started[wid] == 1 for wid in ids), started
        assert all(n == 1 for n in started.values()), "a tick was started twice"
        runs = _runs(runs_file)
        for child in children:
            assert child.status.value == "completed"
            assert child.history[0].parent_workflow_id == workflow_id_of(sid)
            _check_child(child, runs)
        assert not procs[0].alive
    finally:
        for p in procs:
            p.kill()
