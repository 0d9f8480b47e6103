"""The console in a real browser: find a workflow by a search attribute, open it,
signal it through the form, watch it complete live, see its timeline; and the
token: without it the page refuses, with it it works."""

from __future__ import annotations

import asyncio
import html
import re
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from playwright.async_api import Browser, Page, expect

from app.console import ExecutorBackend, make_app
from app.workflow import DefaultExecutor, Signal, WorkflowContext, WorkflowOptions
from providers.sqlite import SQLiteStore

TOKEN = "s3cret-console-token"
WAIT_MS = 20_000


def pack(order: dict[str, object]) -> str:
    return f"packed {order['id']}"


async def approval(ctx: WorkflowContext, order: dict[str, object]) -> dict[str, object]:
    ctx.upsert_search_attributes({"stage": "awaiting approval"})
    decision = await ctx.receive_signal("approve").receive(timeout=600)
    packed = await ctx.execute_activity(pack, order)
    await ctx.sleep(0.2)
    ctx.upsert_search_attributes({"stage": "done"})
    return {"decision": decision, "packed": packed}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
async def console(tmp_path: Path) -> AsyncIterator[tuple[str, DefaultExecutor]]:
    async with DefaultExecutor(store=SQLiteStore(tmp_path / "wf.db"), close_store=True) as ex:
        for i, customer in enumerate(["acme", "globex", "initech"]):
            await ex.execute(
                approval,
                WorkflowOptions(
                    id=f"order-{i}",
                    input={"id": i},
                    search_attributes={"customer": customer},
                    memo={"note": f"order {i}"},
                ),
            )
        runner = web.AppRunner(make_app(ExecutorBackend(ex, "test store"), TOKEN))
        await runner.setup()
        port = _free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        try:
            yield f"http://127.0.0.1:{port}", ex
        finally:
            await runner.cleanup()


async def test_without_the_token_nothing_is_shown_or_done(
    browser: Browser, console: tuple[str, DefaultExecutor], artifacts: Path
) -> None:
    url, ex = console
    page = await browser.new_page()
    response = await page.goto(f"{url}/workflows/order-0")
    assert response is not None and response.status == 401
    await expect(page.locator("#login")).to_be_visible()
    assert "order-0" not in await page.content()
    await page.fill("input[name=token]", "wrong-token-value")
    await page.click("#login button")
    await expect(page.locator(".msg.err")).to_contain_text("not right")
    await page.screenshot(path=str(artifacts / "refused.png"))
    async with aiohttp.ClientSession() as http:
        posted = await http.post(f"{url}/workflows/order-0/cancel")
        assert posted.status == 401
        bearer = {"Authorization": f"Bearer {TOKEN}"}
        listed = await http.get(f"{url}/", headers=bearer)
        assert listed.status == 200 and "order-0" in await listed.text()
    assert (await ex.describe("order-0")).status.value == "running"  # not cancelled
    await page.close()


