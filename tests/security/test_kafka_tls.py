"""Kafka over TLS, end to end: worker, KafkaExecutor, topics CLI and the kafka store.

Against ``tls_broker`` (the test broker behind a TLS proxy, conftest.py), with
certificates made here by trustme and the hostname checked. A certificate the
client must not trust, or one for another host, fails at once with an error
that says so and names the broker.
"""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest

from app.streaming import BrokerTLSError, KafkaExecutor
from app.streaming.admin import check_topics, ensure_topics
from app.streaming.settings import test_settings
from app.workflow import WorkflowOptions
from app.workflow._types import WorkflowState
from providers.kafka import KafkaStore, KafkaStoreError
from tests import servers
from tests.security.conftest import Certs, tansu_behind_proxy
from tests.streaming import crash_app
from tests.streaming.harness import OWNED, REPO, WorkerProcess

WAIT = 60.0
REFUSED_WITHIN = 10.0  # a refused handshake must fail this fast, not hang


def _cli(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app", *argv],
        capture_output=True,
        text=True,
        timeout=WAIT,
        cwd=REPO,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), **(env or {})},
        stdin=subprocess.DEVNULL,
    )


async def test_a_workflow_runs_through_a_worker_and_a_client_over_tls(
    tls_broker: str, certs: Certs, tmp_path: Path
) -> None:
    app_id = f"tls-{uuid.uuid4().hex[:8]}"
    tls = ["--security-protocol", "SSL", "--ssl-ca-location", str(certs.ca)]
    created = _cli("topics", "create", "--broker", tls_broker, "--app-id", app_id, *tls)
    assert created.returncode == 0, created.stderr
    assert "created" in created.stdout
    checked = _cli("topics", "check", "--broker", tls_broker, "--app-id", app_id, *tls)
    assert checked.returncode == 0, checked.stderr

    worker = WorkerProcess(
        "tls-worker",
        tls_broker,
        app_id,
        "tests.streaming.crash_app",
        tmp_path,
        extra_env={
            "STREAMFLOW_SECURITY_PROTOCOL": "SSL",
            "STREAMFLOW_SSL_CA_LOCATION": str(certs.ca),
        },
    )
    settings = test_settings(
        tls_broker, app_id=app_id, security_protocol="SSL", ssl_ca_location=str(certs.ca)
    )
    try:
        worker.start()
        worker.wait_for_log(OWNED, timeout=WAIT)
        async with KafkaExecutor(settings=settings) as client:
            handle = await client.execute(crash_app.chain, WorkflowOptions(id="tls-1", input=3))
            assert await handle.result(timeout=WAIT) == 3
        assert await check_topics(settings) == []
    finally:
        worker.stop()
    listed = _cli(
        "list",
        "--broker",
        tls_broker,
        "--app-id",
        app_id,
        env={"STREAMFLOW_SECURITY_PROTOCOL": "SSL", "STREAMFLOW_SSL_CA_LOCATION": str(certs.ca)},
    )
    assert listed.returncode == 0, listed.stderr
    assert "tls-1" in listed.stdout


async def test_the_kafka_store_over_tls(tls_broker: str, certs: Certs) -> None:
    topic = f"wf-tls-{uuid.uuid4().hex[:8]}"
    options = {
        "bootstrap_servers": tls_broker,
        "topic": topic,
        "fetch_max_wait": 0.01,
        "security_protocol": "SSL",
        "ssl_ca_location": str(certs.ca),
    }
    now = datetime.now(UTC)
    state = WorkflowState(workflow_id="w1", run_id="r1", created_at=now, updated_at=now)
    async with KafkaStore(**options) as store:
        await store.save(state)
    async with KafkaStore(**options) as again:  # a new process reads it back over TLS
        loaded = await again.load("w1")
    assert loaded is not None and loaded.run_id == "r1"


def _assert_refused(exc: BaseException, broker: str, why: str, started: float) -> None:
    assert time.monotonic() - started < REFUSED_WITHIN
    assert why in str(exc)
    assert broker in str(exc)


async def test_a_certificate_from_an_unknown_ca_is_refused(tls_broker: str, certs: Certs) -> None:
    settings = test_settings(
        tls_broker, security_protocol="SSL", ssl_ca_location=str(certs.other_ca)
    )
    started = time.monotonic()
    with pytest.raises(BrokerTLSError) as client_error:
        async with KafkaExecutor(settings=settings):
            pass
    _assert_refused(client_error.value, tls_broker, "certificate verify failed", started)

    started = time.monotonic()
    with pytest.raises(BrokerTLSError) as admin_error:
        await ensure_topics(settings)
    _assert_refused(admin_error.value, tls_broker, "certificate verify failed", started)

    started = time.monotonic()
    store = KafkaStore(
        bootstrap_servers=tls_broker,
        security_protocol="SSL",
        ssl_ca_location=str(certs.other_ca),
        request_timeout=5,
    )
    with pytest.raises(KafkaStoreError) as store_error:
        await store.start()
    await store.close()
    _assert_refused(store_error.value, tls_broker, "certificate verify failed", started)

    started = time.monotonic()
    cli = _cli(
        "topics",
        "check",
        "--broker",
        tls_broker,
        "--security-protocol",
        "SSL",
        "--ssl-ca-location",
        str(certs.other_ca),
    )
    assert cli.returncode != 0
    _assert_refused(AssertionError(cli.stderr), tls_broker, "certificate verify failed", started)


async def test_a_certificate_for_another_host_is_refused_unless_the_check_is_off(
    certs: Certs,
) -> None:
    broker, proxy = tansu_behind_proxy(certs.other_host_cert, certs.other_host_key)
    with servers.running(broker), servers.running(proxy):
        address = f"localhost:{proxy.port}"
        settings = test_settings(
            address, security_protocol="SSL", ssl_ca_location=str(certs.ca), partitions=1
        )
        started = time.monotonic()
        with pytest.raises(BrokerTLSError) as raised:
            await ensure_topics(settings)
        _assert_refused(raised.value, address, "Hostname mismatch", started)

        unchecked = settings.model_copy(update={"ssl_endpoint_identification_algorithm": "none"})
        assert await ensure_topics(unchecked)


async def test_a_broker_that_requires_a_client_certificate(certs: Certs) -> None:
    broker, proxy = tansu_behind_proxy(certs.cert, certs.key, client_ca=certs.ca)
    with servers.running(broker), servers.running(proxy):
        address = f"localhost:{proxy.port}"
        without = test_settings(
            address, security_protocol="SSL", ssl_ca_location=str(certs.ca), partitions=1
        )
        started = time.monotonic()
        with pytest.raises(BrokerTLSError) as raised:
            await ensure_topics(without)
        _assert_refused(raised.value, address, "require a client certificate", started)

        with_cert = without.model_copy(
            update={
                "ssl_certificate_location": str(certs.client_cert),
                "ssl_key_location": str(certs.client_key),
            }
        )
        assert await ensure_topics(with_cert)
