"""KafkaStore's own behaviour, on a real Kafka-protocol broker (Tansu).

The store contract itself runs in ``test_store_conformance.py`` (the
``kafka`` factory); here: the topic it creates, tombstones, rebuilding from
the topic, settings, failures (no broker, a silent server, the broker
stopped and restarted) and the ``kafka`` registry entry.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from app.workflow import Config, DefaultExecutor, InvalidArgumentError, WorkflowOptions, new
from app.workflow._store import AppendingStore, StoreConflictError
from app.workflow._types import EventType, HistoryEvent, WorkflowFilter, WorkflowState
from providers.kafka import (
    DEFAULT_TOPIC,
    KafkaStore,
    KafkaStoreClosedError,
    KafkaStoreConfig,
    KafkaStoreError,
)
from tests import servers
from tests.conformance import workflows as wf

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
FAST: dict[str, Any] = {"fetch_max_wait": 0.01}  # Tansu answers a fetch only when its wait expires
SECRET = "pa55-w0rd-never-shown"


def state(workflow_id: str, events: int = 1, **fields: Any) -> WorkflowState:
    history = [
        HistoryEvent(id=i, type=EventType.TIMER_FIRED, timestamp=T0 + timedelta(seconds=i))
        for i in range(1, events + 1)
    ]
    fields.setdefault("created_at", T0)
    fields.setdefault("updated_at", T0)
    return WorkflowState(workflow_id=workflow_id, run_id="run-1", history=history, **fields)


def next_event(current: WorkflowState) -> HistoryEvent:
    event_id = len(current.history) + 1
    event = HistoryEvent(
        id=event_id, type=EventType.TIMER_FIRED, timestamp=T0 + timedelta(seconds=event_id)
    )
    current.history.append(event)
    return event


@pytest.fixture
def topic() -> str:
    return f"wf-test-{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def store(kafka_bootstrap: str, topic: str) -> AsyncIterator[KafkaStore]:
    async with KafkaStore(bootstrap_servers=kafka_bootstrap, topic=topic, **FAST) as opened:
        yield opened


async def raw_records(bootstrap: str, topic: str) -> list[tuple[bytes | None, bytes | None]]:
    """Every (key, value) in the topic, read with a plain consumer."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False, fetch_max_wait_ms=10
    )
    await asyncio.wait_for(consumer.start(), 10)
    try:
        tps = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or {0}]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        records: list[tuple[bytes | None, bytes | None]] = []
        deadline = time.monotonic() + 10
        while any([await consumer.position(tp) < ends[tp] for tp in tps]):
            assert time.monotonic() < deadline, f"could not read {topic} to its end"
            for batch in (await consumer.getmany(*tps, timeout_ms=200)).values():
                records.extend((r.key, r.value) for r in batch)
        return records
    finally:
        await consumer.stop()


@contextlib.asynccontextmanager
async def admin_client(bootstrap: str) -> AsyncIterator[Any]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5000)
    await asyncio.wait_for(admin.start(), 10)
    try:
        yield admin
    finally:
        await admin.close()


@contextlib.contextmanager
def private_broker() -> Iterator[servers.Server]:
    with servers.running(servers.tansu(servers.scratch_dir("tansu-kafka-store"))) as server:
        yield server


# -- the topic ----------------------------------------------------------------------


async def test_creates_the_topic_compacted_with_the_configured_partitions(
    kafka_bootstrap: str, topic: str
) -> None:
    async with KafkaStore(
        bootstrap_servers=kafka_bootstrap, topic=topic, partitions=3, max_record_bytes=2_000_000
    ) as store:
        await store.save(state("wf-1"))

    async with admin_client(kafka_bootstrap) as admin:
        (described,) = await admin.describe_topics([topic])
        responses = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
    configs = {entry[0]: entry[1] for r in responses for res in r.resources for entry in res[4]}
    assert len(described["partitions"]) == 3
    assert configs["cleanup.policy"] == "compact"
    assert int(configs["max.message.bytes"]) >= 2_000_000