async def test_find_open_signal_and_watch_it_complete(
    browser: Browser, console: tuple[str, DefaultExecutor], artifacts: Path
) -> None:
    url, _ = console
    page: Page = await browser.new_page(viewport={"width": 1280, "height": 900})
    await page.goto(f"{url}/?token={TOKEN}")
    await expect(page.locator("#workflows tbody tr")).to_have_count(3)
    await expect(page.locator(".counts")).to_contain_text("running: 3")

    await page.fill("input[name=attrs]", "customer=globex")
    await page.click("#filters button")
    rows = page.locator("#workflows tbody tr")
    await expect(rows).to_have_count(1)
    await expect(rows.first).to_have_attribute("data-workflow-id", "order-1")
    await page.screenshot(path=str(artifacts / "list-filtered.png"))

    await page.click("#workflows a:text('order-1')")
    await expect(page.locator("#header")).to_contain_text('customer="globex"')
    await expect(page.locator("#header")).to_contain_text("order 1")  # the memo
    await expect(page.locator("#status")).to_have_text("running")

    await page.click("#pause-form button")
    await expect(page.locator("#message")).to_have_text("pause recorded")
    await expect(page.locator("#header")).to_contain_text("Paused")
    await page.click("#resume-form button")
    await expect(page.locator("#message")).to_have_text("resume recorded")

    await page.fill("#query-form input[name=name]", "status")
    await page.click("#query-form button")
    await expect(page.locator("#message")).to_have_text('query status: "running"')

    await page.fill("#signal-form input[name=name]", "approve")
    await page.fill("#signal-form input[name=payload]", '{"by": "ann"}')
    await page.click("#signal-form button")
    await expect(page.locator("#message")).to_have_text("signal recorded")
    # the page follows the run as it goes (server-sent events), with no reload
    await expect(page.locator("#status")).to_have_text("completed", timeout=WAIT_MS)
    await expect(page.locator("#actions")).to_have_count(0)  # an ended run takes no actions
    await expect(page.locator("#result")).to_contain_text('"by": "ann"')
    await expect(page.locator("#timeline rect.bar[data-kind=completed]")).to_have_count(1)
    await expect(page.locator("#timeline rect.bar[data-kind=timer]")).to_have_count(1)
    await expect(page.locator("#timeline line.tick[data-event=signal_received]")).to_have_count(1)
    await expect(page.locator("#history tr[data-event=workflow_completed]")).to_have_count(1)
    await page.screenshot(path=str(artifacts / "workflow-completed.png"), full_page=True)
    await page.close()


async def test_a_change_before_the_stream_starts_is_not_missed(
    console: tuple[str, DefaultExecutor],
) -> None:
    """The run may move between drawing the page and the browser opening its stream."""
    url, ex = console
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    async with aiohttp.ClientSession(headers=bearer) as http:
        drawn = await (await http.get(f"{url}/workflows/order-1")).text()
        found = re.search(r'data-stream="([^"]+)"', drawn)
        assert found is not None
        await ex.signal("order-1", Signal("approve", {"by": "bob"}))
        assert (await ex.get_handle("order-1").result(timeout=WAIT_MS / 1000))["packed"]
        async with http.get(url + html.unescape(found.group(1))) as stream:
            assert stream.status == 200
            line = await asyncio.wait_for(stream.content.readline(), WAIT_MS / 1000)
    assert line == b"event: change\n"


async def test_a_bad_signal_payload_is_shown_not_sent(
    browser: Browser, console: tuple[str, DefaultExecutor]
) -> None:
    url, ex = console
    page = await browser.new_page()
    await page.goto(f"{url}/workflows/order-2?token={TOKEN}")
    await page.fill("#signal-form input[name=name]", "approve")
    await page.fill("#signal-form input[name=payload]", "{not json")
    await page.click("#signal-form button")
    await expect(page.locator("#message.err")).to_contain_text("signal failed")
    history = (await ex.describe("order-2")).history
    assert all(e.type.value != "signal_received" for e in history)
    await page.close()


async def test_schedules_page_triggers_and_deletes(
    browser: Browser, console: tuple[str, DefaultExecutor], artifacts: Path
) -> None:
    url, ex = console
    await ex.create_schedule("nightly", approval, {"id": 9}, cron="0 3 * * *", paused=True)
    page = await browser.new_page()
    await page.goto(f"{url}/schedules?token={TOKEN}")
    row = page.locator("#schedules tr[data-schedule-id=nightly]")
    await expect(row).to_contain_text("cron 0 3 * * *")
    await expect(row).to_contain_text("paused")
    await row.locator("button[value=trigger]").click()
    await expect(page.locator("#message")).to_have_text("trigger recorded for nightly")
    await expect(row).to_contain_text("1 / 0")  # started / skipped
    await expect(row).to_contain_text("nightly@")  # the run it started
    await page.screenshot(path=str(artifacts / "schedules.png"))
    await row.locator("button[value=delete]").click()
    await expect(page.locator("#schedules")).to_contain_text("No schedules.")
    assert await ex.list_schedules() == []
    await page.close()
