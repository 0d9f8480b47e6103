"""An encrypted deployment run from the command line: keys from a key file, never plaintext.

A worker process reads ``STREAMFLOW_CODEC_KEY_FILE``; ``start``, ``signal``
and ``query`` (separate processes) read it too. ``show`` without the key
says what is encrypted and exits 0; with ``--key-file`` it decodes. Every
topic of the deployment, read raw, holds none of the distinctive numbers
the workflow was given.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from app.workflow import new_key
from tests.conformance.raw import kafka_topics_bytes
from tests.streaming.harness import OWNED, WorkerProcess
from tests.streaming.test_cli_broker import CLIENT_ENV, PARTITIONS, _app_id, ok, run

INPUT = 55501234987  # distinctive numbers: their digits must not appear in any topic
SIGNAL = 98760012345


@dataclass
class Encrypted:
    bootstrap: str
    app_id: str
    key_file: Path
    worker: WorkerProcess

    def app(self, *args: str, key: bool = True) -> subprocess.CompletedProcess[str]:
        env = {**CLIENT_ENV, **({"STREAMFLOW_CODEC_KEY_FILE": str(self.key_file)} if key else {})}
        flags = ["--broker", self.bootstrap, "--app-id", self.app_id]
        return run("-m", "app", *args, *flags, "--partitions", str(PARTITIONS), env=env)


@pytest.fixture(scope="module")
def encrypted(
    kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Encrypted]:
    logdir = tmp_path_factory.mktemp("enc-worker")
    key_file = logdir / "keys.json"
    key_file.write_text(json.dumps({"current": "k1", "keys": {"k1": new_key()}}))
    app_id = _app_id(str(logdir))
    worker = WorkerProcess(
        "worker",
        kafka_bootstrap,
        app_id,
        "tests.streaming.crash_app",
        logdir,
        partitions=PARTITIONS,
        extra_env={
            "STREAMFLOW_CODEC_KEY_FILE": str(key_file),
            "STREAMFLOW_COMPRESS_THRESHOLD": "512",
        },
        args=["--metrics-port", "0"],
    )
    try:
        worker.start()
        worker.wait_for_log(OWNED, timeout=60.0)
        yield Encrypted(kafka_bootstrap, app_id, key_file, worker)
    finally:
        worker.kill()


def test_cli_on_an_encrypted_deployment(encrypted: Encrypted) -> None:
    lines = ok(encrypted.app("start", "signalled", "--id", "enc-x", "--input", str(INPUT)))
    assert json.loads(lines)["workflow_id"] == "enc-x"
    for _ in range(2):
        ok(encrypted.app("signal", "enc-x", "go", "--payload", str(SIGNAL)))
    expected = [INPUT + 3, SIGNAL, SIGNAL]
    for _ in range(100):
        result = encrypted.app("query", "enc-x", "result")
        if result.returncode == 0 and json.loads(result.stdout) == expected:
            break
        assert encrypted.worker.alive, encrypted.worker.log()[-4000:]
        time.sleep(0.2)  # each look is a separate CLI process: nothing to await
    else:
        raise AssertionError(f"enc-x did not complete: {result.stdout} {result.stderr}")

    shown = ok(encrypted.app("show", "enc-x", key=False))
    assert "Status    completed" in shown and "Type      signalled" in shown
    assert "<encrypted (aes-256-gcm, key id 'k1')>" in shown
    assert str(INPUT) not in shown and str(SIGNAL) not in shown
    without = encrypted.app("show", "enc-x", key=False)
    assert "pass --key-file" in without.stderr

    decoded = ok(encrypted.app("show", "enc-x", "--key-file", str(encrypted.key_file), key=False))
    assert f"Result    {json.dumps(expected)}" in decoded

    raw, topics = asyncio.run(kafka_topics_bytes(encrypted.bootstrap, encrypted.app_id))
    assert len(topics) >= 6 and b"signalled" in raw
    assert str(INPUT).encode() not in raw and str(SIGNAL).encode() not in raw
    assert str(INPUT + 1).encode() not in raw  # the activity results neither


def test_a_bad_key_file_fails_at_start(encrypted: Encrypted, tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"current": "k9", "keys": {"k1": new_key()}}))
    env = {**CLIENT_ENV, "STREAMFLOW_CODEC_KEY_FILE": str(bad)}
    result = run("-m", "app", "query", "enc-x", "status", "--broker", encrypted.bootstrap, env=env)
    assert result.returncode == 1
    assert "codec_key_file" in result.stderr and "current key 'k9'" in result.stderr