async def test_an_existing_topic_without_compaction_is_refused(
    kafka_bootstrap: str, topic: str
) -> None:
    async with admin_client(kafka_bootstrap) as admin:
        await admin.create_topics(
            [NewTopic(topic, 1, 1, topic_configs={"cleanup.policy": "delete"})]
        )
    store = KafkaStore(bootstrap_servers=kafka_bootstrap, topic=topic, **FAST)

    with pytest.raises(KafkaStoreError, match=r"cleanup\.policy=delete") as raised:
        await store.start()

    assert kafka_bootstrap in str(raised.value) and topic in str(raised.value)
    await store.close()


async def test_the_default_topic_is_the_seeds() -> None:
    assert KafkaStoreConfig(bootstrap_servers="localhost:9092").topic == DEFAULT_TOPIC
    assert DEFAULT_TOPIC == "beluga-workflows"


async def test_delete_writes_a_tombstone(kafka_bootstrap: str, topic: str) -> None:
    async with KafkaStore(bootstrap_servers=kafka_bootstrap, topic=topic, **FAST) as store:
        await store.save(state("gone"))
        await store.save(state("kept"))
        await store.delete("gone")

        assert await store.load("gone") is None

    records = await raw_records(kafka_bootstrap, topic)
    assert [key for key, _ in records] == [b"gone", b"kept", b"gone"]
    assert records[-1][1] is None
    kept = records[1][1]
    assert kept is not None
    assert WorkflowState.model_validate_json(kept) == state("kept")


# -- rebuilding from the topic -------------------------------------------------------


async def test_a_new_store_rebuilds_its_cache_from_the_topic(
    kafka_bootstrap: str, topic: str, caplog: pytest.LogCaptureFixture
) -> None:
    options: dict[str, Any] = {
        "bootstrap_servers": kafka_bootstrap,
        "topic": topic,
        "partitions": 3,
        **FAST,
    }
    first = KafkaStore(**options)
    running = state("running", events=2, created_at=T0 + timedelta(seconds=1))
    for workflow_id in ("a", "b", "c", "gone"):
        await first.save(state(workflow_id))
    await first.save(running)
    await first.append(running, [next_event(running)])
    await first.delete("gone")
    # records from someone else: no key, and a value that is not a workflow state
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
    await producer.start()
    try:
        await producer.send_and_wait(topic, b"{}", key=None)
        await producer.send_and_wait(topic, b"not json", key=b"c")
    finally:
        await producer.stop()

    with caplog.at_level(logging.WARNING, logger="providers.kafka"):
        async with KafkaStore(**options) as second:
            listed = await second.list(WorkflowFilter())
            assert [s.workflow_id for s in listed] == ["running", "a", "b"]
            assert await second.load("running") == running
            assert await second.load("gone") is None
            assert await second.load("c") is None  # its latest record is unreadable
            # the rebuilt store keeps the conflict checks of the original
            with pytest.raises(StoreConflictError):
                await second.append(running, [running.history[-1]])
            await second.append(running, [next_event(running)])

    assert "not a valid state" in caplog.text and "without a key" in caplog.text
    async with KafkaStore(**options) as third:  # sees the second store's write
        assert await third.load("running") == running
    await first.close()


async def test_the_first_call_starts_the_store(kafka_bootstrap: str, topic: str) -> None:
    async with KafkaStore(bootstrap_servers=kafka_bootstrap, topic=topic, **FAST) as writer:
        await writer.save(state("wf-1"))
    store = KafkaStore(bootstrap_servers=kafka_bootstrap, topic=topic, **FAST)
    assert "not started" in repr(store)

    loaded = await asyncio.gather(*(store.load("wf-1") for _ in range(5)))

    assert loaded == [state("wf-1")] * 5
    assert "not started" not in repr(store)
    await store.close()


