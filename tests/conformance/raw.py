"""Every byte a conformance runtime persisted or published, read without the engine.

Used to prove that encrypted payloads never reach a store, a broker or a
server in plaintext: each reader goes around the engine (a plain consumer,
the raw files, the raw key-value entries, the raw Temporal history).
"""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

READ_TIMEOUT = 20.0


def _digest(tmp_path: Path, n: int) -> str:
    return hashlib.sha256(str(tmp_path).encode()).hexdigest()[:n]


async def kafka_topics_bytes(bootstrap: str, prefix: str) -> tuple[bytes, list[str]]:
    """Keys, values and headers of every record of every topic named ``prefix*``."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False, fetch_max_wait_ms=10
    )
    await asyncio.wait_for(consumer.start(), 10)
    try:
        topics = sorted(t for t in await consumer.topics() if t.startswith(prefix))
        tps = [
            TopicPartition(t, p) for t in topics for p in consumer.partitions_for_topic(t) or {0}
        ]
        if not tps:
            return b"", []
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        chunks: list[bytes] = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + READ_TIMEOUT
        # The test broker reports a batch's first offset + 1 as the end: read past the
        # reported ends until a fetch brings nothing more.
        while True:
            assert loop.time() < deadline, f"could not read the {prefix}* topics to their end"
            batch = await consumer.getmany(*tps, timeout_ms=300)
            for records in batch.values():
                for r in records:
                    chunks += [r.key or b"", r.value or b""]
                    chunks += [v for _, v in r.headers or ()]
            reached = all([await consumer.position(tp) >= ends[tp] for tp in tps])
            if reached and not batch:
                return b"\n".join(chunks), topics
    finally:
        await consumer.stop()


async def nats_bucket_bytes(url: str, bucket: str) -> bytes:
    """The raw value of every key of a JetStream key-value bucket."""
    import nats
    from nats.js.errors import NoKeysError

    nc = await nats.connect(url, connect_timeout=5)
    try:
        kv = await nc.jetstream().key_value(bucket)
        # keys() lists through a watcher that can end before the first key arrives
        # on a loaded machine ("no keys found"): ask again, a bounded number of times
        for tries_left in range(4, -1, -1):
            try:
                keys = await kv.keys()
                break
            except NoKeysError:
                if not tries_left:
                    raise
        out = []
        for key in keys:
            entry = await kv.get(key)
            out += [key.encode(), entry.value or b""]
        return b"\n".join(out)
    finally:
        await nc.close()


async def temporal_history_bytes(executor: Any, workflow_ids: list[str]) -> bytes:
    """The serialized Temporal history (protobuf, as the server sends it) of each workflow."""
    from temporalio.api.common.v1 import WorkflowExecution
    from temporalio.api.workflowservice.v1 import GetWorkflowExecutionHistoryRequest

    client = executor.client
    out = []
    for wid in workflow_ids:
        token = b""
        while True:
            response = await client.workflow_service.get_workflow_execution_history(
                GetWorkflowExecutionHistoryRequest(
                    namespace=client.namespace,
                    execution=WorkflowExecution(workflow_id=wid),
                    next_page_token=token,
                ),
                retry=True,
            )
            out.append(response.history.SerializeToString())
            token = response.next_page_token
            if not token:
                break
    return b"\n".join(out)


def _files_bytes(directory: Path, pattern: str) -> bytes:
    # the database and its WAL: what was written and not yet checkpointed is there
    return b"".join(p.read_bytes() for p in sorted(directory.glob(pattern)))


async def persisted_bytes(
    runtime: Any, tmp_path: Path, request: pytest.FixtureRequest, executor: Any, ids: list[str]
) -> bytes:
    """What ``runtime`` stored or published for this test (``executor`` still open)."""
    name = runtime.name
    if name in ("embedded-memory", "embedded-always-replay"):
        return b"\n".join(
            s.model_dump_json().encode() for st in runtime.stores for s in st._states.values()
        )
    if name == "embedded-sqlite":
        return _files_bytes(tmp_path, "wf.db*")
    if name == "embedded-kafka":
        bootstrap = request.getfixturevalue("kafka_bootstrap")
        data, topics = await kafka_topics_bytes(bootstrap, "wf-" + _digest(tmp_path, 20))
        assert topics, "the store's topic was not found"
        return data
    if name == "embedded-nats":
        url = request.getfixturevalue("nats_url")
        return await nats_bucket_bytes(url, "wf_" + _digest(tmp_path, 20))
    if name == "streaming":
        bootstrap = request.getfixturevalue("kafka_bootstrap")
        data, topics = await kafka_topics_bytes(bootstrap, "cf-" + _digest(tmp_path, 16))
        # commands, history, replies, tasks and every table changelog
        assert len(topics) >= 6, topics
        return data
    if name == "temporal":
        return await temporal_history_bytes(executor, ids)
    raise AssertionError(f"no raw reader for runtime {name}")
