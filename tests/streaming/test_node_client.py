"""A client in another language speaks the wire format: ``docs/examples/node/client.js``.

The Node.js client (kafkajs and avsc, written from ``schemas/*.avsc`` and
``docs/wire.md`` alone) starts a workflow on a real worker process, waits
for the reply, signals it, and reads the history topic until the terminal
event. Python then reads the same history (the topic, with the engine's
decoder, and the engine's client) and the two must agree. Without ``node``
or npm the tests fail, naming what to install; missing npm modules are
installed from the lock file (``npm ci`` in ``docs/examples/node``) first.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
import subprocess
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from app.streaming import KafkaExecutor
from app.streaming._messages import decode_history_records, history_types, partition_for
from app.streaming._wire import SCHEMA_NAMES, codec
from app.streaming.admin import ensure_topics
from app.streaming.settings import test_settings
from app.workflow import WorkflowQuery, WorkflowStatus
from tests.streaming.harness import OWNED, REPO, WorkerProcess
from tests.streaming.test_fingerprints import read_vectors

NODE_DIR = REPO / "docs" / "examples" / "node"
CLIENT = NODE_DIR / "client.js"
MODULES = ("kafkajs", "avsc")
PARTITIONS = 4
NODE_TIMEOUT = 60.0  # the client's own deadline; the process gets a margin on top
READ_TIMEOUT = 20.0


@dataclass(frozen=True)
class Run:
    returncode: int
    stdout: str
    stderr: str

    def output(self) -> dict[str, Any]:
        """The JSON object the client prints once it saw the terminal event."""
        assert self.returncode == 0, f"node exited {self.returncode}:\n{self.stderr[-4000:]}"
        result: dict[str, Any] = json.loads(self.stdout)
        return result


def _missing_modules() -> list[str]:
    return [m for m in MODULES if not (NODE_DIR / "node_modules" / m / "package.json").is_file()]


def node_binary() -> str:
    """``node``, with the client's modules installed (``npm ci`` from the lock file when
    they are missing, as on a fresh clone); fails (never skips) naming the fix."""
    found = shutil.which("node")
    if found is None:
        pytest.fail("node is not on PATH: the Node.js client test needs Node.js 18 or later")
    if _missing_modules():
        npm = shutil.which("npm")
        if npm is None:
            pytest.fail(f"npm is not on PATH: it installs {MODULES} in {NODE_DIR}")
        try:
            done = subprocess.run(
                [npm, "ci", "--no-audit", "--no-fund"],
                cwd=NODE_DIR,
                capture_output=True,
                text=True,
                timeout=300,
            )
        except subprocess.TimeoutExpired:
            pytest.fail(f"`npm ci` in {NODE_DIR} did not finish within 300 s")
        if done.returncode != 0 or _missing_modules():
            pytest.fail(
                f"`npm ci` in {NODE_DIR} exited {done.returncode} and left "
                f"{_missing_modules()} missing:\n{done.stderr[-2000:]}"
            )
    return found


async def run_node(*args: str, stdin: bytes = b"", timeout: float = NODE_TIMEOUT + 30) -> Run:
    """``node *args`` in the client's directory; killed by its PID after ``timeout``."""
    proc = await asyncio.create_subprocess_exec(
        node_binary(),
        *args,
        cwd=NODE_DIR,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(stdin), timeout)
    except TimeoutError:
        proc.kill()
        await asyncio.wait_for(proc.wait(), 10)
        command = " ".join(args)[:200]
        raise AssertionError(f"node {command} did not finish in {timeout:.0f}s") from None
    assert proc.returncode is not None
    return Run(proc.returncode, out.decode(), err.decode())