# -- settings -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"bootstrap_servers": "localhost"}, "host:port"),
        ({"bootstrap_servers": "localhost:0"}, "host:port"),
        ({"bootstrap_servers": []}, "bootstrap_servers"),
        ({"topic": "has space"}, "topic"),
        ({"topic": ".."}, "topic"),
        ({"partitions": 0}, "partitions"),
        ({"replication_factor": True}, "replication_factor"),
        ({"request_timeout": 0}, "request_timeout"),
        ({"request_timeout": "5"}, "request_timeout"),
        ({"retry_attempts": 0}, "retry_attempts"),
        ({"retry_backoff": 3, "retry_max_backoff": 1}, "retry_max_backoff"),
        ({"fetch_max_wait": 10}, "fetch_max_wait"),
        ({"max_record_bytes": -1}, "max_record_bytes"),
        ({"security_protocol": "TLS"}, "security_protocol"),
        ({"security_protocol": "SASL_SSL", "sasl_mechanism": "PLAIN"}, "sasl_plain_username"),
        ({"security_protocol": "SASL_SSL", "sasl_mechanism": "GSSAPI"}, "sasl_mechanism"),
        ({"sasl_mechanism": "PLAIN"}, "sasl_mechanism"),
    ],
)
def test_bad_settings_fail_at_construction(options: dict[str, Any], match: str) -> None:
    options = {"bootstrap_servers": "localhost:9092", **options}

    with pytest.raises(InvalidArgumentError, match=match):
        KafkaStore(**options)
    with pytest.raises(InvalidArgumentError, match=match):
        KafkaStoreConfig(**options)


def test_store_takes_a_config_or_keywords_not_both() -> None:
    config = KafkaStoreConfig(bootstrap_servers="a:1,b:2", request_timeout=timedelta(seconds=3))

    assert KafkaStore(config).config.bootstrap_servers == ("a:1", "b:2")
    assert config.request_timeout == 3.0
    with pytest.raises(InvalidArgumentError, match="not both"):
        KafkaStore(config, topic="other")
    with pytest.raises(InvalidArgumentError, match="bootstrap_servers"):
        KafkaStore()
    with pytest.raises(InvalidArgumentError, match="unknown KafkaStore options: bogus"):
        KafkaStore(bootstrap_servers="a:1", bogus=1)


async def test_no_secret_in_reprs_errors_or_logs(caplog: pytest.LogCaptureFixture) -> None:
    address = f"127.0.0.1:{servers.free_port()}"  # nothing listens there
    store = KafkaStore(
        bootstrap_servers=address,
        security_protocol="SASL_PLAINTEXT",
        sasl_mechanism="PLAIN",
        sasl_plain_username="svc",
        sasl_plain_password=SECRET,
        request_timeout=0.5,
        retry_attempts=2,
        retry_backoff=0.01,
    )

    with caplog.at_level(logging.DEBUG), pytest.raises(KafkaStoreError) as raised:
        await store.start()

    assert "sasl_plain_password='***'" in repr(store.config)
    for text in (repr(store), repr(store.config), str(raised.value), caplog.text):
        assert SECRET not in text
    await store.close()


# -- failures -------------------------------------------------------------------------


async def test_no_broker_fails_within_the_timeout_naming_it() -> None:
    address = f"127.0.0.1:{servers.free_port()}"  # nothing listens there
    store = KafkaStore(
        bootstrap_servers=address, request_timeout=0.5, retry_attempts=3, retry_backoff=0.05
    )

    started = time.monotonic()
    with pytest.raises(KafkaStoreError, match="after 3 attempt") as raised:
        await store.save(state("wf-1"))
    elapsed = time.monotonic() - started

    assert address in str(raised.value)
    assert elapsed < 3 * 2 * 0.5 + 1  # attempts x bound per attempt, plus backoff
    with pytest.raises(KafkaStoreError, match=address):  # a later call tries again
        await store.load("wf-1")
    await store.close()


