"""``show`` and ``list`` on encrypted workflows: decoded with the key, marked without it."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from app.workflow import DefaultExecutor, WorkflowContext, WorkflowOptions, load_codec, new_key
from providers.sqlite import SQLiteStore
from tests.test_cli import run_cli

MARKER = "PLAIN-CLI-3F1C9A"


def shout(text: str) -> str:
    return text.upper() + "!"


async def loud(ctx: WorkflowContext, text: str) -> str:
    return await ctx.execute_activity(shout, text)


async def run_encrypted(db: Path, key_file: Path) -> None:
    codec = load_codec(key_file)
    store = SQLiteStore(db)
    async with DefaultExecutor(store, workflows=[loud], activities=[shout], codec=codec) as ex:
        handle = await ex.execute(loud, WorkflowOptions(id="enc", input=MARKER.lower()))
        await asyncio.wait_for(handle.result(), 10)
    await store.close()


def test_show_decrypts_with_the_key_and_marks_what_it_cannot(tmp_path: Path) -> None:
    key_file = tmp_path / "keys.json"
    key_file.write_text(json.dumps({"current": "k1", "keys": {"k1": new_key()}}))
    db = tmp_path / "wf.db"
    asyncio.run(run_encrypted(db, key_file))

    without = run_cli("show", "enc", "--db", str(db), cwd=tmp_path, env_db=db)
    assert without.returncode == 0, without.stderr
    assert "<encrypted (aes-256-gcm, key id 'k1')>" in without.stdout
    assert MARKER.lower() not in without.stdout and MARKER not in without.stdout
    assert "Type      loud" in without.stdout  # names are not encrypted
    assert "pass --key-file" in without.stderr

    with_key = run_cli(
        "show", "enc", "--db", str(db), "--key-file", str(key_file), cwd=tmp_path, env_db=db
    )
    assert with_key.returncode == 0, with_key.stderr
    assert f'"{MARKER}!"' in with_key.stdout
    assert "encrypted" not in with_key.stdout and with_key.stderr == ""

    listed = run_cli("list", "--db", str(db), cwd=tmp_path, env_db=db)
    assert listed.returncode == 0, listed.stderr
    assert "enc" in listed.stdout

    key_file.write_text("{")
    bad = run_cli(
        "show", "enc", "--db", str(db), "--key-file", str(key_file), cwd=tmp_path, env_db=db
    )
    assert bad.returncode == 1 and "is not JSON" in bad.stderr
