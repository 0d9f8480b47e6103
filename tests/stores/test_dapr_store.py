"""DaprStore against a fake Dapr sidecar over real HTTP, beyond the conformance suite.

The suite (``test_store_conformance.py``) already runs every store contract
test on DaprStore; these tests cover its own options, its index, and its
behaviour when the sidecar fails.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from app.workflow import Config, DefaultExecutor, WorkflowOptions, WorkflowStatus, new
from app.workflow._errors import InvalidArgumentError
from app.workflow._store import StoreConflictError
from app.workflow._types import WorkflowFilter
from providers.dapr import (
    DaprStore,
    StoreClosedError,
    StoreRequestError,
    StoreUnavailableError,
    default_url,
)
from tests.conformance import workflows as wf
from tests.fakes import Fault, Request
from tests.fakes.dapr_server import FakeDapr
from tests.servers import free_port
from tests.stores.test_store_conformance import advance, at, make_state, snapshot

INDEX = "workflow-index:v1"
FAST: dict[str, Any] = {"timeout": 1.0, "retries": 1}  # failures surface quickly


@pytest.fixture
def sidecar() -> Iterator[FakeDapr]:
    with FakeDapr() as server:
        yield server


def ids(states: list[Any]) -> list[str]:
    return [state.workflow_id for state in states]


def writes_key(key: str) -> Callable[[Request], bool]:
    """Match a save request that writes ``key``."""

    def match(request: Request) -> bool:
        if request.method != "POST" or not request.body:
            return False
        return any(item.get("key") == key for item in request.json())

    return match


def index_entries(sidecar: FakeDapr) -> dict[str, str]:
    return dict(sidecar.value(INDEX)["workflows"])


# -- the documented API -----------------------------------------------------------


async def test_speaks_the_state_api_with_documented_keys_and_etags(sidecar: FakeDapr) -> None:
    async with DaprStore(sidecar.url) as store:
        state = make_state("order-1", events=2)
        await store.save(state)
        await store.append(state, advance(state))

        stored = sidecar.value("workflow-order-1")
        assert stored["run_id"] == "run-1" and len(stored["history"]) == 3
        assert list(index_entries(sidecar)) == ["order-1"]
        assert await store.load("missing") is None
        await store.delete("order-1")

    assert sidecar.value("workflow-order-1") is None
    assert index_entries(sidecar) == {}
    requests = {(r.method, r.path.split("/")[3]) for r in sidecar.requests}
    assert requests <= {("GET", "statestore"), ("POST", "statestore"), ("DELETE", "statestore")}
    # Appends and deletes are conditional: the etag travels in the body or in If-Match.
    assert any("if-match" in r.headers for r in sidecar.requests if r.method == "DELETE")


async def test_any_workflow_id_is_safe_in_keys_and_urls(sidecar: FakeDapr) -> None:
    odd = "a/b c||d%2F?x=1#frag é"
    async with DaprStore(sidecar.url, key_prefix="app1-") as store:
        state = make_state(odd, events=2)
        await store.save(state)
        await store.append(state, advance(state))

        assert snapshot(await store.load(odd)) == snapshot(state)
        assert ids(await store.list(WorkflowFilter())) == [odd]
        assert sidecar.value("app1-" + quote(odd, safe="")) is not None
        await store.delete(odd)
        assert await store.load(odd) is None


async def test_the_index_survives_a_restart_of_the_store_and_of_the_sidecar(
    sidecar: FakeDapr,
) -> None:
    async with DaprStore(sidecar.url) as store:
        for i in range(3):
            await store.save(make_state(f"wf-{i}", created_at=at(i)))
    sidecar.stop()
    sidecar.start()

    async with DaprStore(sidecar.url) as reopened:
        assert ids(await reopened.list(WorkflowFilter())) == ["wf-2", "wf-1", "wf-0"]


async def test_list_ignores_an_index_entry_whose_state_is_gone(sidecar: FakeDapr) -> None:
    async with DaprStore(sidecar.url) as store:
        await store.save(make_state("kept"))
        await store.save(make_state("lost"))
        with sidecar.lock:
            del sidecar.data["statestore"]["workflow-lost"]

        assert ids(await store.list(WorkflowFilter())) == ["kept"]
        assert await store.load("lost") is None
        await store.delete("lost")  # nothing stored: a no-op


async def test_stores_in_several_processes_keep_every_id_in_the_index(sidecar: FakeDapr) -> None:
    # Three store objects stand for three processes: their index updates race
    # on the index's etag and are retried until all land.
    stores = [DaprStore(sidecar.url) for _ in range(3)]
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


async def test_a_stored_workflow_stays_listed_when_delete_races_save(sidecar: FakeDapr) -> None:
    saver, deleter = DaprStore(sidecar.url), DaprStore(sidecar.url)
    try:
        for round_ in range(10):
            await saver.save(make_state("contested", f"run-{round_}a"))
            await asyncio.gather(
                deleter.delete("contested"), saver.save(make_state("contested", f"run-{round_}b"))
            )
            # Whatever the interleaving: stored means listed.
            stored = await saver.load("contested")
            listed = ids(await saver.list(WorkflowFilter()))
            assert listed == ([] if stored is None else ["contested"])
    finally:
        await saver.close()
        await deleter.close()


# -- configuration ----------------------------------------------------------------


async def test_dapr_http_port_and_endpoint_are_honoured(
    sidecar: FakeDapr, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DAPR_HTTP_ENDPOINT", raising=False)
    monkeypatch.delenv("DAPR_RUNTIME_HOST", raising=False)
    monkeypatch.setenv("DAPR_HTTP_PORT", str(sidecar.port))
    async with DaprStore() as store:
        assert store.url == sidecar.url
        assert store.store_name == "statestore"
        await store.save(make_state("via-port"))
    assert sidecar.value("workflow-via-port") is not None

    monkeypatch.setenv("DAPR_HTTP_ENDPOINT", "http://127.0.0.1:1")
    assert default_url() == "http://127.0.0.1:1"
    monkeypatch.delenv("DAPR_HTTP_ENDPOINT")
    monkeypatch.delenv("DAPR_HTTP_PORT")
    assert default_url() == "http://127.0.0.1:3500"
    monkeypatch.setenv("DAPR_HTTP_PORT", "not-a-port")
    with pytest.raises(InvalidArgumentError, match="DAPR_HTTP_PORT"):
        DaprStore()


async def test_an_unknown_state_store_is_a_clear_error(sidecar: FakeDapr) -> None:
    async with DaprStore(sidecar.url, store_name="nosuchstore") as store:
        with pytest.raises(StoreRequestError) as raised:
            await store.save(make_state())
    message = str(raised.value)
    assert "nosuchstore" in message and sidecar.url in message
    assert "ERR_STATE_STORE_NOT_FOUND" in message


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"url": "localhost:3500"}, "http://"),
        ({"store_name": ""}, "store_name"),
        ({"key_prefix": "a||b"}, "key_prefix"),
        ({"retries": -1}, "retries"),
        ({"timeout": 0}, "timeout"),
        ({"client": object()}, "get_state"),
    ],
)
def test_bad_arguments_fail_at_the_call(kwargs: dict[str, Any], match: str) -> None:
    kwargs.setdefault("url", None if "client" in kwargs else "http://127.0.0.1:3500")
    with pytest.raises(InvalidArgumentError, match=match):
        DaprStore(**kwargs)


async def test_calls_after_close_raise_naming_the_sidecar(sidecar: FakeDapr) -> None:
    store = DaprStore(sidecar.url)
    await store.close()
    await store.close()
    with pytest.raises(StoreClosedError, match=sidecar.url):
        await store.load("wf-1")


async def test_the_api_token_is_sent_and_never_shown(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = "tok-7f3a9c-secret"
    caplog.set_level(logging.DEBUG)
    with FakeDapr(api_token=secret) as server:
        monkeypatch.setenv("DAPR_API_TOKEN", secret)
        async with DaprStore(server.url, **FAST) as store:
            await store.save(make_state())
            sent = len(server.requests)
            assert secret not in repr(store) and "api_token=<hidden>" in repr(store)
            server.stop()
            with pytest.raises(StoreUnavailableError) as down:
                await store.load("wf-1")
        async with DaprStore(server.url, api_token="wrong-token") as wrong:
            server.start()
            with pytest.raises(StoreRequestError, match="401") as refused:
                await wrong.load("wf-1")
    assert all(r.headers.get("dapr-api-token") == secret for r in server.requests[:sent])
    for text in (str(down.value), str(refused.value), caplog.text):
        assert secret not in text


# -- a StateClient instead of HTTP ------------------------------------------------


@dataclass
class _Response:
    data: bytes
    etag: str


class _EtagMismatchError(Exception):
    pass


class HttpStateClient:
    """A small StateClient with the methods of Dapr's async SDK client, over the HTTP API."""

    def __init__(self, url: str) -> None:
        self.http = httpx.AsyncClient(base_url=url)
        self.calls: list[str] = []

    async def get_state(self, store_name: str, key: str) -> _Response:
        self.calls.append("get_state")
        response = await self.http.get(f"/v1.0/state/{store_name}/{quote(key, safe='')}")
        if response.status_code == 204:
            return _Response(b"", "")
        response.raise_for_status()
        return _Response(response.content, response.headers["etag"])

    async def save_state(
        self,
        store_name: str,
        key: str,
        value: bytes | str,
        etag: str | None = None,
        options: Any = None,
    ) -> None:
        self.calls.append("save_state")
        item: dict[str, Any] = {"key": key, "value": json.loads(value)}
        if etag is not None:
            item.update(etag=etag, options={"concurrency": "first-write"})
        response = await self.http.post(f"/v1.0/state/{store_name}", json=[item])
        if response.status_code == 409:  # Dapr's SDK raises with the runtime's message
            raise _EtagMismatchError(response.json()["message"])
        response.raise_for_status()

    async def delete_state(
        self,
        store_name: str,
        key: str,
        etag: str | None = None,
        options: Any = None,
    ) -> None:
        self.calls.append("delete_state")
        headers = {} if etag is None else {"If-Match": etag}
        params = {} if etag is None else {"concurrency": "first-write"}
        response = await self.http.delete(
            f"/v1.0/state/{store_name}/{quote(key, safe='')}", headers=headers, params=params
        )
        if response.status_code == 409:
            raise _EtagMismatchError(response.json()["message"])
        response.raise_for_status()


