"""SASL logins that succeed, and a wrong password refused, through the SASL proxy.

The test broker accepts no login (docs/security.md), so ``sasl_ssl_broker``
and ``sasl_plaintext_broker`` put ``tests/secure_proxy.py`` in front of it: a
SASL server (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512) answering as Kafka does, with
real TLS for SASL_SSL. The clients are the engine's, unchanged.
"""

from __future__ import annotations

import logging
import time
import uuid
from pathlib import Path

import pytest

from app.streaming import BrokerAuthenticationError, KafkaExecutor
from app.streaming.admin import check_topics, ensure_topics
from app.streaming.settings import StreamingSettings, test_settings
from app.workflow import WorkflowOptions
from providers.kafka import KafkaStore, KafkaStoreError
from tests.security.conftest import USERS, Certs
from tests.streaming import crash_app
from tests.streaming.harness import OWNED, WorkerProcess

WAIT = 60.0
MECHANISMS = ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]
WRONG = "not-the-password-at-all"


def _settings(broker: str, certs: Certs, mechanism: str, password: str) -> StreamingSettings:
    return test_settings(
        broker,
        app_id=f"sasl-{uuid.uuid4().hex[:8]}",
        partitions=1,
        security_protocol="SASL_SSL",
        ssl_ca_location=str(certs.ca),
        sasl_mechanism=mechanism,
        sasl_username="alice",
        sasl_password=password,
    )


@pytest.mark.parametrize("mechanism", MECHANISMS)
async def test_each_mechanism_logs_in_over_tls(
    sasl_ssl_broker: str, certs: Certs, mechanism: str
) -> None:
    settings = _settings(sasl_ssl_broker, certs, mechanism, USERS["alice"])
    assert await ensure_topics(settings)
    assert await check_topics(settings) == []
    async with KafkaStore(
        bootstrap_servers=sasl_ssl_broker,
        topic=f"wf-{uuid.uuid4().hex[:8]}",
        fetch_max_wait=0.01,
        security_protocol="SASL_SSL",
        ssl_ca_location=str(certs.ca),
        sasl_mechanism=mechanism,
        sasl_plain_username="alice",
        sasl_plain_password=USERS["alice"],
    ) as store:
        assert await store.load("nothing") is None


@pytest.mark.parametrize("mechanism", MECHANISMS)
async def test_a_wrong_password_is_refused_at_once(
    sasl_ssl_broker: str, certs: Certs, mechanism: str, caplog: pytest.LogCaptureFixture
) -> None:
    settings = _settings(sasl_ssl_broker, certs, mechanism, WRONG)
    with caplog.at_level(logging.DEBUG):
        started = time.monotonic()
        with pytest.raises(BrokerAuthenticationError) as client_error:
            async with KafkaExecutor(settings=settings):
                pass
        assert time.monotonic() - started < 10.0
        store = KafkaStore(
            bootstrap_servers=sasl_ssl_broker,
            security_protocol="SASL_SSL",
            ssl_ca_location=str(certs.ca),
            sasl_mechanism=mechanism,
            sasl_plain_username="alice",
            sasl_plain_password=WRONG,
            request_timeout=5,
        )
        with pytest.raises(KafkaStoreError) as store_error:
            await store.start()
        await store.close()
    for raised in (client_error.value, store_error.value):
        text = str(raised)
        assert f"refused the SASL {mechanism} login of user 'alice'" in text
        assert "invalid credentials" in text
        assert sasl_ssl_broker in text
        assert WRONG not in text
    assert WRONG not in caplog.text


async def test_a_workflow_runs_with_sasl_without_tls(
    sasl_plaintext_broker: str, tmp_path: Path
) -> None:
    login = {
        "STREAMFLOW_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
        "STREAMFLOW_SASL_MECHANISM": "SCRAM-SHA-256",
        "STREAMFLOW_SASL_USERNAME": "bob",
        "STREAMFLOW_SASL_PASSWORD": USERS["bob"],
    }
    app_id = f"sasl-{uuid.uuid4().hex[:8]}"
    settings = test_settings(
        sasl_plaintext_broker,
        app_id=app_id,
        security_protocol="SASL_PLAINTEXT",
        sasl_mechanism="SCRAM-SHA-256",
        sasl_username="bob",
        sasl_password=USERS["bob"],
    )
    await ensure_topics(settings)
    worker = WorkerProcess(
        "sasl-worker",
        sasl_plaintext_broker,
        app_id,
        "tests.streaming.crash_app",
        tmp_path,
        extra_env=login,
    )
    try:
        worker.start()
        worker.wait_for_log(OWNED, timeout=WAIT)
        async with KafkaExecutor(settings=settings) as client:
            handle = await client.execute(crash_app.chain, WorkflowOptions(id="sasl-1", input=2))
            assert await handle.result(timeout=WAIT) == 2
    finally:
        worker.stop()
    assert USERS["bob"] not in worker.log()
