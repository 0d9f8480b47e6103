"""confluent-kafka (librdkafka) with ``KafkaSecurity.confluent_config()``, and the raw publisher.

Through the TLS and SASL proxy (conftest.py): librdkafka verifies the broker's
certificate and host name and logs in with each mechanism, using exactly the
config the engine's mapping produces.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

import pytest
from confluent_kafka import KafkaError, Message, Producer

from app.streaming import KafkaSecurity
from app.streaming.admin import ensure_topics
from app.streaming.settings import test_settings
from tests.security.conftest import USERS, Certs
from tests.streaming.harness import REPO

MECHANISMS = ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]


def _produce(config: dict[str, str], topic: str) -> tuple[list[Message], list[KafkaError]]:
    producer = Producer({**config, "message.timeout.ms": 10_000})
    delivered: list[Message] = []
    failed: list[KafkaError] = []

    def on_delivery(err: KafkaError | None, msg: Message) -> None:
        (failed.append(err) if err is not None else delivered.append(msg))

    producer.produce(topic, key=b"k", value=b"v", on_delivery=on_delivery)
    producer.flush(20)
    return delivered, failed


def _run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *argv],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "STREAMFLOW_SASL_PASSWORD": USERS["bob"]},
        stdin=subprocess.DEVNULL,
    )


@pytest.mark.parametrize("mechanism", MECHANISMS)
async def test_confluent_kafka_logs_in_with_the_mapped_config(
    sasl_ssl_broker: str, certs: Certs, mechanism: str
) -> None:
    security = KafkaSecurity(
        security_protocol="SASL_SSL",
        ssl_ca_location=str(certs.ca),
        sasl_mechanism=mechanism,
        sasl_username="alice",
        sasl_password=USERS["alice"],
    )
    settings = test_settings(
        sasl_ssl_broker, app_id=f"rk-{uuid.uuid4().hex[:8]}", partitions=1, **dict(security)
    )
    await ensure_topics(settings)
    config = {"bootstrap.servers": sasl_ssl_broker, **security.confluent_config()}
    delivered, failed = _produce(config, settings.topology.commands)
    assert failed == [] and len(delivered) == 1


async def test_the_raw_publisher_over_sasl_ssl(sasl_ssl_broker: str, certs: Certs) -> None:
    app_id = f"rawpub-{uuid.uuid4().hex[:8]}"
    security = KafkaSecurity(
        security_protocol="SASL_SSL",
        ssl_ca_location=str(certs.ca),
        sasl_mechanism="SCRAM-SHA-512",
        sasl_username="bob",
        sasl_password=USERS["bob"],
    )
    await ensure_topics(test_settings(sasl_ssl_broker, app_id=app_id, **dict(security)))
    flags = [
        f"-X{key}={value}"
        for key, value in security.confluent_config().items()
        if key != "sasl.password"
    ]
    done = _run(
        [
            str(REPO / "docs" / "examples" / "raw_publish.py"),
            "--broker",
            sasl_ssl_broker,
            "--app-id",
            app_id,
            *flags,
            "start",
            "--workflow-id",
            "order-1",
            "--type",
            "order_workflow",
        ]
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["topic"] == f"{app_id}.g1.commands"