async def test_a_state_client_can_replace_http(sidecar: FakeDapr) -> None:
    client = HttpStateClient(sidecar.url)
    try:
        async with DaprStore(client=client) as store:
            assert "client" in repr(store) and store.url is None
            state = make_state(events=1)
            await store.save(state)
            first, second = state.model_copy(deep=True), state.model_copy(deep=True)
            outcomes = await asyncio.gather(
                store.append(first, advance(first, winner="a")),
                store.append(second, advance(second, winner="b")),
                return_exceptions=True,
            )
            assert sorted(type(o).__name__ for o in outcomes) == ["NoneType", "StoreConflictError"]
            winner = first if outcomes[0] is None else second
            assert snapshot(await store.load("wf-1")) == snapshot(winner)
            assert ids(await store.list(WorkflowFilter())) == ["wf-1"]
            await store.delete("wf-1")
            assert await store.list(WorkflowFilter()) == []
        assert not client.http.is_closed  # the caller owns the client
        assert {"get_state", "save_state", "delete_state"} <= set(client.calls)
    finally:
        await client.http.aclose()


async def test_a_state_client_failing_is_retried_then_a_clear_error(sidecar: FakeDapr) -> None:
    client = HttpStateClient(sidecar.url)

    async def refused(store_name: str, key: str) -> _Response:
        raise ConnectionRefusedError("sidecar gRPC port refused")

    client.get_state = refused  # type: ignore[method-assign]
    try:
        async with DaprStore(client=client, retries=2) as store:
            with pytest.raises(StoreUnavailableError, match="3 time") as raised:
                await store.load("wf-1")
        assert "statestore" in str(raised.value) and "HttpStateClient" in str(raised.value)
    finally:
        await client.http.aclose()


