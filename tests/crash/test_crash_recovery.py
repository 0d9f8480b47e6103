"""SIGKILL a child process at 21 points of a workflow run; a new process must finish the job.

Each case: a child runs four workflows on a store (SQLite, Kafka or NATS) and
is killed (SIGKILL, by itself, at a precise point: around a store write,
inside an activity, during a durable sleep, while a signal arrives). A second
child resumes from the same store and runs every workflow to its end. Then:

* every workflow completed with the right result;
* no activity attempt whose completion (or failure) was recorded before the
  kill ran again (side-effect log: one line per execution);
* each history is well-formed: ids consecutive, one start per attempt, one
  result per step, one terminal event;
* the sleep fired no earlier than its original due time.

Histories are read back through the store's own ``load``.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from app.workflow import EventType, HistoryEvent
from tests.crash.child import SLEEP, WORKFLOW_IDS, StoreSpec, finished_attempts

pytestmark = pytest.mark.crash

POINTS = [
    "after:1",  # started, nothing else
    "before:2",  # first activity scheduled but not recorded
    "after:2",  # activity_started recorded, activity not yet run
    "activity:target:a",  # inside a thread-pool activity, side effect done
    "before:3",  # activity ran, its completion not recorded
    "after:3",  # completion recorded, not yet seen by the workflow
    "activity:target:b",  # inside an async activity
    "after:6",  # three parallel activities recorded as started
    "activity:target:c1",  # inside one of the parallel activities
    "after:8",  # two of three parallel completions recorded
    "after:11",  # an attempt failed, retry backoff pending
    "after:12",  # backoff timer fired, retry not yet recorded
    "activity:target:d",  # inside the retried activity (attempt 1 side effect)
    "after:16",  # the step before the sleep completed
    "sleep",  # the durable sleep is armed
    "before:17",  # a signal arriving: not yet durable
    "after:17",  # a signal arriving: durable, signal() not yet returned
    "after:18",  # the sleep's timer fired
    "activity:target:e",  # the last activity
    "before:21",  # the result is computed but the completion not recorded
    "after:21",  # completed
]
# Every point runs on SQLite. A case on Kafka or NATS takes up to twice as
# long (the store reads its topic or bucket at start, each write is a round
# trip), so those run this subset, which keeps each kind of point: around store
# writes, inside an activity, during a retry, during the durable sleep, around
# a signal, and at the very end.
SERVER_POINTS = [
    "after:2",  # a store write: activity_started durable, activity not yet run
    "before:3",  # a store write: activity ran, its completion lost
    "activity:target:b",  # inside an async activity
    "after:11",  # during a retry: an attempt failed, backoff pending
    "sleep",  # during the durable sleep
    "before:17",  # a signal arriving: not yet durable
    "after:17",  # a signal arriving: durable, signal() not yet returned
    "after:21",  # completed
]
CASES = [
    *(pytest.param("sqlite", point, id=f"sqlite-{point}") for point in POINTS),
    *(
        pytest.param(kind, point, id=f"{kind}-{point}")
        for kind in ("kafka", "nats")
        for point in SERVER_POINTS
    ),
]
TIMEOUT = 60


@pytest.fixture
def store_kind(request: pytest.FixtureRequest) -> str:
    """The kind of store of the case (set by ``parametrize``)."""
    kind: str = request.param
    return kind


@pytest.fixture
def spec(store_kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> StoreSpec:
    """A fresh store of the case's kind; the session's servers start only when needed."""
    name = uuid.uuid4().hex[:12]
    if store_kind == "kafka":
        bootstrap: str = request.getfixturevalue("kafka_bootstrap")
        return StoreSpec("kafka", bootstrap=bootstrap, topic=f"crash-{name}")
    if store_kind == "nats":
        url: str = request.getfixturevalue("nats_url")
        return StoreSpec("nats", nats_url=url, bucket=f"crash_{name}")
    return StoreSpec("sqlite", db=str(tmp_path / "wf.db"))


def _run_child(spec: StoreSpec, log: Path, point: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.crash.child",
            *spec.args(),
            "--log",
            str(log),
            "--point",
            point,
        ],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        stdin=subprocess.DEVNULL,
    )


def _histories(spec: StoreSpec) -> dict[str, list[HistoryEvent]]:
    if spec.kind == "sqlite" and not Path(spec.db).exists():
        return {}  # killed before the file existed: do not create it here

    async def load_all() -> dict[str, list[HistoryEvent]]:
        store = spec.open()
        try:
            async with asyncio.timeout(TIMEOUT):
                states = [await store.load(wid) for wid in WORKFLOW_IDS]
        finally:
            await store.close()
        return {state.workflow_id: state.history for state in states if state is not None}

    return asyncio.run(load_all())


def _expected(wid: str) -> dict[str, Any]:
    up = wid.upper()
    return {
        "a": f"{up}:A",
        "b": f"{up}:B",
        "c": [f"{up}:C{i}" for i in range(3)],
        "d": f"{up}:D",
        "go": f"go-{wid}",
        "e": f"{up}:E",
    }


def _check_history(wid: str, history: list[HistoryEvent]) -> None:
    assert [e.id for e in history] == list(range(1, len(history) + 1)), wid
    starts = Counter((e.step, e.attempt) for e in history if e.type is EventType.ACTIVITY_STARTED)
    assert max(starts.values()) == 1, f"{wid}: an attempt started twice: {starts}"
    completions = Counter(e.step for e in history if e.type is EventType.ACTIVITY_COMPLETED)
    assert set(completions.values()) == {1}, f"{wid}: a step completed twice"
    assert len(completions) == 8  # a, b, c0-2, d, before-sleep, e
    terminal = [e for e in history if e.type is EventType.WORKFLOW_COMPLETED]
    assert len(terminal) == 1 and history[-1] is terminal[0]
    assert [e.type for e in history].count(EventType.SIGNAL_RECEIVED) == 1
    # the sleep fired no earlier than its due time (workflow time when it started + SLEEP)
    before_sleep = next(
        e
        for e in history
        if e.type is EventType.ACTIVITY_COMPLETED and e.result == f"{wid}:before-sleep".upper()
    )
    fired = [e for e in history if e.type is EventType.TIMER_FIRED and e.duration == SLEEP]
    assert len(fired) == 1
    assert (fired[0].timestamp - before_sleep.timestamp).total_seconds() >= SLEEP


@pytest.mark.parametrize(("store_kind", "point"), CASES, indirect=["store_kind"])
def test_sigkill_then_resume(spec: StoreSpec, point: str, tmp_path: Path) -> None:
    log = tmp_path / "effects.log"
    crashed = _run_child(spec, log, point)
    assert crashed.returncode == -signal.SIGKILL, (
        f"child on {spec.kind} was not killed at {point}: rc={crashed.returncode}\n"
        f"{crashed.stdout}\n{crashed.stderr}"
    )
    before = _histories(spec)
    recorded = {wid: finished_attempts(h) for wid, h in before.items()}
    crashed_pid_lines = log.read_text().splitlines() if log.exists() else []

    resumed = _run_child(spec, log, "none")
    assert resumed.returncode == 0, (
        f"resume on {spec.kind} failed after {point}:\n{resumed.stdout}\n{resumed.stderr}"
    )
    results = json.loads(resumed.stdout.strip().splitlines()[-1])
    assert results == {wid: _expected(wid) for wid in WORKFLOW_IDS}

    after = _histories(spec)
    for wid in WORKFLOW_IDS:
        _check_history(wid, after[wid])
    runs = Counter(tuple(line.split()[:2]) for line in log.read_text().splitlines())
    for attempts in recorded.values():
        for tag, attempt in attempts:
            assert runs[(tag, str(attempt))] == 1, (
                f"{tag} attempt {attempt} was recorded as finished before the kill at {point} "
                f"but ran {runs[(tag, str(attempt))]} times"
            )
    # everything that finished in the end ran at least once
    for wid in WORKFLOW_IDS:
        for tag, attempt in finished_attempts(after[wid]):
            assert runs[(tag, str(attempt))] >= 1
    assert len(crashed_pid_lines) <= len(log.read_text().splitlines())
