"""InngestStore against a fake Inngest server over real HTTP, beyond the conformance suite.

The suite (``test_store_conformance.py``) already runs every store contract
test on InngestStore; these tests cover the seed's HTTP contract, the event
key, the index, and the behaviour when the server fails.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from app.workflow import Config, DefaultExecutor, WorkflowOptions, WorkflowStatus, new
from app.workflow._errors import InvalidArgumentError
from app.workflow._store import StoreConflictError
from app.workflow._types import WorkflowFilter
from providers.inngest import (
    DEFAULT_BASE_URL,
    INDEX_ID,
    InngestStore,
    StoreClosedError,
    StoreRequestError,
    StoreUnavailableError,
)
from tests.conformance import workflows as wf
from tests.fakes import Fault, Request
from tests.fakes.inngest_server import FakeInngest
from tests.servers import free_port
from tests.stores.test_store_conformance import advance, at, make_state, snapshot

KEY = "evt-key-5d1e8b-secret"
FAST: dict[str, Any] = {"timeout": 1.0, "retries": 1}  # failures surface quickly


@pytest.fixture
def server() -> Iterator[FakeInngest]:
    with FakeInngest(event_key=KEY) as fake:
        yield fake


@pytest.fixture(autouse=True)
def _no_inngest_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("INNGEST_BASE_URL", raising=False)
    monkeypatch.delenv("INNGEST_EVENT_KEY", raising=False)


def ids(states: list[Any]) -> list[str]:
    return [state.workflow_id for state in states]


def puts(workflow_id: str) -> Callable[[Request], bool]:
    """Match the PUT of one workflow's document."""
    path = "/v1/workflows/" + quote(workflow_id, safe="")
    return lambda request: request.method == "PUT" and request.path == path


def index_entries(server: FakeInngest) -> dict[str, str]:
    return dict(server.value(INDEX_ID)["workflows"])


# -- the seed's contract --------------------------------------------------------------


async def test_speaks_the_seed_contract_with_the_event_key(server: FakeInngest) -> None:
    async with InngestStore(server.url, event_key=KEY) as store:
        state = make_state("order-1", events=2)
        await store.save(state)
        await store.append(state, advance(state))
        stored = server.value("order-1")
        assert stored["workflow_id"] == "order-1" and len(stored["history"]) == 3
        assert await store.load("missing") is None
        await store.delete("order-1")
        await store.delete("order-1")  # 404: already gone

    assert server.value("order-1") is None
    assert {r.method for r in server.requests} == {"GET", "PUT", "DELETE"}
    assert {r.path.rsplit("/", 1)[0] for r in server.requests} == {"/v1/workflows"}
    assert all(r.headers["authorization"] == f"Bearer {KEY}" for r in server.requests)


async def test_no_event_key_sends_no_authorization() -> None:
    with FakeInngest() as open_server:
        async with InngestStore(open_server.url) as store:
            await store.save(make_state())
            assert "event_key" not in repr(store)
        assert not any("authorization" in r.headers for r in open_server.requests)


async def test_any_workflow_id_is_safe_in_urls(server: FakeInngest) -> None:
    odd = "a/b c||d%2F?x=1#frag é"
    async with InngestStore(server.url, event_key=KEY) as store:
        state = make_state(odd, events=2)
        await store.save(state)
        await store.append(state, advance(state))
        assert snapshot(await store.load(odd)) == snapshot(state)
        assert server.value(odd) is not None  # stored under the id itself
        assert ids(await store.list(WorkflowFilter())) == [odd]


async def test_the_index_id_is_reserved(server: FakeInngest) -> None:
    async with InngestStore(server.url, event_key=KEY) as store:
        with pytest.raises(InvalidArgumentError, match="reserved"):
            await store.save(make_state(INDEX_ID))
        with pytest.raises(InvalidArgumentError, match="reserved"):
            await store.load(INDEX_ID)


async def test_the_index_survives_a_restart_of_the_store_and_of_the_server(
    server: FakeInngest,
) -> None:
    async with InngestStore(server.url, event_key=KEY) as store:
        for i in range(3):
            await store.save(make_state(f"wf-{i}", created_at=at(i)))
    server.stop()
    server.start()

    async with InngestStore(server.url, event_key=KEY) as reopened:
        assert ids(await reopened.list(WorkflowFilter())) == ["wf-2", "wf-1", "wf-0"]
    assert sorted(index_entries(server)) == ["wf-0", "wf-1", "wf-2"]