async def test_a_server_that_never_answers_times_out() -> None:
    held: list[asyncio.StreamWriter] = []

    async def accept_and_say_nothing(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    silent = await asyncio.start_server(accept_and_say_nothing, "127.0.0.1", 0)
    address = f"127.0.0.1:{silent.sockets[0].getsockname()[1]}"
    store = KafkaStore(
        bootstrap_servers=address, request_timeout=0.5, retry_attempts=2, retry_backoff=0.05
    )
    try:
        started = time.monotonic()
        with pytest.raises(KafkaStoreError, match=address):
            await store.start()
        elapsed = time.monotonic() - started
    finally:
        for writer in held:
            writer.close()
        silent.close()
        await silent.wait_closed()
        await store.close()

    assert 0.5 <= elapsed < 2 * 2 * 0.5 + 1


async def test_broker_stopped_then_restarted(caplog: pytest.LogCaptureFixture) -> None:
    with private_broker() as broker:
        address = f"127.0.0.1:{broker.port}"
        options: dict[str, Any] = {
            "bootstrap_servers": address,
            "request_timeout": 1,
            "retry_attempts": 2,
            **FAST,
        }
        store = KafkaStore(**options)
        try:
            current = state("wf-1")
            await store.save(current)
            await store.save(state("other"))
            stored = await store.load("wf-1")

            broker.kill()  # a crash; a SIGTERM waits ~5 s for Tansu to drain its clients
            event = next_event(current)
            started = time.monotonic()
            with pytest.raises(KafkaStoreError, match=address) as raised:
                await store.append(current, [event])
            elapsed = time.monotonic() - started

            assert "writing workflow 'wf-1'" in str(raised.value)
            assert elapsed < 2 * 2 * 1 + 1
            # nothing half-written: the cache still holds the last acknowledged state
            assert await store.load("wf-1") == stored
            assert [s.workflow_id for s in await store.list(WorkflowFilter())] == ["other", "wf-1"]

            # Tansu keeps its data in memory: the restarted broker has lost the
            # topic and every record. The store must work again for new writes.
            broker.start()
            await store.append(current, [event])  # the write that failed, retried
            await store.save(state("new"))

            async with KafkaStore(**options) as fresh:
                # each record is a whole state, so wf-1 is complete again
                assert await fresh.load("wf-1") == current
                assert await fresh.load("new") == state("new")
                assert await fresh.load("other") is None  # lost with the broker's memory
        finally:
            await store.close()


# -- limits and lifecycle -----------------------------------------------------------------


async def test_a_state_over_max_record_bytes_is_refused_and_nothing_written(
    kafka_bootstrap: str, topic: str
) -> None:
    async with KafkaStore(
        bootstrap_servers=kafka_bootstrap, topic=topic, max_record_bytes=4096, **FAST
    ) as store:
        with pytest.raises(
            KafkaStoreError, match=r"over the Kafka store's max_record_bytes \(4096"
        ):
            await store.save(state("big", input="x" * 5000))
        small = state("small")
        await store.save(small)
        with pytest.raises(KafkaStoreError, match="max_record_bytes"):
            await store.append(small, [next_event(small) for _ in range(200)])

        assert await store.load("big") is None
        assert await store.load("small") == state("small")
    assert [key for key, _ in await raw_records(kafka_bootstrap, topic)] == [b"small"]


async def test_a_closed_store_refuses_calls(store: KafkaStore) -> None:
    await store.save(state("wf-1"))

    await store.close()
    await store.close()

    assert "closed" in repr(store)
    with pytest.raises(KafkaStoreClosedError, match="closed"):
        await store.load("wf-1")
    with pytest.raises(KafkaStoreClosedError):
        await store.save(state("wf-2"))


def test_kafka_store_is_an_appending_store() -> None:
    assert isinstance(KafkaStore(bootstrap_servers="localhost:9092"), AppendingStore)


# -- the registry -------------------------------------------------------------------------


async def test_registry_builds_an_embedded_executor_over_a_kafka_store(
    kafka_bootstrap: str, topic: str
) -> None:
    extra: dict[str, Any] = {"bootstrap_servers": kafka_bootstrap, "topic": topic, **FAST}
    executor = new("kafka", Config(extra={**extra, "workflows": wf.workflows}))

    assert isinstance(executor, DefaultExecutor)
    try:
        async with executor:
            handle = await executor.execute(wf.sequential, WorkflowOptions(id="reg", input=2))
            assert await handle.result(timeout=10) == [4, 8, 16]
        assert isinstance(executor.store, KafkaStore)
    finally:
        # The executor leaves a store it was given open: close it here.
        await executor.store.close()  # type: ignore[attr-defined]

    async with KafkaStore(**extra) as reader:
        done = await reader.load("reg")
        assert done is not None and done.result == [4, 8, 16]


def test_registry_rejects_bad_kafka_settings_at_the_call() -> None:
    with pytest.raises(InvalidArgumentError, match="host:port"):
        new("kafka", Config(extra={"bootstrap_servers": "nohost"}))
    with pytest.raises(InvalidArgumentError, match=r"unknown Config\.extra keys.*bogus"):
        new("kafka", Config(extra={"bootstrap_servers": "a:1", "bogus": 1}))