# -- without a broker ------------------------------------------------------------------
AGREEMENT = """
const c = require('./client.js');
const input = JSON.parse(require('node:fs').readFileSync(0, 'utf8'));
const fingerprints = {};
for (const name of input.schemas) {
  fingerprints[name] = c.loadCodec(name, input.directory).fingerprint.toString('hex');
}
const crc = input.canonical.map((text) => c.crc64Avro(Buffer.from(text, 'utf8')).toString());
const partitions = input.keys.map((key) => input.counts.map((n) => c.partitionFor(key, n)));
process.stdout.write(JSON.stringify({ fingerprints, crc, partitions }));
"""
KEYS = ["", "a", "order-1", "raw-sig", "é𝄞", *(f"wf-{i:04d}" for i in range(200))]
COUNTS = [1, 2, 3, 4, 8, 12, 16, 64]


async def test_node_agrees_on_fingerprints_crc_and_partitions() -> None:
    vectors = [v for v in read_vectors() if v.fingerprint is not None]
    request = {
        "schemas": list(SCHEMA_NAMES),
        "directory": str(REPO / "schemas"),
        "canonical": [v.canonical for v in vectors],
        "keys": KEYS,
        "counts": COUNTS,
    }
    seen = (await run_node("-e", AGREEMENT, stdin=json.dumps(request).encode())).output()
    # avsc's canonical form + the client's CRC-64-AVRO give the engine's fingerprints
    assert seen["fingerprints"] == {name: codec(name).fingerprint.hex() for name in SCHEMA_NAMES}
    # the client's CRC-64-AVRO gives Java's values for the Avro project's vectors
    assert [int(x) for x in seen["crc"]] == [v.fingerprint % 2**64 for v in vectors]
    # kafkajs's default partitioner is the engine's murmur2
    assert seen["partitions"] == [[partition_for(k, n) for n in COUNTS] for k in KEYS]


async def test_usage_errors_exit_2() -> None:
    run = await run_node(str(CLIENT), "--type", "t", timeout=30)
    assert run.returncode == 2
    assert "--broker is required" in run.stderr


# -- against a worker ----------------------------------------------------------------
def micros(moment: datetime) -> int:
    return (moment - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)


