"""Certificates made with trustme, and brokers that need TLS or a SASL login.

The test broker cannot serve TLS itself (docs/security.md): ``tls_broker`` is
a Tansu broker behind ``tests/tls_proxy.py``, which terminates real TLS with
a certificate for ``localhost``/``127.0.0.1`` and advertises the proxy, so
every client connection is TLS. ``sasl_broker`` is Tansu with
``--authentication``: it refuses every login (it can hold no users).
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


def tansu_behind_tls(
    cert: Path, key: Path, *, client_ca: Path | None = None, args: tuple[str, ...] = ()
) -> tuple[servers.Server, servers.Server]:
    """A Tansu broker reached only through a TLS proxy on ``localhost:PORT``; not started."""
    workdir = servers.scratch_dir("tansu-tls")
    port = servers.free_port()
    broker = servers.tansu(workdir, advertised=f"localhost:{port}", args=args)
    proxy = servers.tls_proxy(workdir, broker.port, cert, key, port=port, client_ca=client_ca)
    return broker, proxy


@pytest.fixture(scope="session")
def tls_broker(certs: Certs) -> Iterator[str]:
    """``localhost:PORT`` of a broker that speaks TLS only (certificate for localhost)."""
    broker, proxy = tansu_behind_tls(certs.cert, certs.key)
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
    broker, proxy = tansu_behind_tls(certs.cert, certs.key, args=("--authentication",))
    with servers.running(broker), servers.running(proxy):
        yield f"localhost:{proxy.port}"
