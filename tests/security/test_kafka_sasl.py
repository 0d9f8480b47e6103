"""SASL logins refused by a real broker: a clear error within a bounded time, no password.

The test broker with ``--authentication`` refuses every login (it can hold no
users: docs/security.md, "What the test broker supports"), so this tests the
refusal of each mechanism, over plain TCP (SASL_PLAINTEXT) and through TLS
(SASL_SSL). Each refusal must name the mechanism, the user and the broker,
never the password, and come at once (aiokafka alone would report "Unable to
bootstrap", or a bare ``KeyError('v')`` for SCRAM).
"""

from __future__ import annotations

import logging
import subprocess
import sys
import time

import pytest

from app.streaming import BrokerAuthenticationError, KafkaExecutor
from app.streaming.admin import ensure_topics
from app.streaming.settings import test_settings
from providers.kafka import KafkaStore, KafkaStoreError
from tests.security.conftest import Certs
from tests.streaming.harness import REPO

PASSWORD = "s3cret-never-shown-anywhere"
REFUSED_WITHIN = 10.0
MECHANISMS = ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]


def _check(exc: BaseException, broker: str, mechanism: str, started: float) -> None:
    text = str(exc)
    assert time.monotonic() - started < REFUSED_WITHIN
    assert f"refused the SASL {mechanism} login of user 'alice'" in text
    assert broker in text
    assert PASSWORD not in text
    assert PASSWORD not in repr(exc)


@pytest.mark.parametrize("mechanism", MECHANISMS)
async def test_a_refused_login_fails_at_once_naming_mechanism_and_user(
    sasl_broker: str, mechanism: str, caplog: pytest.LogCaptureFixture
) -> None:
    settings = test_settings(
        sasl_broker,
        security_protocol="SASL_PLAINTEXT",
        sasl_mechanism=mechanism,
        sasl_username="alice",
        sasl_password=PASSWORD,
    )
    assert PASSWORD not in repr(settings)
    with caplog.at_level(logging.DEBUG):
        started = time.monotonic()
        with pytest.raises(BrokerAuthenticationError) as client_error:
            async with KafkaExecutor(settings=settings):
                pass
        _check(client_error.value, sasl_broker, mechanism, started)

        started = time.monotonic()
        with pytest.raises(BrokerAuthenticationError) as admin_error:
            await ensure_topics(settings)
        _check(admin_error.value, sasl_broker, mechanism, started)

        store = KafkaStore(
            bootstrap_servers=sasl_broker,
            security_protocol="SASL_PLAINTEXT",
            sasl_mechanism=mechanism,
            sasl_plain_username="alice",
            sasl_plain_password=PASSWORD,
            request_timeout=5,
        )
        started = time.monotonic()
        with pytest.raises(KafkaStoreError) as store_error:
            await store.start()
        await store.close()
        _check(store_error.value, sasl_broker, mechanism, started)
        assert PASSWORD not in repr(store)
    assert PASSWORD not in caplog.text


async def test_a_refused_login_over_tls(sasl_tls_broker: str, certs: Certs) -> None:
    settings = test_settings(
        sasl_tls_broker,
        security_protocol="SASL_SSL",
        ssl_ca_location=str(certs.ca),
        sasl_mechanism="SCRAM-SHA-512",
        sasl_username="alice",
        sasl_password=PASSWORD,
    )
    started = time.monotonic()
    # the TLS handshake succeeds: the error is the login, not the certificate
    with pytest.raises(BrokerAuthenticationError) as raised:
        await ensure_topics(settings)
    _check(raised.value, sasl_tls_broker, "SCRAM-SHA-512", started)


def test_the_cli_reports_a_refused_login_without_the_password(sasl_broker: str) -> None:
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "app", "topics", "create", "--broker", sasl_broker],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        env={
            "PATH": "/usr/bin:/bin",
            "PYTHONPATH": str(REPO),
            "STREAMFLOW_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
            "STREAMFLOW_SASL_MECHANISM": "SCRAM-SHA-256",
            "STREAMFLOW_SASL_USERNAME": "alice",
            "STREAMFLOW_SASL_PASSWORD": PASSWORD,
        },
        stdin=subprocess.DEVNULL,
    )
    assert time.monotonic() - started < 30
    assert done.returncode != 0
    assert "refused the SASL SCRAM-SHA-256 login of user 'alice'" in done.stderr
    assert PASSWORD not in done.stdout + done.stderr