async def test_list_ignores_an_index_entry_whose_state_is_gone(server: FakeInngest) -> None:
    async with InngestStore(server.url, event_key=KEY) as store:
        await store.save(make_state("kept"))
        await store.save(make_state("lost"))
        with server.lock:
            del server.data[("", "lost")]
        assert ids(await store.list(WorkflowFilter())) == ["kept"]


async def test_stores_in_several_processes_keep_every_id_in_the_index(
    server: FakeInngest,
) -> None:
    stores = [InngestStore(server.url, event_key=KEY) for _ in range(3)]
    try:
        await asyncio.gather(
            *(
                store.save(make_state(f"p{n}-wf{i}", created_at=at(i)))
                for n, store in enumerate(stores)
                for i in range(10)
            )
        )
        listed = await stores[0].list(WorkflowFilter())
    finally:
        for store in stores:
            await store.close()
    assert sorted(ids(listed)) == sorted(f"p{n}-wf{i}" for n in range(3) for i in range(10))


async def test_a_server_without_etags_still_works(caplog: pytest.LogCaptureFixture) -> None:
    with FakeInngest(etags=False) as plain:
        async with InngestStore(plain.url) as store:
            state = make_state(events=1)
            await store.save(state)
            await store.save(make_state("other", created_at=at(1)))
            await store.append(state, advance(state))
            assert snapshot(await store.load("wf-1")) == snapshot(state)
            assert ids(await store.list(WorkflowFilter())) == ["other", "wf-1"]
            await store.delete("other")
            assert ids(await store.list(WorkflowFilter())) == ["wf-1"]
    assert "sends no ETag" in caplog.text
    assert not any("if-match" in r.headers for r in plain.requests if r.method == "PUT")


# -- configuration ----------------------------------------------------------------------


