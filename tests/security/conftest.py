"""Certificates made with trustme, and brokers that need TLS or a SASL login.

The test broker can neither serve TLS nor accept a SASL login (docs/security.md,
"What the test broker supports"). ``tls_broker`` is a Tansu broker behind
``tests/secure_proxy.py``, which terminates real TLS with a certificate for
``localhost``/``127.0.0.1``; the broker advertises the proxy, so every client
connection is TLS. ``sasl_ssl_broker`` and ``sasl_plaintext_broker`` put the
proxy's SASL server (PLAIN, SCRAM-SHA-256/512) in front too. ``sasl_broker``
and ``sasl_tls_broker`` are Tansu's own ``--authentication``, which refuses
every login.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme

from tests import servers


@dataclass(frozen=True)
class Certs:
    """PEM files: a CA, the broker's certificate it signed, and some that it must not trust."""

    ca: Path  # signed the broker's and the client's certificates
    cert: Path  # the broker's chain, for localhost and 127.0.0.1
    key: Path
    client_cert: Path  # a client certificate (mutual TLS) signed by ``ca``
    client_key: Path
    other_ca: Path  # a CA that signed nothing here
    other_host_cert: Path  # signed by ``ca``, but for example.org only
    other_host_key: Path


def _issue(ca: trustme.CA, where: Path, name: str, *hosts: str) -> tuple[Path, Path]:
    issued = ca.issue_cert(*hosts)
    cert, key = where / f"{name}.pem", where / f"{name}.key"
    with cert.open("wb") as out:
        for blob in issued.cert_chain_pems:
            out.write(blob.bytes())
    issued.private_key_pem.write_to_path(str(key))
    return cert, key


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    where = tmp_path_factory.mktemp("certs")
    ca, other = trustme.CA(), trustme.CA()
    ca.cert_pem.write_to_path(str(where / "ca.pem"))
    other.cert_pem.write_to_path(str(where / "other-ca.pem"))
    cert, key = _issue(ca, where, "broker", "localhost", "127.0.0.1")
    client_cert, client_key = _issue(ca, where, "client", "client.example")
    other_cert, other_key = _issue(ca, where, "elsewhere", "example.org")
    return Certs(
        where / "ca.pem",
        cert,
        key,
        client_cert,
        client_key,
        where / "other-ca.pem",
        other_cert,
        other_key,
    )


USERS = {"alice": "alice-pass-w0rd", "bob": "bob-pass-w0rd"}
"""The users (name: password) the SASL proxy accepts."""


def tansu_behind_proxy(
    cert: Path | None = None,
    key: Path | None = None,
    *,
    client_ca: Path | None = None,
    users: dict[str, str] | None = None,
    args: tuple[str, ...] = (),
) -> tuple[servers.Server, servers.Server]:
    """A Tansu broker reached only through tests/secure_proxy.py on ``localhost:PORT``
    (TLS with ``cert``/``key``, a SASL login with ``users``); neither started yet."""
    workdir = servers.scratch_dir("tansu-proxied")
    port = servers.free_port()
    broker = servers.tansu(workdir, advertised=f"localhost:{port}", args=args)
    proxy = servers.secure_proxy(
        workdir, broker.port, cert=cert, key=key, client_ca=client_ca, users=users, port=port
    )
    return broker, proxy


@pytest.fixture(scope="session")
def tls_broker(certs: Certs) -> Iterator[str]:
    """``localhost:PORT`` of a broker that speaks TLS only (certificate for localhost)."""
    broker, proxy = tansu_behind_proxy(certs.cert, certs.key)
    with servers.running(broker), servers.running(proxy):
        yield f"localhost:{proxy.port}"


@pytest.fixture(scope="session")
def sasl_ssl_broker(certs: Certs) -> Iterator[str]:
    """``localhost:PORT``: TLS, then a SASL login (PLAIN or SCRAM) as one of USERS."""
    broker, proxy = tansu_behind_proxy(certs.cert, certs.key, users=USERS)
    with servers.running(broker), servers.running(proxy):
        yield f"localhost:{proxy.port}"


@pytest.fixture(scope="session")
def sasl_plaintext_broker() -> Iterator[str]:
    """``localhost:PORT``: a SASL login (PLAIN or SCRAM) as one of USERS, no TLS."""
    broker, proxy = tansu_behind_proxy(users=USERS)
    with servers.running(broker), servers.running(proxy):
        yield f"localhost:{proxy.port}"


@pytest.fixture(scope="session")
def sasl_broker() -> Iterator[str]:
    """``127.0.0.1:PORT`` of a broker that requires a SASL login (and accepts none)."""
    workdir = servers.scratch_dir("tansu-sasl")
    with servers.running(servers.tansu(workdir, args=["--authentication"])) as broker:
        yield f"127.0.0.1:{broker.port}"


@pytest.fixture(scope="session")
def sasl_tls_broker(certs: Certs) -> Iterator[str]:
    """``localhost:PORT`` of a broker behind TLS that requires a SASL login (SASL_SSL)."""
    broker, proxy = tansu_behind_proxy(certs.cert, certs.key, args=("--authentication",))
    with servers.running(broker), servers.running(proxy):
        yield f"localhost:{proxy.port}"
