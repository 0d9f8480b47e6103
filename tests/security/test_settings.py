"""The TLS/SASL settings: validated at the call, mapped to each client library, secrets hidden."""

from __future__ import annotations

import ssl
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from app.streaming import KafkaSecurity
from app.streaming.settings import StreamingSettings
from app.workflow import InvalidArgumentError
from providers.kafka import KafkaStoreConfig
from tests.security.conftest import Certs
from tests.streaming.harness import REPO

PASSWORD = "hunter2-not-in-any-output"
SCRAM: dict[str, Any] = {
    "security_protocol": "SASL_SSL",
    "sasl_mechanism": "SCRAM-SHA-512",
    "sasl_username": "svc",
    "sasl_password": PASSWORD,
}


@pytest.mark.parametrize(
    ("values", "named"),
    [
        ({"security_protocol": "TLS"}, "security_protocol"),
        ({"security_protocol": "SASL_SSL", "sasl_mechanism": "GSSAPI"}, "sasl_mechanism"),
        ({"security_protocol": "SASL_SSL", "sasl_username": "u"}, "needs sasl_mechanism"),
        ({**SCRAM, "sasl_username": None}, "needs sasl_username"),
        ({**SCRAM, "sasl_password": None}, "needs sasl_password"),
        ({"sasl_mechanism": "PLAIN"}, "sasl_mechanism set but security_protocol is PLAINTEXT"),
        ({"ssl_ca_location": "/etc/hostname"}, "ssl_ca_location set but security_protocol"),
        ({"security_protocol": "SSL", "ssl_ca_location": "/no/such.pem"}, "ssl_ca_location"),
        (
            {"security_protocol": "SSL", "ssl_certificate_location": "/no/cert.pem"},
            "ssl_certificate_location: no such file '/no/cert.pem'",
        ),
        (
            {"security_protocol": "SSL", "ssl_key_location": "/etc/hostname"},
            "ssl_key_location needs ssl_certificate_location",
        ),
        (
            {"security_protocol": "SSL", "ssl_endpoint_identification_algorithm": "maybe"},
            "ssl_endpoint_identification_algorithm",
        ),
    ],
)
def test_an_invalid_value_fails_at_the_call_naming_it(values: dict[str, Any], named: str) -> None:
    with pytest.raises(InvalidArgumentError, match="invalid streaming settings") as raised:
        StreamingSettings.create(**values)
    assert named in str(raised.value)
    assert PASSWORD not in str(raised.value)


def test_env_vars_and_case(monkeypatch: pytest.MonkeyPatch, certs: Certs) -> None:
    monkeypatch.setenv("STREAMFLOW_SECURITY_PROTOCOL", "sasl_ssl")
    monkeypatch.setenv("STREAMFLOW_SASL_MECHANISM", "scram-sha-256")
    monkeypatch.setenv("STREAMFLOW_SASL_USERNAME", "svc")
    monkeypatch.setenv("STREAMFLOW_SASL_PASSWORD", PASSWORD)
    monkeypatch.setenv("STREAMFLOW_SSL_CA_LOCATION", str(certs.ca))
    settings = StreamingSettings.from_env()

    assert settings.security_protocol == "SASL_SSL"
    assert settings.sasl_mechanism == "SCRAM-SHA-256"
    assert settings.sasl_password is not None
    assert settings.sasl_password.get_secret_value() == PASSWORD
    # to_env hands the secret to a worker process, and from_env reads it back
    assert settings.to_env()["STREAMFLOW_SASL_PASSWORD"] == PASSWORD
    for text in (repr(settings), str(settings), settings.model_dump_json()):
        assert PASSWORD not in text


def test_aiokafka_and_confluent_kafka_mappings(certs: Certs) -> None:
    security = KafkaSecurity(
        **SCRAM,
        ssl_ca_location=str(certs.ca),
        ssl_certificate_location=str(certs.client_cert),
        ssl_key_location=str(certs.client_key),
    )
    options = security.aiokafka_options()
    context = options.pop("ssl_context")
    assert isinstance(context, ssl.SSLContext)
    assert context.check_hostname and context.verify_mode == ssl.CERT_REQUIRED
    assert options == {
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "svc",
        "sasl_plain_password": PASSWORD,
    }
    assert security.confluent_config() == {
        "security.protocol": "SASL_SSL",
        "ssl.ca.location": str(certs.ca),
        "ssl.certificate.location": str(certs.client_cert),
        "ssl.key.location": str(certs.client_key),
        "ssl.endpoint.identification.algorithm": "https",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "svc",
        "sasl.password": PASSWORD,
    }
    assert KafkaSecurity().aiokafka_options() == {"security_protocol": "PLAINTEXT"}
    assert KafkaSecurity().confluent_config() == {"security.protocol": "PLAINTEXT"}
    unchecked = KafkaSecurity(security_protocol="SSL", ssl_endpoint_identification_algorithm="none")
    assert unchecked.ssl_context() is not None
    assert not unchecked.aiokafka_options()["ssl_context"].check_hostname


def test_a_file_that_is_not_pem_fails_naming_it(tmp_path: Path) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate")
    security = KafkaSecurity(security_protocol="SSL", ssl_ca_location=str(junk))
    with pytest.raises(ValueError, match=f"ssl_ca_location '{junk}'"):
        security.aiokafka_options()


def test_the_kafka_store_takes_the_same_settings(certs: Certs) -> None:
    config = KafkaStoreConfig(
        bootstrap_servers="localhost:9093",
        security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-256",
        sasl_plain_username="svc",
        sasl_plain_password=PASSWORD,
        ssl_ca_location=str(certs.ca),
        ssl_key_password=PASSWORD,
    )
    options = config.client_options()
    assert options["sasl_mechanism"] == "SCRAM-SHA-256"
    assert isinstance(options["ssl_context"], ssl.SSLContext)
    assert PASSWORD not in repr(config)
    with pytest.raises(InvalidArgumentError, match="ssl_certificate_location: no such file"):
        KafkaStoreConfig(
            bootstrap_servers="localhost:9093",
            security_protocol="SSL",
            ssl_certificate_location="/no/cert.pem",
        )


def _app(*argv: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app", *argv],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), **env},
        stdin=subprocess.DEVNULL,
    )


def test_the_settings_command_lists_them_and_shows_no_secret() -> None:
    done = _app("settings", env={"STREAMFLOW_SASL_PASSWORD": PASSWORD})
    assert done.returncode == 0, done.stderr
    for env in ("STREAMFLOW_SECURITY_PROTOCOL", "STREAMFLOW_SASL_PASSWORD"):
        assert env in done.stdout
    assert PASSWORD not in done.stdout + done.stderr


def test_cli_flags_are_validated_before_connecting() -> None:
    done = _app(
        "topics",
        "check",
        "--broker",
        "127.0.0.1:1",
        "--security-protocol",
        "SASL_SSL",
        "--sasl-mechanism",
        "SCRAM-SHA-256",
        env={"STREAMFLOW_SASL_PASSWORD": PASSWORD},
    )
    assert done.returncode != 0
    assert "needs sasl_username" in done.stderr
    assert PASSWORD not in done.stdout + done.stderr
    # passwords are not flags: a command line is visible to every local user
    assert "--sasl-password" not in _app("topics", "--help", env={}).stdout
