"""Child workflows across worker processes: SIGKILL a worker while a child runs.

A parent (``crash_app.family``) waits on its child (``crash_app.kid``), which
ran one activity and waits for the test's ``go`` signal. The worker that owns
the parent, the child or both is killed there; another worker is started.
The parent must complete with the right result, record its child once, and
every activity attempt the child recorded must have run exactly once.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import time
from collections import Counter
from pathlib import Path

import pytest

from app.streaming import KafkaExecutor
from app.streaming._messages import partition_for
from app.streaming.admin import ensure_topics
from app.streaming.settings import test_settings
from app.workflow import EventType, Hooks, Signal, WorkflowOptions, WorkflowState
from tests.streaming import crash_app
from tests.streaming.harness import OWNED, WorkerProcess
from tests.streaming.test_crash import _runs

pytestmark = pytest.mark.crash

WAIT = 60.0
PARTITIONS = 4
GO = 10
# kid(1): work(1) = 2, then work(2 + GO) = 13; family: work(13) = 14
EXPECTED = 14


def _owned(worker: WorkerProcess) -> set[int]:
    """The partitions the worker last said it owns (from its log)."""
    found = re.findall(rf"{OWNED}: \[([0-9, ]*)\]", worker.log())
    return {int(p) for p in found[-1].split(",") if p.strip()} if found else set()


def _settled(workers: list[WorkerProcess], timeout: float = WAIT) -> list[set[int]]:
    """Each worker's partitions once every partition has exactly one owner (log polled)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        owned = [_owned(w) for w in workers]
        if all(owned) and sorted(p for o in owned for p in o) == list(range(PARTITIONS)):
            return owned
        time.sleep(0.05)  # another process writes the logs: nothing to await
    raise AssertionError(f"partitions not settled: {[_owned(w) for w in workers]}")


def _family_id(parent_on: set[int], child_on: set[int]) -> str:
    """A parent id whose own partition is in ``parent_on`` and whose child's is in ``child_on``."""
    for i in range(10_000):
        wid = f"fam-{i}"
        if (
            partition_for(wid, PARTITIONS) in parent_on
            and partition_for(f"{wid}-kid", PARTITIONS) in child_on
        ):
            return wid
    raise AssertionError("no such id")


def _check_child(child: WorkflowState, runs: list[tuple[str, int, int, float]]) -> None:
    recorded = Counter(
        (e.step, e.attempt) for e in child.history if e.type is EventType.ACTIVITY_STARTED
    )
    ran = Counter((step, attempt) for wid, step, attempt, _ in runs if wid == child.workflow_id)
    assert all(n == 1 for n in recorded.values()), f"an attempt recorded twice: {recorded}"
    assert ran == recorded, f"runs {dict(ran)} are not one per recorded attempt {dict(recorded)}"


async def _family_survives(
    tmp_path: Path, kafka_bootstrap: str, workers: int, placement: str, victim: str
) -> None:
    """Run a family with the parent and the child placed as said, kill ``victim``'s owner."""
    app_id = "childcrash-" + hashlib.sha256(str(tmp_path).encode()).hexdigest()[:12]
    runs_file = tmp_path / "runs.txt"
    settings = test_settings(kafka_bootstrap, app_id=app_id, partitions=PARTITIONS)
    await ensure_topics(settings)
    env = {"STREAMFLOW_TEST_RUNS": str(runs_file)}

    def worker(name: str) -> WorkerProcess:
        return WorkerProcess(
            name, kafka_bootstrap, app_id, "tests.streaming.crash_app", tmp_path, extra_env=env
        )

    procs = [worker(f"w{i}") for i in range(workers)]
    try:
        for p in procs:
            p.start()
        owned = _settled(procs)
        if placement == "apart":
            wid = _family_id(owned[0], owned[1])
        else:
            wid = _family_id(owned[0], owned[0])
        kid_id = f"{wid}-kid"
        owners = {"parent": 0, "child": 1 if placement == "apart" else 0}
        child_waits = asyncio.Event()

        def completed(workflow_id: str, result: object) -> None:
            if workflow_id == kid_id:
                child_waits.set()  # its first activity is recorded: it waits for "go"

        async with KafkaExecutor(
            settings=settings, hooks=Hooks(on_activity_complete=completed)
        ) as ex:
            handle = await ex.execute(crash_app.family, WorkflowOptions(id=wid, input=1))
            await asyncio.wait_for(child_waits.wait(), WAIT)
            procs[owners[victim]].kill()
            procs.append(worker(f"w{len(procs)}").start())
            await ex.signal(kid_id, Signal("go", GO))
            try:
                assert await handle.result(timeout=WAIT) == EXPECTED
            except (TimeoutError, AssertionError):
                for p in procs:
                    p.dump_stacks()
                raise
            parent = await ex.describe(wid)
            child = await ex.describe(kid_id)
        started = [e for e in parent.history if e.type is EventType.CHILD_WORKFLOW_STARTED]
        ended = [e for e in parent.history if e.type is EventType.CHILD_WORKFLOW_COMPLETED]
        assert [(e.child_workflow_id, e.attempt) for e in started] == [(kid_id, 1)]
        assert [(e.result, e.new_run_id) for e in ended] == [(EXPECTED - 1, child.run_id)]
        assert child.history[0].parent_workflow_id == wid
        _check_child(child, _runs(runs_file))
        assert not procs[owners[victim]].alive
    finally:
        for p in procs:
            p.kill()


async def test_a_parent_and_child_survive_a_kill_of_their_worker(
    tmp_path: Path, kafka_bootstrap: str
) -> None:
    await _family_survives(tmp_path, kafka_bootstrap, 1, "together", "parent")


@pytest.mark.parametrize("victim", ["parent", "child"])
async def test_parent_and_child_on_two_workers_survive_a_kill_of_either(
    tmp_path: Path, kafka_bootstrap: str, victim: str
) -> None:
    await _family_survives(tmp_path, kafka_bootstrap, 2, "apart", victim)