async def read_history(bootstrap: str, topic: str, workflow_id: str) -> list[dict[str, Any]]:
    """The workflow's events on ``topic`` (from its murmur2 partition), decoded by the engine."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False, fetch_max_wait_ms=10
    )
    await consumer.start()
    try:
        tp = TopicPartition(topic, partition_for(workflow_id, PARTITIONS))
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        end = (await consumer.end_offsets([tp]))[tp]
        records = []
        async with asyncio.timeout(READ_TIMEOUT):
            while await consumer.position(tp) < end:
                batch = await consumer.getmany(tp, timeout_ms=500)
                records += batch.get(tp, [])
    finally:
        await consumer.stop()
    events: dict[tuple[str, int], dict[str, Any]] = {}
    for record in records:
        if record.key != workflow_id.encode() or record.value is None:
            continue
        decoded = decode_history_records(record.value)
        batch = codec("history_batch")
        if batch.wrote(record.value):
            raws = [codec("history_event").decode(m) for m in batch.decode(record.value)["events"]]
        else:
            raws = [codec("history_event").decode(record.value)]
        types = history_types(record.headers) or []
        for raw, (_, run_id, _, event), header in zip(raws, decoded, types, strict=True):
            events.setdefault(
                (run_id, event.id),
                {
                    **raw,
                    "event": event,
                    "offset": record.offset,
                    "type_header": header,
                    "record_events": len(decoded),
                },
            )
    return [events[k] for k in sorted(events, key=lambda k: k[1])]


async def test_node_client_starts_signals_and_follows_a_workflow(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    app_id = "node-" + hashlib.sha256(str(tmp_path).encode()).hexdigest()[:12]
    settings = test_settings(kafka_bootstrap, app_id=app_id, partitions=PARTITIONS)
    await ensure_topics(settings)
    worker = WorkerProcess(
        "worker", kafka_bootstrap, app_id, "tests.streaming.crash_app", tmp_path, PARTITIONS
    )
    workflow_id = "node-signalled"
    try:
        worker.start()
        worker.wait_for_log(OWNED, timeout=60.0)
        run = await run_node(
            str(CLIENT),
            "--broker",
            kafka_bootstrap,
            "--app-id",
            app_id,
            "--workflow-id",
            workflow_id,
            "--type",
            "signalled",
            "--input",
            "10",
            "--signal",
            "go=7",
            "--signal",
            "go=8",
            "--attr",
            'customer="acme"',
            "--attr",
            "priority=2",
            "--memo",
            '{"from": "node"}',
            "--timeout",
            str(NODE_TIMEOUT),
        )
        if run.returncode != 0:
            worker.dump_stacks()
            raise AssertionError(
                f"node exited {run.returncode}:\n{run.stderr[-4000:]}\n"
                f"worker log:\n{worker.log()[-4000:]}"
            )
        seen = run.output()

        # what Node sent: framed with the engine's fingerprint, on the owner's partition
        assert seen["fingerprints"]["command"] == codec("command").fingerprint.hex()
        assert [c["kind"] for c in seen["commands"]] == ["start", "signal", "signal"]
        owner = partition_for(workflow_id, PARTITIONS)
        assert {c["partition"] for c in seen["commands"]} == {owner}
        reply = seen["reply"]
        assert reply["ok"] is True and reply["client_id"] == seen["client_id"]
        assert reply["command_id"] == seen["commands"][0]["command_id"]

        # what Node read: the workflow ran to completion with both signals
        assert seen["status"] == "completed"
        assert seen["result"] == [13, 7, 8]
        node_events = seen["history"]
        assert node_events[0]["type"] == "workflow_started"
        # the start's search attributes and memo, recorded by the worker, read back by Node
        assert node_events[0]["search_attributes"] == {"customer": "acme", "priority": 2}
        assert node_events[0]["memo"] == {"from": "node"}
        assert node_events[-1]["type"] == "workflow_completed"
        signals = [e for e in node_events if e["type"] == "signal_received"]
        assert [(e["signal_name"], e["payload"], e["sender_id"]) for e in signals] == [
            ("go", 7, "node-client"),
            ("go", 8, "node-client"),
        ]
        assert {e["run_id"] for e in node_events} == {reply["run_id"]}

        # what Python reads from the same topic, with the engine's decoder
        python_events = await read_history(kafka_bootstrap, settings.topology.history, workflow_id)
        assert [e["id"] for e in node_events] == [e["id"] for e in python_events]
        for mine, theirs in zip(node_events, python_events, strict=True):
            event = theirs["event"]
            payload = event.result if event.result is not None else event.input
            if event.signal_payload is not None:
                payload = event.signal_payload
            assert mine == {
                "workflow_id": workflow_id,
                "run_id": theirs["run_id"],
                "workflow_type": "signalled",
                "id": event.id,
                "type": event.type.value,
                "timestamp": micros(event.timestamp),
                "activity_name": event.activity_name,
                "payload": payload,
                "error": event.error,
                "signal_name": event.signal_name,
                "duration": event.duration,
                "step": event.step,
                "attempt": event.attempt,
                "sender_id": event.sender_id,
                "search_attributes": event.search_attributes,
                "memo": event.memo,
                "type_header": event.type.value,
                "record_events": theirs["record_events"],
                "partition": owner,
                "offset": theirs["offset"],
            }

        # an activation's events came as one record (a HistoryBatch), and Node read them
        assert max(e["record_events"] for e in node_events) > 1
        assert all(e["type_header"] == e["type"] for e in python_events)

        # and what the engine's own client says about the run
        async with KafkaExecutor(settings=settings) as ex:
            state = await ex.describe(workflow_id)
            found = await ex.list(WorkflowQuery(search_attributes={"customer": "acme"}))
        assert [s.workflow_id for s in found.items] == [workflow_id]
        assert found.items[0].memo == {"from": "node"}
        assert state.status is WorkflowStatus.COMPLETED
        assert state.run_id == reply["run_id"]
        assert [(e.id, e.type.value) for e in state.history] == [
            (e["id"], e["type"]) for e in node_events
        ]
    finally:
        worker.stop()
