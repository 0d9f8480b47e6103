"""``python -m app replay --broker``: histories read from the streaming runtime's topics."""

from __future__ import annotations

import asyncio
import hashlib
import importlib
from pathlib import Path

import pytest

from app.cli import main
from app.streaming import KafkaExecutor, StreamingWorker
from app.streaming.admin import ensure_topics
from app.streaming.settings import test_settings
from app.workflow import EventType, Signal, WorkflowOptions
from tests.test_cli_replay import write_apps


def test_replay_reads_the_broker(
    kafka_bootstrap: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    write_apps(tmp_path, monkeypatch)
    monkeypatch.setenv("STREAMFLOW_FETCH_WAIT_MS", "10")
    app_id = "rp-" + hashlib.sha256(str(tmp_path).encode()).hexdigest()[:12]
    settings = test_settings(kafka_bootstrap, app_id=app_id)
    broker = ["--broker", kafka_bootstrap, "--app-id", app_id, "--partitions", "4"]

    async def scenario() -> tuple[int, int]:
        v1 = importlib.import_module("greet_v1")
        await ensure_topics(settings)
        worker = StreamingWorker(settings, v1.workflows, v1.activities)
        await worker.start()
        try:  # the histories are read through the running (old) workers
            async with KafkaExecutor(settings=settings, workflows=v1.workflows) as ex:
                done = await ex.execute(v1.greet, WorkflowOptions(id="done", input="ada"))
                await ex.execute(v1.greet, WorkflowOptions(id="waiting", input="bob"))
                await ex.signal("done", Signal("go", "!"))
                await done.result(timeout=30)
                for _ in range(500):
                    state = await ex.describe("waiting")
                    if EventType.ACTIVITY_COMPLETED in [e.type for e in state.history]:
                        break
                    await asyncio.sleep(0.02)
            unpatched = await asyncio.to_thread(
                main, ["replay", "--app", "greet_unpatched", *broker]
            )
            patched = await asyncio.to_thread(
                main, ["replay", "--app", "greet_patched", *broker, "--workflow-id", "waiting"]
            )
            return unpatched, patched
        finally:
            await worker.stop()

    assert asyncio.run(scenario()) == (1, 0)
    out = capsys.readouterr().out
    assert out.count("diverges at event 2") == 2
    assert "2 replayed, 2 would diverge" in out
    assert "ok    waiting (greet, 3 events)" in out
