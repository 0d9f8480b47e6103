"""The wire format is open: a publisher with no engine code writes commands the engine decodes.

``docs/examples/raw_publish.py`` (confluent-kafka, fastavro and the
``.avsc`` files only) runs as a separate process against the session's real
broker; the message is read back with aiokafka and decoded by the engine's
own codec.
"""

from __future__ import annotations

import ast
import asyncio
import json
import sys
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.partitioner import DefaultPartitioner

from app.streaming._messages import decode_command
from app.streaming._wire import MAGIC, fingerprint_of
from tests import servers

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "docs" / "examples" / "raw_publish.py"
PARTITIONS = 4
RUN_TIMEOUT = 60.0
FETCH_TIMEOUT = 15.0


@dataclass(frozen=True)
class Run:
    returncode: int
    stdout: str
    stderr: str

    def published(self) -> dict[str, Any]:
        """The JSON line the publisher prints for the command it published."""
        assert self.returncode == 0, f"publisher failed ({self.returncode}): {self.stderr}"
        lines = self.stdout.strip().splitlines()
        assert len(lines) == 1, f"expected one JSON line, got {self.stdout!r}"
        result: dict[str, Any] = json.loads(lines[0])
        return result


async def run_publisher(*args: str, cwd: Path) -> Run:
    """``python docs/examples/raw_publish.py *args`` in ``cwd``, bounded by RUN_TIMEOUT."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(SCRIPT),
        *args,
        cwd=cwd,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), RUN_TIMEOUT)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return Run(proc.returncode, out.decode(), err.decode())


async def create_commands_topic(bootstrap: str, app_id: str) -> str:
    topic = f"{app_id}.g1.commands"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, PARTITIONS, 1)])
    finally:
        await admin.close()
    return topic


async def fetch(bootstrap: str, topic: str, partition: int, offset: int) -> tuple[bytes, bytes]:
    """(key, value) of the record at ``offset`` of ``topic``/``partition``."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        fetch_max_wait_ms=10,
        request_timeout_ms=10_000,
    )
    await consumer.start()
    try:
        tp = TopicPartition(topic, partition)
        consumer.assign([tp])
        consumer.seek(tp, offset)
        record = await asyncio.wait_for(consumer.getone(tp), FETCH_TIMEOUT)
    finally:
        await consumer.stop()
    assert record.offset == offset
    assert record.key is not None and record.value is not None
    return record.key, record.value


def test_publisher_uses_no_engine_code() -> None:
    tree = ast.parse(SCRIPT.read_text())
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "the publisher must not use relative imports"
            imported.add((node.module or "").split(".")[0])
    third_party = imported - set(sys.stdlib_module_names) - {"__future__"}
    assert third_party == {"confluent_kafka", "fastavro"}


async def test_start_and_signal_decode_with_the_engine_codec(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    app_id = f"rawpub-{uuid.uuid4().hex[:8]}"
    topic = await create_commands_topic(kafka_bootstrap, app_id)
    workflow_id = f"order-{uuid.uuid4().hex[:8]}"
    order = {"order_id": workflow_id, "customer": "ada", "items": ["book", "pen"], "amount": 12.5}
    common = ("--broker", kafka_bootstrap, "--app-id", app_id)
    before = datetime.now(UTC)

    # cwd outside the repository: the script finds the schemas next to itself.
    start = (
        await run_publisher(
            *common,
            "start",
            "--workflow-id",
            workflow_id,
            "--type",
            "order_workflow",
            "--input",
            json.dumps(order),
            "--workflow-timeout",
            "300",
            cwd=tmp_path,
        )
    ).published()
    signal = (
        await run_publisher(
            *common,
            "signal",
            "--workflow-id",
            workflow_id,
            "--name",
            "approval",
            "--payload",
            '{"approved_by": "bob"}',
            "--sender-id",
            "ops-console",
            cwd=tmp_path,
        )
    ).published()

    # Keyed like every Kafka client that uses murmur2: one partition owns the workflow.
    expected = DefaultPartitioner()(workflow_id.encode(), list(range(PARTITIONS)), None)
    assert start["topic"] == signal["topic"] == topic
    assert start["partition"] == signal["partition"] == expected

    key, value = await fetch(kafka_bootstrap, topic, start["partition"], start["offset"])
    assert value[:2] == MAGIC
    assert value[2:10] == fingerprint_of("command")  # same fingerprint as the engine's
    cmd = decode_command(value, key)
    assert cmd.kind == "start"
    assert cmd.command_id == start["command_id"]
    assert str(uuid.UUID(cmd.command_id)) == cmd.command_id
    assert cmd.workflow_id == workflow_id
    assert cmd.name == "order_workflow"
    assert cmd.payload == order
    assert cmd.timeout_seconds == 300.0
    assert before - timedelta(seconds=1) <= cmd.issued_at <= datetime.now(UTC)
    assert cmd.reply_to is None and cmd.run_id is None and cmd.route is None

    key, value = await fetch(kafka_bootstrap, topic, signal["partition"], signal["offset"])
    cmd = decode_command(value, key)
    assert cmd.kind == "signal"
    assert cmd.command_id == signal["command_id"] != start["command_id"]
    assert cmd.workflow_id == workflow_id
    assert cmd.name == "approval"
    assert cmd.payload == {"approved_by": "bob"}
    assert cmd.sender_id == "ops-console"


async def test_unreachable_broker_fails_naming_it(tmp_path: Path) -> None:
    broker = f"127.0.0.1:{servers.free_port()}"  # nothing listens there
    run = await run_publisher(
        "--broker",
        broker,
        "--timeout",
        "1",
        "signal",
        "--workflow-id",
        "w",
        "--name",
        "n",
        cwd=tmp_path,
    )
    assert run.returncode == 1
    assert broker in run.stderr
    assert run.stdout == ""


async def test_invalid_json_input_is_a_usage_error(tmp_path: Path) -> None:
    run = await run_publisher(
        "--broker",
        "127.0.0.1:1",
        "start",
        "--workflow-id",
        "w",
        "--type",
        "t",
        "--input",
        "{not json",
        cwd=tmp_path,
    )
    assert run.returncode == 2
    assert "not valid JSON" in run.stderr