# -- failures -----------------------------------------------------------------------


async def test_connection_refused_is_a_clear_error_within_the_timeout() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    async with DaprStore(url, timeout=1.0, retries=2) as store:
        started = time.monotonic()
        with pytest.raises(StoreUnavailableError) as raised:
            await store.save(make_state())
        elapsed = time.monotonic() - started
    message = str(raised.value)
    assert url in message and "Dapr sidecar" in message and "ConnectError" in message
    assert elapsed < 3.0


async def test_a_sidecar_that_does_not_answer_times_out(sidecar: FakeDapr) -> None:
    async with DaprStore(sidecar.url, timeout=0.3, retries=1) as store:
        with sidecar.faulty(Fault("hang", times=10)):
            started = time.monotonic()
            with pytest.raises(StoreUnavailableError, match=r"no answer within 0\.3s"):
                await store.load("wf-1")
            assert time.monotonic() - started < 2.0


async def test_transient_errors_are_retried_with_backoff(sidecar: FakeDapr) -> None:
    async with DaprStore(sidecar.url, retries=3) as store:
        with sidecar.faulty(Fault("status", status=503, times=3)):
            await store.save(make_state())
        assert await store.load("wf-1") is not None
    assert len(sidecar.requests) == 3 + 3 + 1  # 3 refused, index get + post, state post, load


