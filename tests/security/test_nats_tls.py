"""The NATS store over TLS, against a real nats-server (``--tls``) and trustme certificates."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from app.workflow import InvalidArgumentError
from app.workflow._types import WorkflowState
from providers.nats import NatsStore, NatsUnavailableError
from tests import servers
from tests.security.conftest import Certs

REFUSED_WITHIN = 10.0


def _nats_tls(certs: Certs, *more: str) -> servers.Server:
    tls = ["--tls", "--tlscert", str(certs.cert), "--tlskey", str(certs.key), *more]
    return servers.nats(servers.scratch_dir("nats-tls"), args=tls)


@pytest.fixture(scope="module")
def nats_tls_url(certs: Certs) -> Iterator[str]:
    """``nats://localhost:PORT`` of a nats-server that requires TLS."""
    with servers.running(_nats_tls(certs)) as server:
        yield f"nats://localhost:{server.port}"


def _state(workflow_id: str) -> WorkflowState:
    now = datetime.now(UTC)
    return WorkflowState(workflow_id=workflow_id, run_id="r1", created_at=now, updated_at=now)


async def test_the_store_works_over_tls(nats_tls_url: str, certs: Certs) -> None:
    async with NatsStore(nats_tls_url, bucket="tls", tls_ca_file=certs.ca) as store:
        await store.save(_state("w1"))
        loaded = await store.load("w1")
    assert loaded is not None and loaded.run_id == "r1"


async def test_the_ca_can_come_from_the_environment(
    nats_tls_url: str, certs: Certs, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NATS_CA", str(certs.ca))
    async with NatsStore(nats_tls_url, bucket="tls-env") as store:
        await store.save(_state("w2"))


async def test_an_unknown_ca_is_refused_at_once(nats_tls_url: str, certs: Certs) -> None:
    store = NatsStore(nats_tls_url, bucket="tls", tls_ca_file=certs.other_ca, timeout=2)
    started = time.monotonic()
    with pytest.raises(NatsUnavailableError) as raised:
        await store.connect()
    await store.close()
    assert time.monotonic() - started < REFUSED_WITHIN
    assert "TLS handshake" in str(raised.value)
    assert "certificate verify failed" in str(raised.value)
    assert nats_tls_url in str(raised.value)


async def test_a_server_that_verifies_clients(certs: Certs) -> None:
    server = _nats_tls(certs, "--tlsverify", "--tlscacert", str(certs.ca))
    with servers.running(server):
        url = f"nats://localhost:{server.port}"
        store = NatsStore(url, bucket="mtls", tls_ca_file=certs.ca, timeout=2, retries=0)
        with pytest.raises(NatsUnavailableError):
            await store.connect()
        await store.close()
        async with NatsStore(
            url,
            bucket="mtls",
            tls_ca_file=certs.ca,
            tls_cert_file=certs.client_cert,
            tls_key_file=certs.client_key,
        ) as store:
            await store.save(_state("w3"))


def test_missing_files_fail_at_construction_naming_them(certs: Certs) -> None:
    with pytest.raises(InvalidArgumentError, match="tls_ca_file: no such file"):
        NatsStore("nats://localhost:4222", tls_ca_file="/no/ca.pem")
    with pytest.raises(InvalidArgumentError, match="tls_key_file needs tls_cert_file"):
        NatsStore("nats://localhost:4222", tls_key_file=certs.client_key)
    with pytest.raises(InvalidArgumentError, match="credentials: no such file"):
        NatsStore("nats://localhost:4222", credentials="/no/user.creds")
