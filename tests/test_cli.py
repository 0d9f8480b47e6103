"""The command line, run for real: ``python -m app demo | list | show`` on SQLite files."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from app.cli import main
from app.workflow import WorkflowFilter
from providers.sqlite import SQLiteStore

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 60.0

EXPECTED_HISTORY = [
    "workflow_started",
    "activity_started",  # reserve_inventory
    "activity_completed",
    "activity_started",  # charge_payment, attempt 1
    "activity_failed",
    "timer_fired",  # retry backoff
    "activity_started",  # charge_payment, attempt 2
    "activity_completed",
    "signal_received",  # approval
    "timer_fired",  # ctx.sleep(1)
    "activity_started",  # ship_order
    "activity_completed",
    "workflow_completed",
]

ROW = re.compile(r"^\s*(\d+)\s+\d\d:\d\d:\d\d\.\d{3}\s+([a-z_]+)\b")


def run_cli(*args: str, cwd: Path, env_db: Path) -> subprocess.CompletedProcess[str]:
    """``python -m app *args`` in ``cwd`` with ``$WORKFLOWS_DB`` set to ``env_db``."""
    env = dict(os.environ)
    env["WORKFLOWS_DB"] = str(env_db)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-m", "app", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )


def history_rows(output: str) -> list[tuple[int, str]]:
    """(id, event type) of each history table row in ``output``."""
    rows = []
    for line in output.splitlines():
        match = ROW.match(line)
        if match:
            rows.append((int(match[1]), match[2]))
    return rows


def workflow_id_in(output: str) -> str:
    match = re.search(r"^Started\s+(order-[0-9a-f]{8})\b", output, re.MULTILINE)
    assert match, output
    return match[1]


@dataclass(frozen=True)
class DemoRun:
    db: Path
    env_db: Path
    cwd: Path
    output: str
    workflow_id: str


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> DemoRun:
    """One ``demo --db`` run shared by the tests that inspect its database."""
    cwd = tmp_path_factory.mktemp("demo")
    db, env_db = cwd / "demo.db", cwd / "from-env.db"
    proc = run_cli("demo", "--db", str(db), cwd=cwd, env_db=env_db)
    assert proc.returncode == 0, proc.stderr
    return DemoRun(db, env_db, cwd, proc.stdout, workflow_id_in(proc.stdout))


def test_demo_prints_history_and_result(demo: DemoRun) -> None:
    out = demo.output
    assert [kind for _, kind in history_rows(out)] == EXPECTED_HISTORY
    assert "ConnectionError: payment gateway timed out (transient)" in out
    assert "from demo: " in out
    assert "after 1s" in out
    assert "query 'stage' -> 'completed'" in out
    result = out[out.index("\nResult\n") :]
    assert re.search(rf"order_id\s+{demo.workflow_id}", result)
    assert re.search(r"status\s+shipped", result)
    assert re.search(r"approved_by\s+ops@example\.com", result)
    assert re.search(r"tracking_number\s+TRK-[0-9A-F]{8}", result)
    assert demo.db.exists()
    assert not demo.env_db.exists(), "--db must take precedence over $WORKFLOWS_DB"


def test_list_shows_the_demo_as_completed(demo: DemoRun) -> None:
    proc = run_cli("list", "--db", str(demo.db), cwd=demo.cwd, env_db=demo.env_db)
    assert proc.returncode == 0, proc.stderr
    header, rule, *rows = proc.stdout.splitlines()
    assert re.split(r"\s{2,}", header) == [
        "WORKFLOW ID",
        "TYPE",
        "STATUS",
        "RUN ID",
        "STARTED",
        "CLOSED",
        "EVENTS",
        "SEARCH",
    ]
    assert set(rule.replace(" ", "")) == {"-"}
    [row] = rows
    cells = row.split()
    assert cells[:3] == [demo.workflow_id, "order_workflow", "completed"]
    assert cells[-2:] == [str(len(EXPECTED_HISTORY)), "-"]

    completed = run_cli(
        "list", "--db", str(demo.db), "--status", "completed", cwd=demo.cwd, env_db=demo.env_db
    )
    assert demo.workflow_id in completed.stdout
    running = run_cli(
        "list", "--db", str(demo.db), "--status", "running", cwd=demo.cwd, env_db=demo.env_db
    )
    assert running.returncode == 0
    assert demo.workflow_id not in running.stdout
    assert "No running workflows" in running.stdout


def test_show_prints_header_and_events_in_order(demo: DemoRun) -> None:
    proc = run_cli("show", demo.workflow_id, "--db", str(demo.db), cwd=demo.cwd, env_db=demo.env_db)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert re.search(rf"^Workflow\s+{demo.workflow_id}$", out, re.MULTILINE)
    assert re.search(r"^Run\s+[0-9a-f]{32}$", out, re.MULTILINE)
    assert re.search(r"^Type\s+order_workflow$", out, re.MULTILINE)
    assert re.search(r"^Status\s+completed$", out, re.MULTILINE)
    assert re.search(r'^Input\s+\{"order_id": ', out, re.MULTILINE)
    assert re.search(r'^Result\s+\{.*"status": "shipped"', out, re.MULTILINE)
    rows = history_rows(out)
    assert [event_id for event_id, _ in rows] == list(range(1, len(EXPECTED_HISTORY) + 1))
    assert [kind for _, kind in rows] == EXPECTED_HISTORY


def test_show_unknown_workflow_exits_1(demo: DemoRun) -> None:
    proc = run_cli("show", "unknown-id", "--db", str(demo.db), cwd=demo.cwd, env_db=demo.env_db)
    assert proc.returncode == 1
    assert "'unknown-id' not found" in proc.stderr
    assert proc.stdout == ""


def test_invalid_status_is_a_usage_error(tmp_path: Path) -> None:
    proc = run_cli("list", "--status", "bogus", cwd=tmp_path, env_db=tmp_path / "wf.db")
    assert proc.returncode == 2
    assert "invalid choice: 'bogus'" in proc.stderr
    assert not (tmp_path / "wf.db").exists()


def test_demo_uses_workflows_db_from_the_environment(tmp_path: Path) -> None:
    env_db = tmp_path / "custom.db"
    proc = run_cli("demo", cwd=tmp_path, env_db=env_db)
    assert proc.returncode == 0, proc.stderr
    assert env_db.exists()
    assert not (tmp_path / "workflows.db").exists()
    assert f"Database  {env_db}" in proc.stdout

    listed = run_cli("list", cwd=tmp_path, env_db=env_db)
    assert workflow_id_in(proc.stdout) in listed.stdout


def test_list_on_an_empty_database(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "missing.db"
    assert main(["list", "--db", str(missing)]) == 0
    assert capsys.readouterr().out == f"No workflows in {missing}.\n"
    assert not missing.exists(), "a read-only command must not create a database"

    empty = tmp_path / "empty.db"

    async def create() -> None:
        async with SQLiteStore(empty) as store:
            assert await store.list(WorkflowFilter()) == []

    asyncio.run(create())
    assert main(["list", "--db", str(empty), "--status", "failed"]) == 0
    captured = capsys.readouterr()
    assert captured.out == f"No failed workflows in {empty}.\n"
    assert captured.err == ""


async def _continued_workflow(db: Path) -> None:
    from app.workflow import DefaultExecutor, Signal, WorkflowOptions
    from tests.conformance import workflows as wf

    state = {"total": 0, "count": 0, "target": 3, "every": 1, "runs": 1}
    async with DefaultExecutor(SQLiteStore(db), workflows=[wf.counter], close_store=True) as ex:
        handle = await ex.execute(wf.counter, WorkflowOptions(id="chain", input=state))
        for n in (1, 2, 3):
            await ex.signal("chain", Signal("add", n))
        await handle.result(timeout=TIMEOUT)


def test_show_lists_the_continue_as_new_chain(tmp_path: Path) -> None:
    db = tmp_path / "chain.db"
    asyncio.run(_continued_workflow(db))
    proc = run_cli("show", "chain", "--db", str(db), cwd=tmp_path, env_db=tmp_path / "env.db")
    assert proc.returncode == 0, proc.stderr
    match = re.search(r"^Previous runs\s+2: ([0-9a-f]{32}) -> ([0-9a-f]{32})$", proc.stdout, re.M)
    assert match, proc.stdout
    assert re.search(r"^Status\s+completed$", proc.stdout, re.MULTILINE)
    assert [kind for _, kind in history_rows(proc.stdout)] == [
        "workflow_started",
        "signal_received",
        "workflow_completed",
    ]


async def _tagged_workflows(db: Path) -> None:
    from app.workflow import DefaultExecutor, WorkflowOptions
    from tests.conformance import workflows as wf

    async with DefaultExecutor(SQLiteStore(db), workflows=[wf.double], close_store=True) as ex:
        for i in range(5):
            options = WorkflowOptions(
                id=f"t{i}", input=i, search_attributes={"tier": "gold" if i % 2 else "free", "n": i}
            )
            await ex.execute(wf.sequential, options)
        for i in range(5):
            await ex.get_handle(f"t{i}").result(timeout=TIMEOUT)


def test_list_filters_by_attribute_and_type_and_pages(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "tagged.db"
    asyncio.run(_tagged_workflows(db))
    capsys.readouterr()

    def ids(*args: str) -> tuple[list[str], str]:
        assert main(["list", "--db", str(db), *args]) == 0
        out = capsys.readouterr().out
        rows = [line.split()[0] for line in out.split("\n\n")[0].splitlines()[2:]]
        return rows, out

    assert ids("--attr", "tier=gold")[0] == ["t3", "t1"]
    assert ids("--attr", "tier=gold", "--attr", "n=3")[0] == ["t3"]
    assert ids("--attr", "n=3.0")[0] == []  # 3.0 is a float: not the int 3
    assert ids("--type", "sequential", "--status", "completed")[0] == ["t4", "t3", "t2", "t1", "t0"]
    first, out = ids("--limit", "2")
    assert first == ["t4", "t3"]
    cursor = re.search(r"^More: --cursor (\S+)$", out, re.M)
    assert cursor, out
    assert ids("--cursor", cursor.group(1))[0] == ["t2", "t1", "t0"]
    _, out = ids("--attr", "tier=gold")
    assert 'n=3 tier="gold"' in out
    assert ids("--attr", "tier=none")[1] == f"No workflows in {db}.\n"
    assert main(["show", "t3", "--db", str(db)]) == 0
    assert re.search(r'^Search\s+n=3 tier="gold"$', capsys.readouterr().out, re.M)
    with pytest.raises(SystemExit):
        main(["list", "--db", str(db), "--attr", "novalue"])
    assert "expected NAME=VALUE" in capsys.readouterr().err