async def test_sidecar_stopped_mid_save_leaves_nothing_half_written_and_back_works(
    sidecar: FakeDapr,
) -> None:
    async with DaprStore(sidecar.url, **FAST) as store:
        kept = make_state("kept", events=2)
        await store.save(kept)
        # The sidecar dies after the index write, when the state itself is written.
        with (
            sidecar.faulty(Fault("stop", writes_key("workflow-lost"))),
            pytest.raises(StoreUnavailableError, match=sidecar.url),
        ):
            await store.save(make_state("lost", created_at=at(5)))
        assert sidecar.wait_stopped()
        with pytest.raises(StoreUnavailableError):
            await store.list(WorkflowFilter())

        sidecar.start()
        assert "lost" in index_entries(sidecar)  # the failure really struck mid-save
        assert await store.load("lost") is None
        assert ids(await store.list(WorkflowFilter())) == ["kept"]
        assert snapshot(await store.load("kept")) == snapshot(kept)

        lost = make_state("lost", created_at=at(5))
        await store.save(lost)
        await store.append(lost, advance(lost))
        assert ids(await store.list(WorkflowFilter())) == ["lost", "kept"]


async def test_sidecar_stopped_mid_append_writes_nothing_and_back_works(
    sidecar: FakeDapr,
) -> None:
    async with DaprStore(sidecar.url, **FAST) as store:
        state = make_state(events=2)
        await store.save(state)
        before = snapshot(state)
        failed = state.model_copy(deep=True)
        with (
            sidecar.faulty(Fault("stop", writes_key("workflow-wf-1"))),
            pytest.raises(StoreUnavailableError),
        ):
            await store.append(failed, advance(failed))
        assert sidecar.wait_stopped()
        sidecar.start()

        assert snapshot(await store.load("wf-1")) == before
        await store.append(state, advance(state))
        assert snapshot(await store.load("wf-1")) == snapshot(state)


async def test_a_write_whose_answer_is_lost_is_applied_once(sidecar: FakeDapr) -> None:
    async with DaprStore(sidecar.url) as store:
        state = make_state(events=1)
        lost_index = Fault("drop_after", writes_key(INDEX))
        with sidecar.faulty(lost_index):
            await store.save(state)
        lost_appends = Fault("drop_after", writes_key("workflow-wf-1"), times=2)
        with sidecar.faulty(lost_appends):
            await store.append(state, advance(state))
            await store.append(state, advance(state, 2))
        assert lost_index.times == lost_appends.times == 0
        assert snapshot(await store.load("wf-1")) == snapshot(state)
        with pytest.raises(StoreConflictError):
            await store.append(state, state.history[-1:])


# -- registry -----------------------------------------------------------------------


async def test_the_registry_builds_an_executor_on_dapr(sidecar: FakeDapr) -> None:
    executor = new(
        "dapr",
        Config(
            extra={
                "url": sidecar.url,
                "key_prefix": "reg-",
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
    assert isinstance(store, DaprStore) and store.key_prefix == "reg-"
    assert sidecar.value("reg-seq")["status"] == WorkflowStatus.COMPLETED
    await store.close()  # the executor does not close a store it was given

    with pytest.raises(InvalidArgumentError, match="store_name"):
        new("dapr", Config(extra={"storename": "x"}))
