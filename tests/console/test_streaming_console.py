"""The console over the streaming runtime (HTTP, no browser), and ``python -m app ui``."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import uuid
from pathlib import Path

import aiohttp
from aiohttp.test_utils import TestClient, TestServer

from app.console import ExecutorBackend, make_app
from app.streaming import KafkaExecutor, StreamingWorker
from app.streaming.admin import ensure_topics
from app.streaming.settings import test_settings
from app.workflow import DefaultExecutor, WorkflowContext, WorkflowOptions
from providers.sqlite import SQLiteStore
from tests.console.test_browser import TOKEN, _free_port

ROOT = Path(__file__).resolve().parents[2]
STOP_BOUND = 30.0
START_BOUND = 60.0


async def waiter(ctx: WorkflowContext, n: int) -> int:
    return int(await ctx.receive_signal("go", int).receive(timeout=600)) + n


async def test_the_console_over_a_broker(kafka_bootstrap: str) -> None:
    settings = test_settings(kafka_bootstrap, app_id=f"ui-{uuid.uuid4().hex[:8]}")
    await ensure_topics(settings)
    worker = StreamingWorker(settings, [waiter], [])
    await worker.start()
    try:
        async with KafkaExecutor(settings=settings) as ex:
            handle = await ex.execute(
                waiter, WorkflowOptions(id="s-1", input=1, search_attributes={"team": "blue"})
            )
            await ex.execute(waiter, WorkflowOptions(id="s-2", input=2))
            app = make_app(ExecutorBackend(ex, "broker"), TOKEN)
            async with TestClient(TestServer(app)) as client:
                auth = {"Authorization": f"Bearer {TOKEN}"}
                assert (await client.get("/")).status == 401
                listed = await client.get("/?attrs=team=blue", headers=auth)
                text = await listed.text()
                assert 'data-workflow-id="s-1"' in text and 'data-workflow-id="s-2"' not in text
                assert "running: 2" in text
                page = await (await client.get("/workflows/s-1", headers=auth)).text()
                assert "Waiting on" in page  # the owner's answer to describe
                sent = await client.post(
                    "/workflows/s-1/signal",
                    data={"name": "go", "payload": "41"},
                    headers=auth,
                    allow_redirects=False,
                )
                assert sent.status == 303 and "signal+recorded" in sent.headers["Location"]
                assert await handle.result(timeout=START_BOUND) == 42
                live = await (await client.get("/workflows/s-1/live", headers=auth)).text()
                assert 'class="s-completed"' in live and "timeline" in live
                gone = await client.get("/workflows/nope", headers=auth)
                assert gone.status == 404
    finally:
        await asyncio.wait_for(worker.stop(), STOP_BOUND)


async def _seed(db: Path) -> None:
    async with DefaultExecutor(store=SQLiteStore(db), close_store=True) as ex:
        await ex.execute(waiter, WorkflowOptions(id="cli-1", input=1))


async def test_python_m_app_ui_serves_a_store_read_only(tmp_path: Path) -> None:
    db = tmp_path / "wf.db"
    await _seed(db)
    port = _free_port()
    env = {**os.environ, "STREAMFLOW_UI_TOKEN": TOKEN, "PYTHONPATH": str(ROOT)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        *("-m", "app", "ui", "--db", str(db), "--port", str(port)),
        cwd=tmp_path,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), START_BOUND)).decode()
        assert f"Console on http://127.0.0.1:{port}/" in line, line
        base = f"http://127.0.0.1:{port}"
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {TOKEN}"}) as http:
            page = await (await http.get(f"{base}/")).text()
            assert 'data-workflow-id="cli-1"' in page and "(read-only)" in page
            shown = await (await http.get(f"{base}/workflows/cli-1")).text()
            assert "Actions" not in shown  # no executor: nothing to act with
            refused = await http.post(f"{base}/workflows/cli-1/cancel")
            assert refused.status == 403
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), STOP_BOUND)
        except TimeoutError:
            proc.kill()
            await asyncio.wait_for(proc.wait(), STOP_BOUND)
