"""SIGKILL while a parent waits on its child workflow: after a restart both finish, once."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from app.workflow import EventType, HistoryEvent
from providers.sqlite import SQLiteStore
from tests.crash.child import TARGET, finished_attempts
from tests.crash.family import PARENT

pytestmark = pytest.mark.crash

TIMEOUT = 60

POINTS = [
    "before:1",  # the parent recorded child_workflow_started; the child is not saved
    "after:1",  # the child saved, nothing run yet
    "after:2",  # the child's first activity recorded as started
    "activity:target:a",  # inside the child's first activity, its side effect done
    "after:5",  # the child's second activity completed: it is about to end
    "after:6",  # the child ended; the parent is not told yet
    "activity:family:after",  # the parent's activity after the child ended
]


def _run(db: Path, log: Path, point: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.crash.family",
            "--db",
            str(db),
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


def _histories(db: Path) -> dict[str, list[HistoryEvent]]:
    async def load() -> dict[str, list[HistoryEvent]]:
        store = SQLiteStore(db)
        try:
            states = [await store.load(wid) for wid in (PARENT, TARGET)]
        finally:
            await store.close()
        return {s.workflow_id: s.history for s in states if s is not None}

    return asyncio.run(load())


@pytest.mark.parametrize("point", POINTS)
def test_sigkill_while_a_child_runs_then_resume(point: str, tmp_path: Path) -> None:
    db, log = tmp_path / "wf.db", tmp_path / "effects.log"
    crashed = _run(db, log, point)
    assert crashed.returncode == -signal.SIGKILL, (
        f"not killed at {point}: rc={crashed.returncode}\n{crashed.stdout}\n{crashed.stderr}"
    )
    recorded = {wid: finished_attempts(h) for wid, h in _histories(db).items()}

    resumed = _run(db, log, "none")
    assert resumed.returncode == 0, f"resume after {point} failed:\n{resumed.stderr}"
    assert json.loads(resumed.stdout.strip().splitlines()[-1]) == {
        "child": ["TARGET:A", "TARGET:B"],
        "after": "FAMILY:AFTER",
    }
    after = _histories(db)
    parent, child = after[PARENT], after[TARGET]
    kinds = [e.type for e in parent]
    assert kinds.count(EventType.CHILD_WORKFLOW_STARTED) == 1
    assert kinds.count(EventType.CHILD_WORKFLOW_COMPLETED) == 1
    assert [e.type for e in child].count(EventType.WORKFLOW_STARTED) == 1
    assert child[0].parent_workflow_id == PARENT
    runs = Counter(tuple(line.split()[:2]) for line in log.read_text().splitlines())
    for attempts in recorded.values():  # nothing recorded as done ran again
        for tag, attempt in attempts:
            assert runs[(tag, str(attempt))] == 1, f"{tag} attempt {attempt} ran twice"
