"""``python -m app replay``: new code checked against the histories in a SQLite store."""

from __future__ import annotations

import asyncio
import importlib
import textwrap
from pathlib import Path

import pytest

from app.cli import main
from app.workflow import DefaultExecutor, EventType, Signal, WorkflowOptions
from providers.sqlite import SQLiteStore

ACTIVITIES = """
from app.workflow import WorkflowContext

def old_greeting(name: str) -> str:
    return f"hello {name}"

def new_greeting(name: str) -> str:
    return f"Hello, {name}!"

activities = [old_greeting, new_greeting]
"""

MODULES = {
    "greet_v1": """
async def greet(ctx: WorkflowContext, name: str) -> str:
    text = await ctx.execute_activity(old_greeting, name)
    return f"{text} {await ctx.receive_signal('go').receive()}"
""",
    "greet_patched": """
async def greet(ctx: WorkflowContext, name: str) -> str:
    if ctx.patched("polite"):
        text = await ctx.execute_activity(new_greeting, name)
    else:
        text = await ctx.execute_activity(old_greeting, name)
    return f"{text} {await ctx.receive_signal('go').receive()}"
""",
    "greet_unpatched": """
async def greet(ctx: WorkflowContext, name: str) -> str:
    text = await ctx.execute_activity(new_greeting, name)
    return f"{text} {await ctx.receive_signal('go').receive()}"
""",
}


def write_apps(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The app modules greet_v1, greet_patched and greet_unpatched, importable."""
    for name, body in MODULES.items():
        text = ACTIVITIES + textwrap.dedent(body) + "\nworkflows = [greet]\n"
        (tmp_path / f"{name}.py").write_text(text)
    monkeypatch.syspath_prepend(str(tmp_path))


@pytest.fixture
def apps(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    write_apps(tmp_path, monkeypatch)
    db = tmp_path / "wf.db"

    async def record() -> None:
        v1 = importlib.import_module("greet_v1")
        async with DefaultExecutor(
            store=SQLiteStore(db), workflows=v1.workflows, activities=v1.activities
        ) as ex:
            done = await ex.execute(v1.greet, WorkflowOptions(id="done", input="ada"))
            await ex.execute(v1.greet, WorkflowOptions(id="waiting", input="bob"))
            await ex.signal("done", Signal("go", "!"))
            await done.result(timeout=10)
            for _ in range(200):
                state = await ex.describe("waiting")
                if EventType.ACTIVITY_COMPLETED in [e.type for e in state.history]:
                    break
                await asyncio.sleep(0.01)

    asyncio.run(record())
    return db


def test_an_unpatched_change_is_reported_with_its_event_id(
    apps: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["replay", "--app", "greet_unpatched", "--db", str(apps), "--all"]) == 1
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith("FAIL")]
    assert len(lines) == 2
    assert all("diverges at event 2" in line and "new_greeting" in line for line in lines)
    assert "2 replayed, 2 would diverge" in out


def test_a_patched_change_replays(apps: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["replay", "--app", "greet_patched", "--db", str(apps)]) == 0
    out = capsys.readouterr().out
    assert "ok    done (greet, 5 events)" in out and "ok    waiting (greet" in out
    assert "2 replayed, 0 would diverge" in out


def test_one_workflow_and_an_unknown_one(apps: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["replay", "--app", "greet_unpatched", "--store", str(apps), "--workflow-id"]
    assert main([*argv, "waiting"]) == 1
    out = capsys.readouterr().out
    assert "FAIL  waiting (greet) diverges at event 2" in out and "done" not in out
    with pytest.raises(SystemExit, match="'nope' not found"):
        main([*argv, "nope"])


def test_a_running_workflow_whose_type_is_gone_fails(
    apps: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "other_app.py").write_text("async def other(ctx): return 1\nworkflows = [other]\n")
    assert main(["replay", "--app", "other_app", "--db", str(apps)]) == 1
    out = capsys.readouterr().out
    assert "skip  done" in out
    assert "FAIL  waiting: its type 'greet' is not in other_app" in out


def test_show_renders_a_marker_with_its_change_id(
    apps: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "patched.db"

    async def record() -> None:
        v2 = importlib.import_module("greet_patched")
        async with DefaultExecutor(
            store=SQLiteStore(db), workflows=v2.workflows, activities=v2.activities
        ) as ex:
            handle = await ex.execute(v2.greet, WorkflowOptions(id="new", input="cy"))
            await ex.signal("new", Signal("go", "!"))
            await handle.result(timeout=10)

    asyncio.run(record())
    assert main(["show", "new", "--db", str(db)]) == 0
    rows = capsys.readouterr().out.splitlines()
    marker = next(row for row in rows if "marker_recorded" in row)
    assert "polite" in marker and "patched" in marker
