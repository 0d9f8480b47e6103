"""NatsStore's own behaviour on real nats-server processes.

The store contract itself runs in ``test_store_conformance.py`` (the ``nats``
factory). Here: buckets, a borrowed connection, key encoding, size limits,
credentials kept out of messages, and what happens when the server refuses,
stops, pauses or crashes and comes back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import signal
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.aio.client import Client
from nats.js.api import KeyValueConfig

from app.workflow import (
    Config,
    DefaultExecutor,
    InvalidArgumentError,
    StoreConflictError,
    WorkflowContext,
    WorkflowFilter,
    WorkflowOptions,
    WorkflowState,
    WorkflowStatus,
    new,
)
from providers.nats import (
    DEFAULT_BUCKET,
    HistoryTooLargeError,
    NatsStore,
    NatsStoreError,
    NatsUnavailableError,
    StoreClosedError,
    decode_key,
    encode_key,
)
from tests import servers
from tests.stores.test_store_conformance import advance, make_state, snapshot

AWKWARD_IDS = [
    "order 1",
    "a.b.c",
    ".leading",
    "trailing.",
    "dots..twice",
    "tenant/order/7",
    "ünïcødé-ß",
    "emoji 🚀",
    "中文",
    "wild*card>",
    "equals=sign",
    "=41",
    "tab\tnew\nline",
    "100%",
    "-_/",
]


@pytest.fixture
def bucket() -> str:
    return f"t_{uuid.uuid4().hex[:16]}"


@pytest.fixture
async def connection(nats_url: str) -> AsyncIterator[Client]:
    nc = await nats.connect(nats_url, connect_timeout=5)
    try:
        yield nc
    finally:
        await nc.close()


@pytest.fixture
def private_server(tmp_path: Path) -> Iterator[servers.Server]:
    """A nats-server of this test alone, to stop, crash, pause and restart."""
    with servers.running(servers.nats(tmp_path / "nats")) as server:
        yield server


def url_of(server: servers.Server) -> str:
    return f"nats://127.0.0.1:{server.port}"


def wait_until_stopped(pid: int, timeout: float = 5.0) -> None:
    """Poll until every thread of ``pid`` is stopped: SIGSTOP takes effect asynchronously."""
    deadline = time.monotonic() + timeout
    tasks = Path(f"/proc/{pid}/task")
    while True:
        states = []
        for task in tasks.iterdir():
            with contextlib.suppress(OSError):  # a thread that just ended
                states.append((task / "stat").read_text().rpartition(")")[2].split()[0])
        if states and all(state in ("T", "t") for state in states):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"process {pid} did not stop within {timeout}s: {states}")
        time.sleep(0.001)


# -- buckets and connections ---------------------------------------------------------


async def test_writes_go_to_the_named_bucket(
    nats_url: str, bucket: str, connection: Client
) -> None:
    async with NatsStore(nats_url, bucket=bucket) as store:
        await store.save(make_state("wf-1", events=2))

    kv = await connection.jetstream().key_value(bucket)
    entry = await kv.get("wf-1")
    assert entry.value is not None
    assert WorkflowState.model_validate_json(entry.value).history[1].id == 2
    assert store.bucket == bucket


async def test_default_bucket_and_url(
    nats_url: str, connection: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("NATS_URL", raising=False)
    assert NatsStore().url == "nats://localhost:4222"
    monkeypatch.setenv("NATS_URL", nats_url)
    workflow_id = f"default-bucket-{uuid.uuid4().hex}"
    store = NatsStore()  # $NATS_URL, resolved here
    monkeypatch.setenv("NATS_URL", "nats://127.0.0.1:1")

    async with store:
        await store.save(make_state(workflow_id))
        try:
            kv = await connection.jetstream().key_value(DEFAULT_BUCKET)
            assert (await kv.get(encode_key(workflow_id))).value
        finally:
            await store.delete(workflow_id)

    assert store.bucket == DEFAULT_BUCKET == "beluga_workflows"
    assert store.url == nats_url


async def test_a_given_connection_is_used_and_never_closed(connection: Client, bucket: str) -> None:
    state = make_state(events=2)
    async with NatsStore(connection=connection, bucket=bucket) as store:
        assert repr(store) == f"NatsStore(connection=<given>, bucket={bucket!r})"
        await store.save(state)
        await store.append(state, advance(state))
        assert snapshot(await store.load("wf-1")) == snapshot(state)

    assert connection.is_connected
    kv = await connection.jetstream().key_value(bucket)
    assert (await kv.get("wf-1")).value
    with pytest.raises(StoreClosedError, match=bucket):
        await store.load("wf-1")
    # a second store on the same connection still works
    async with NatsStore(connection=connection, bucket=bucket) as again:
        assert snapshot(await again.load("wf-1")) == snapshot(state)
    assert connection.is_connected


async def test_a_closed_given_connection_fails_calls_clearly(nats_url: str, bucket: str) -> None:
    nc = await nats.connect(nats_url)
    store = NatsStore(connection=nc, bucket=bucket)
    await nc.close()

    with pytest.raises(StoreClosedError, match=r"connection given to the store .* is closed"):
        await store.load("wf-1")
    await store.close()


async def test_close_is_idempotent_and_later_calls_fail(nats_url: str, bucket: str) -> None:
    store = NatsStore(nats_url, bucket=bucket)
    await store.save(make_state())  # connects lazily
    await store.close()
    await store.close()

    with pytest.raises(StoreClosedError, match=bucket) as raised:
        await store.save(make_state())
    assert isinstance(raised.value, RuntimeError)


# -- keys -----------------------------------------------------------------------------


async def test_every_list_sees_every_workflow(nats_url: str, bucket: str) -> None:
    """The KV watcher's end marker could overtake values already sent: a list came
    back short (1 in about 300 on an idle machine). Lists now read a pull consumer
    to its initial pending count."""
    async with NatsStore(nats_url, bucket=bucket) as store:
        for i in range(40):
            await store.save(make_state(f"wf-{i:02}"))
        for _ in range(150):
            assert len(await store.list(WorkflowFilter())) == 40


async def test_a_list_during_writes_has_each_workflow_once_at_its_latest(
    nats_url: str, bucket: str
) -> None:
    async with NatsStore(nats_url, bucket=bucket) as store:
        states = [make_state(f"wf-{i:02}", events=1) for i in range(20)]
        for state in states:
            await store.save(state)
        await store.delete("wf-00")

        async def write() -> None:
            for state in states[1:]:
                await store.append(state, advance(state))

        listed, _ = await asyncio.gather(store.list(WorkflowFilter()), write())
        ids = [s.workflow_id for s in listed]
        assert sorted(ids) == [f"wf-{i:02}" for i in range(1, 20)]
        for state in listed:  # each a stored version of its run: 1 or 2 events
            assert len(state.history) in (1, 2)
        again = {s.workflow_id: s for s in await store.list(WorkflowFilter())}
        assert all(len(again[s.workflow_id].history) == 2 for s in states[1:])


def test_keys_round_trip_and_use_only_the_characters_nats_allows() -> None:
    for workflow_id in AWKWARD_IDS:
        key = encode_key(workflow_id)
        assert re.fullmatch(r"[-/_=a-zA-Z0-9]+", key), key
        assert decode_key(key) == workflow_id
    assert encode_key("order-1_a/b") == "order-1_a/b"  # readable ids stay readable
    assert encode_key("a b.c") == "a=20b=2Ec"


@pytest.mark.parametrize("key", ["=41", "a=2", "a=zz", "=FF", "a.b", "a b", "=2e"])
def test_keys_no_id_encodes_to_decode_to_none(key: str) -> None:
    assert decode_key(key) is None


def test_empty_and_overlong_ids_are_rejected() -> None:
    with pytest.raises(InvalidArgumentError, match="non-empty"):
        encode_key("")
    with pytest.raises(InvalidArgumentError, match="at most 2048"):
        encode_key("ü" * 400)


async def test_awkward_ids_are_stored_listed_and_deleted(nats_url: str, bucket: str) -> None:
    async with NatsStore(nats_url, bucket=bucket) as store:
        for i, workflow_id in enumerate(AWKWARD_IDS):
            state = make_state(workflow_id, events=2, input={"i": i})
            await store.save(state)
            await store.append(state, advance(state))

        for i, workflow_id in enumerate(AWKWARD_IDS):
            loaded = await store.load(workflow_id)
            assert loaded is not None and loaded.workflow_id == workflow_id
            assert loaded.input == {"i": i} and len(loaded.history) == 3
        listed = await store.list(WorkflowFilter())
        assert [s.workflow_id for s in listed] == sorted(AWKWARD_IDS)
        assert await store.load("A") is None  # "=41" is its own id, not "A"

        await store.delete("a.b.c")
        assert await store.load("a.b.c") is None
        assert len(await store.list(WorkflowFilter())) == len(AWKWARD_IDS) - 1


async def test_list_skips_foreign_keys_and_a_foreign_value_is_a_clear_error(
    nats_url: str, bucket: str, connection: Client
) -> None:
    async with NatsStore(nats_url, bucket=bucket) as store:
        await store.save(make_state("mine"))
        kv = await connection.jetstream().key_value(bucket)
        await kv.put("not.ours", b"whatever")  # no workflow id encodes to this key
        assert [s.workflow_id for s in await store.list(WorkflowFilter())] == ["mine"]

        await kv.put("garbage", b'{"not": "a state"}')
        with pytest.raises(NatsStoreError, match="key 'garbage' holds a value that is not"):
            await store.load("garbage")


# -- sizes ------------------------------------------------------------------------------


async def test_a_state_over_max_payload_is_refused_naming_the_limit(
    nats_url: str, bucket: str
) -> None:
    async with NatsStore(nats_url, bucket=bucket) as store:
        state = make_state(events=2)
        await store.save(state)
        before = snapshot(state)
        assert 1_000_000 < store.max_value_size < 1_048_576

        big = state.model_copy(deep=True)
        new = advance(big, blob="x" * 1_100_000)
        with pytest.raises(
            HistoryTooLargeError, match=r"1,04\d,\d{3} bytes .*max_payload"
        ) as raised:
            await store.append(big, new)
        assert isinstance(raised.value, ValueError)
        assert bucket in str(raised.value) and nats_url in str(raised.value)
        with pytest.raises(HistoryTooLargeError):
            await store.save(big)

        assert snapshot(await store.load("wf-1")) == before
        await store.append(state, advance(state))  # still usable


async def test_the_buckets_max_value_size_is_honoured(
    nats_url: str, bucket: str, connection: Client
) -> None:
    await connection.jetstream().create_key_value(
        KeyValueConfig(bucket=bucket, max_value_size=4096)
    )
    async with NatsStore(nats_url, bucket=bucket) as store:
        state = make_state(events=3)
        await store.save(state)
        assert store.max_value_size == 4096

        with pytest.raises(HistoryTooLargeError, match="at most 4,096 bytes") as raised:
            await store.append(state, advance(state, 60))
        assert "events" in str(raised.value)
        loaded = await store.load("wf-1")
        assert loaded is not None and len(loaded.history) == 3


# -- writers that race across connections ---------------------------------------------------


async def test_two_stores_on_one_bucket_never_overwrite_each_other(
    nats_url: str, bucket: str
) -> None:
    async with (
        NatsStore(nats_url, bucket=bucket) as first,
        NatsStore(nats_url, bucket=bucket) as second,
    ):
        state = make_state(events=1)
        await first.save(state)
        mine, theirs = state.model_copy(deep=True), state.model_copy(deep=True)
        await second.append(theirs, advance(theirs, writer="second"))

        # first still remembers revision 1: its compare-and-set must fail, then re-read
        with pytest.raises(StoreConflictError, match="has 2 stored events"):
            await first.append(mine, advance(mine, writer="first"))

        assert snapshot(await first.load("wf-1")) == snapshot(theirs)
        await first.append(theirs, advance(theirs, writer="first-again"))
        assert snapshot(await second.load("wf-1")) == snapshot(theirs)


# -- the registry --------------------------------------------------------------------------


def double(x: int) -> int:
    return 2 * x


async def doubling(ctx: WorkflowContext, x: int) -> int:
    return await ctx.execute_activity(double, x)


async def test_registry_builds_an_embedded_executor_on_nats(nats_url: str, bucket: str) -> None:
    executor = new(
        "nats",
        Config(extra={"url": nats_url, "bucket": bucket, "timeout": 2, "workflows": [doubling]}),
    )
    assert isinstance(executor, DefaultExecutor)
    async with executor:
        handle = await executor.execute(doubling, WorkflowOptions("reg-1", 21))
        assert await handle.result(timeout=10) == 42
    store = executor.store
    assert isinstance(store, NatsStore)
    await store.close()  # idempotent: a no-op if the executor closed it

    async with NatsStore(nats_url, bucket=bucket) as reader:
        stored = await reader.load("reg-1")
    assert stored is not None and stored.status is WorkflowStatus.COMPLETED


async def test_registry_passes_a_connection_and_rejects_unknown_keys(
    connection: Client, bucket: str
) -> None:
    executor = new("nats", Config(extra={"connection": connection, "bucket": bucket}))
    assert isinstance(executor, DefaultExecutor)
    async with executor:
        assert await executor.store.list(WorkflowFilter()) == []
    store = executor.store
    assert isinstance(store, NatsStore)
    await store.close()
    assert connection.is_connected  # a store never closes a connection it was given

    with pytest.raises(InvalidArgumentError, match=r"unknown Config.extra keys .*'nats': stream"):
        new("nats", Config(extra={"stream": "x"}))


# -- arguments -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"url": "http://127.0.0.1:4222"}, "must start with one of nats://"),
        ({"url": "nats://"}, "names no host"),
        ({"url": "nats://h:99999"}, "malformed"),
        ({"url": ""}, "non-empty string"),
        ({"url": "nats://a:1, kafka://b:2"}, "'kafka://b:2' must start"),
        ({"bucket": "has.dot"}, "bucket must be"),
        ({"bucket": ""}, "bucket must be"),
        ({"timeout": 0}, "timeout must be a positive"),
        ({"timeout": float("inf")}, "timeout must be a positive"),
        ({"timeout": True}, "timeout must be a positive"),
        ({"retries": -1}, "retries must be an int >= 0"),
        ({"retries": 1.5}, "retries must be an int >= 0"),
        ({"replicas": 0}, "replicas must be an int >= 1"),
        ({"user": "alice"}, "user and password go together"),
        ({"token": 12345}, "token must be a string, got int"),
        ({"connection": "nats://x"}, "connection must be a nats.aio.client.Client"),
    ],
)
def test_bad_arguments_fail_at_construction(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidArgumentError, match=re.escape(message)):
        NatsStore(**kwargs)


async def test_a_connection_and_a_url_together_are_refused(connection: Client) -> None:
    with pytest.raises(InvalidArgumentError, match="connection or url, token, not both"):
        NatsStore("nats://127.0.0.1:4222", connection=connection, token="t")


# -- failures -------------------------------------------------------------------------------


async def test_connection_refused_fails_within_the_timeout_naming_the_url(
    caplog: pytest.LogCaptureFixture,
) -> None:
    port = servers.free_port()  # nothing listens there
    store = NatsStore(f"nats://alice:s3cret@127.0.0.1:{port}", timeout=0.5, retries=2)
    caplog.set_level(logging.DEBUG)

    started = time.monotonic()
    with pytest.raises(NatsUnavailableError) as raised:
        await store.load("wf-1")
    elapsed = time.monotonic() - started

    message = str(raised.value)
    assert f"nats://***@127.0.0.1:{port}" in message
    assert "3 attempts" in message and "ConnectionRefusedError" in message
    assert isinstance(raised.value, ConnectionError)
    assert elapsed < 3 * 0.5 + 0.5  # three attempts, each bounded, plus the backoff
    # credentials never show: not in errors, logs or the repr
    assert "s3cret" not in message and "alice" not in message
    assert "s3cret" not in repr(store) and "s3cret" not in store.url
    assert not [r for r in caplog.records if "s3cret" in r.getMessage()]
    assert any("retry 1 of 2" in r.getMessage() for r in caplog.records)
    await store.close()


async def test_a_server_without_jetstream_is_named_in_the_error(tmp_path: Path) -> None:
    server = servers.nats(tmp_path)
    server.argv = [arg for arg in server.argv if arg != "-js"]
    with servers.running(server):
        store = NatsStore(url_of(server), timeout=0.5, retries=0)
        with pytest.raises(NatsUnavailableError, match=r"JetStream did not answer .*-js"):
            await store.load("wf-1")
        await store.close()


async def test_server_stopped_then_restarted_on_the_same_port_and_dir(
    private_server: servers.Server,
) -> None:
    url = url_of(private_server)
    async with NatsStore(url, bucket="restarts", timeout=0.5, retries=1) as store:
        state = make_state(events=3)
        await store.save(state)
        await store.append(state, advance(state))
        durable = snapshot(state)

        private_server.stop()
        new = advance(state)
        started = time.monotonic()
        with pytest.raises(NatsUnavailableError, match=re.escape(url)):
            await store.append(state, new)
        with pytest.raises(NatsUnavailableError, match=re.escape(url)):
            await store.load("wf-1")
        assert time.monotonic() - started < 2 * (2 * 0.5 + 0.5)

        private_server.start()  # same port, same store directory
        loaded = await store.load("wf-1")
        assert snapshot(loaded) != snapshot(state)
        assert loaded is not None and snapshot(loaded) == durable  # nothing half-written
        await store.append(state, new)  # the failed write, tried again, lands
        assert snapshot(await store.load("wf-1")) == snapshot(state)

    async with NatsStore(url, bucket="restarts") as reopened:
        assert snapshot(await reopened.load("wf-1")) == snapshot(state)


async def test_a_server_crash_mid_burst_loses_no_acknowledged_write(
    private_server: servers.Server,
) -> None:
    url = url_of(private_server)
    states = [make_state(f"wf-{i}", events=1) for i in range(8)]
    intended = {s.workflow_id: s.model_copy(deep=True) for s in states}
    acked = dict.fromkeys(intended, 1)
    enough = asyncio.Event()

    async with NatsStore(url, bucket="crash", timeout=0.5, retries=1) as store:
        for state in states:
            await store.save(state)

        async def writer(state: WorkflowState) -> None:
            target = intended[state.workflow_id]
            for _ in range(200):
                new = advance(target, by=state.workflow_id)
                state.history.extend(e.model_copy(deep=True) for e in new)
                await store.append(state, new)
                acked[state.workflow_id] = len(state.history)
                if sum(acked.values()) >= 80:
                    enough.set()

        tasks = [asyncio.ensure_future(writer(state)) for state in states]
        await asyncio.wait_for(enough.wait(), timeout=30)
        private_server.kill()  # SIGKILL: a crash, not a clean stop
        outcomes = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 30)
        assert all(isinstance(o, NatsUnavailableError) for o in outcomes), outcomes

        private_server.start()
        for workflow_id, target in intended.items():
            loaded = await store.load(workflow_id)
            assert loaded is not None
            count = len(loaded.history)
            # a prefix of what was meant, holding every acknowledged event, and at
            # most the one in flight when the server died
            assert acked[workflow_id] <= count <= acked[workflow_id] + 1
            assert loaded.history == target.history[:count]
            assert [e.id for e in loaded.history] == list(range(1, count + 1))
            # and writing goes on from what is stored
            resumed = loaded.model_copy(deep=True)
            await store.append(resumed, advance(resumed))


async def test_a_write_whose_answer_was_lost_is_not_reported_as_a_conflict(
    private_server: servers.Server,
) -> None:
    """The server pauses: the write times out unanswered, then lands when it resumes.

    The caller's retry of the same append must succeed (it is already
    stored), not fail as a duplicate.
    """
    assert private_server.process is not None
    pid = private_server.process.pid
    async with NatsStore(url_of(private_server), bucket="paused", timeout=0.3, retries=1) as store:
        state = make_state(events=2)
        await store.save(state)
        new = advance(state)
        state.status = WorkflowStatus.COMPLETED

        os.kill(pid, signal.SIGSTOP)
        try:
            wait_until_stopped(pid)
            with pytest.raises(NatsUnavailableError, match=r"no answer within 0\.3s"):
                await store.append(state, new)
        finally:
            os.kill(pid, signal.SIGCONT)

        await store.append(state, new)  # as the executor retries a failed write

        assert snapshot(await store.load("wf-1")) == snapshot(state)
        with pytest.raises(StoreConflictError):  # a real duplicate still conflicts
            await store.append(state, new)