async def test_defaults_and_environment(
    server: FakeInngest, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert InngestStore().base_url == DEFAULT_BASE_URL == "http://localhost:8288"
    monkeypatch.setenv("INNGEST_BASE_URL", server.url + "/")
    monkeypatch.setenv("INNGEST_EVENT_KEY", KEY)
    async with InngestStore() as store:
        assert store.base_url == server.url
        await store.save(make_state())
    assert server.value("wf-1") is not None


async def test_a_base_url_path_is_kept(server: FakeInngest) -> None:
    async with InngestStore(server.url + "/inngest/", event_key=KEY) as store:
        await store.save(make_state())
    assert server.value("wf-1", prefix="/inngest") is not None
    assert server.value("wf-1") is None


async def test_an_own_http_client_is_used_and_left_open(server: FakeInngest) -> None:
    sent: list[str] = []

    async def count(request: httpx.Request) -> None:
        sent.append(request.method)

    async with httpx.AsyncClient(event_hooks={"request": [count]}) as client:
        async with InngestStore(server.url, event_key=KEY, http_client=client) as store:
            await store.save(make_state())
            assert await store.load("wf-1") is not None
        assert not client.is_closed
        assert sent == ["GET", "PUT", "PUT", "GET"]  # index read + write, state write, load


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"base_url": "localhost:8288"}, "http://"),
        ({"retries": 1.5}, "retries"),
        ({"timeout": -1}, "timeout"),
        ({"http_client": object()}, "httpx.AsyncClient"),
    ],
)
def test_bad_arguments_fail_at_the_call(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(InvalidArgumentError, match=match):
        InngestStore(**kwargs)


async def test_calls_after_close_raise_naming_the_server(server: FakeInngest) -> None:
    store = InngestStore(server.url, event_key=KEY)
    await store.close()
    with pytest.raises(StoreClosedError, match=server.url):
        await store.list(WorkflowFilter())


async def test_a_wrong_event_key_is_a_clear_error_that_never_shows_a_key(
    server: FakeInngest, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = "evt-key-wrong-9c2f-secret"
    async with InngestStore(server.url, event_key=wrong) as store:
        assert wrong not in repr(store) and "event_key=<hidden>" in repr(store)
        with pytest.raises(StoreRequestError) as raised:
            await store.save(make_state())
    message = str(raised.value)
    assert "event key" in message and "401" in message and server.url in message
    async with InngestStore(server.url, event_key=KEY, **FAST) as right:
        await right.save(make_state())
        server.stop()
        with pytest.raises(StoreUnavailableError) as down:
            await right.load("wf-1")
    for text in (message, str(down.value), caplog.text, repr(raised.value.__cause__)):
        assert wrong not in text and KEY not in text


# -- failures ---------------------------------------------------------------------------


async def test_connection_refused_is_a_clear_error_within_the_timeout() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    async with InngestStore(url, timeout=1.0, retries=2) as store:
        started = time.monotonic()
        with pytest.raises(StoreUnavailableError) as raised:
            await store.load("wf-1")
        elapsed = time.monotonic() - started
    message = str(raised.value)
    assert url in message and "Inngest server" in message and "ConnectError" in message
    assert elapsed < 3.0


async def test_a_server_that_does_not_answer_times_out(server: FakeInngest) -> None:
    async with InngestStore(server.url, event_key=KEY, timeout=0.3, retries=1) as store:
        with server.faulty(Fault("hang", times=10)):
            started = time.monotonic()
            with pytest.raises(StoreUnavailableError, match=r"no answer within 0\.3s"):
                await store.save(make_state())
            assert time.monotonic() - started < 2.0


async def test_transient_errors_are_retried_with_backoff(server: FakeInngest) -> None:
    async with InngestStore(server.url, event_key=KEY, retries=3) as store:
        with server.faulty(Fault("status", status=502, times=2), Fault("drop")):
            await store.save(make_state())
        assert await store.load("wf-1") is not None


async def test_server_stopped_mid_save_leaves_nothing_half_written_and_back_works(
    server: FakeInngest,
) -> None:
    async with InngestStore(server.url, event_key=KEY, **FAST) as store:
        kept = make_state("kept", events=2)
        await store.save(kept)
        with (
            server.faulty(Fault("stop", puts("lost"))),
            pytest.raises(StoreUnavailableError, match=server.url),
        ):
            await store.save(make_state("lost", created_at=at(5)))
        assert server.wait_stopped()
        with pytest.raises(StoreUnavailableError):
            await store.load("kept")

        server.start()
        assert "lost" in index_entries(server)  # the failure really struck mid-save
        assert await store.load("lost") is None
        assert ids(await store.list(WorkflowFilter())) == ["kept"]
        assert snapshot(await store.load("kept")) == snapshot(kept)

        lost = make_state("lost", created_at=at(5))
        await store.save(lost)
        await store.append(lost, advance(lost))
        assert ids(await store.list(WorkflowFilter())) == ["lost", "kept"]


async def test_server_stopped_mid_append_writes_nothing_and_back_works(
    server: FakeInngest,
) -> None:
    async with InngestStore(server.url, event_key=KEY, **FAST) as store:
        state = make_state(events=2)
        await store.save(state)
        before = snapshot(state)
        failed = state.model_copy(deep=True)
        with server.faulty(Fault("stop", puts("wf-1"))), pytest.raises(StoreUnavailableError):
            await store.append(failed, advance(failed))
        server.start()

        assert snapshot(await store.load("wf-1")) == before
        await store.append(state, advance(state))
        assert snapshot(await store.load("wf-1")) == snapshot(state)


async def test_a_write_whose_answer_is_lost_is_applied_once(server: FakeInngest) -> None:
    async with InngestStore(server.url, event_key=KEY) as store:
        state = make_state(events=1)
        lost_index = Fault("drop_after", puts(INDEX_ID))
        with server.faulty(lost_index):
            await store.save(state)
        lost_append = Fault("drop_after", puts("wf-1"))
        with server.faulty(lost_append):
            await store.append(state, advance(state))
        assert lost_index.times == lost_append.times == 0
        assert snapshot(await store.load("wf-1")) == snapshot(state)
        with pytest.raises(StoreConflictError):
            await store.append(state, state.history[-1:])


# -- registry -----------------------------------------------------------------------------


async def test_the_registry_builds_an_executor_on_inngest(server: FakeInngest) -> None:
    executor = new(
        "inngest",
        Config(
            extra={
                "base_url": server.url,
                "event_key": KEY,
                "workflows": [wf.sequential],
                "activities": [wf.double, wf.async_double],
            }
        ),
    )
    assert isinstance(executor, DefaultExecutor)
    async with executor:
        handle = await executor.execute(wf.sequential, WorkflowOptions(id="seq", input=1))
        assert await handle.result(timeout=10) == [2, 4, 8]
        store = executor.store
    assert isinstance(store, InngestStore)
    assert server.value("seq")["status"] == WorkflowStatus.COMPLETED
    await store.close()  # the executor does not close a store it was given

    with pytest.raises(InvalidArgumentError, match="event_key"):
        new("inngest", Config(extra={"eventKey": KEY}))
