"""TLS and SASL for every Kafka connection: one settings block, one mapping per client library.

:class:`KafkaSecurity` declares the settings once (Kafka's own names, as
librdkafka spells them: ``security.protocol`` becomes ``security_protocol`` and
``STREAMFLOW_SECURITY_PROTOCOL``); :class:`~app.streaming.StreamingSettings`
inherits them. :meth:`KafkaSecurity.aiokafka_options` gives the keyword
arguments of aiokafka's clients, :meth:`KafkaSecurity.confluent_config` the
config of confluent-kafka's. Passwords are :class:`pydantic.SecretStr`: a repr,
a log line or an error shows ``**********``.

aiokafka hides why a connection failed (a refused certificate or login is
logged, then reported as "Unable to bootstrap"), and some refusals escape it
as a bare ``KeyError``. :func:`start_client` starts a client and, when the
start fails on a secured connection, opens one connection the same way to
find out, raising :class:`BrokerTLSError` or :class:`BrokerAuthenticationError`
that says what was refused, by which broker, for which mechanism and user.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
from collections.abc import Awaitable, Callable
from typing import Any, Literal, Self

from aiokafka.conn import create_conn
from aiokafka.errors import KafkaConnectionError
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from app.workflow._errors import WorkflowError

SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]


class BrokerSecurityError(WorkflowError):
    """A Kafka broker refused the connection's TLS or SASL: retrying will not help.

    Not a ``ConnectionError`` (an ``OSError``): code that retries those on the
    assumption that the broker is away for a while must not retry this.
    """


class BrokerTLSError(BrokerSecurityError):
    """The TLS handshake with a broker failed (e.g. its certificate is not trusted)."""


class BrokerAuthenticationError(BrokerSecurityError):
    """A broker refused the SASL login (wrong user or password, mechanism not enabled)."""


def _file(value: str | None, field: str) -> str | None:
    if value is None:
        return None
    if not value:
        raise ValueError(f"{field} is empty (unset it or give a file)")
    if not os.path.isfile(value):
        raise ValueError(f"{field}: no such file {value!r}")
    if not os.access(value, os.R_OK):
        raise ValueError(f"{field}: file {value!r} is not readable")
    return value


class KafkaSecurity(BaseModel):
    """How a client secures its Kafka connections: TLS, SASL, or both (``SASL_SSL``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    security_protocol: SecurityProtocol = Field(
        "PLAINTEXT",
        description="TLS (SSL), a SASL login (SASL_PLAINTEXT), both (SASL_SSL), or none",
    )
    sasl_mechanism: SaslMechanism | None = Field(
        None, description="SASL mechanism (with SASL_PLAINTEXT or SASL_SSL)"
    )
    sasl_username: str | None = Field(None, min_length=1, description="SASL user")
    sasl_password: SecretStr | None = Field(
        None, description="SASL password (env only; never shown)"
    )
    ssl_ca_location: str | None = Field(
        None, description="CA certificates (PEM) that sign the brokers' (default: system CAs)"
    )
    ssl_certificate_location: str | None = Field(
        None, description="Client certificate (PEM), for brokers that require one (mTLS)"
    )
    ssl_key_location: str | None = Field(None, description="Private key (PEM) of the certificate")
    ssl_key_password: SecretStr | None = Field(
        None, description="Password of the private key (env only; never shown)"
    )
    ssl_endpoint_identification_algorithm: Literal["https", "none"] = Field(
        "https",
        description="https: check the broker's certificate names its host; none: do not "
        "(only for brokers reached by an address their certificate does not name)",
    )

    @field_validator("security_protocol", "sasl_mechanism", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.strip().upper() if isinstance(value, str) else value

    @field_validator("ssl_endpoint_identification_algorithm", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        protocol = self.security_protocol
        if self.sasl:
            if self.sasl_mechanism is None:
                raise ValueError(f"security_protocol {protocol} needs sasl_mechanism")
            if self.sasl_username is None:
                raise ValueError(f"sasl_mechanism {self.sasl_mechanism} needs sasl_username")
            if self.sasl_password is None:
                raise ValueError(
                    f"sasl_mechanism {self.sasl_mechanism} needs sasl_password "
                    "(STREAMFLOW_SASL_PASSWORD)"
                )
        else:
            given = [
                n for n in ("sasl_mechanism", "sasl_username", "sasl_password") if self._set(n)
            ]
            if given:
                raise ValueError(
                    f"{', '.join(given)} set but security_protocol is {protocol}: use "
                    "SASL_PLAINTEXT or SASL_SSL, or unset them"
                )
        files = ("ssl_ca_location", "ssl_certificate_location", "ssl_key_location")
        if not self.tls:
            given = [n for n in (*files, "ssl_key_password") if self._set(n)]
            if given:
                raise ValueError(
                    f"{', '.join(given)} set but security_protocol is {protocol}: use SSL "
                    "or SASL_SSL, or unset them"
                )
        for name in files:
            _file(getattr(self, name), name)
        if self.ssl_key_location and not self.ssl_certificate_location:
            raise ValueError("ssl_key_location needs ssl_certificate_location")
        return self

    def _set(self, name: str) -> bool:
        return getattr(self, name) is not None

    @property
    def tls(self) -> bool:
        """Whether connections use TLS (``SSL`` or ``SASL_SSL``)."""
        return self.security_protocol in ("SSL", "SASL_SSL")

    @property
    def sasl(self) -> bool:
        """Whether connections log in with SASL."""
        return self.security_protocol.startswith("SASL")

    def login(self) -> str:
        """The SASL login, for messages: mechanism and user, never the password."""
        return f"{self.sasl_mechanism} login of user {self.sasl_username!r}"

    def ssl_context(self) -> ssl.SSLContext | None:
        """The TLS context of the connections (None without TLS); a bad file fails naming it."""
        if not self.tls:
            return None
        try:
            context = ssl.create_default_context(cafile=self.ssl_ca_location)
        except (ssl.SSLError, OSError) as exc:
            raise ValueError(
                f"ssl_ca_location {self.ssl_ca_location!r}: not PEM CA certificates ({exc})"
            ) from None
        if self.ssl_endpoint_identification_algorithm == "none":
            context.check_hostname = False
        if self.ssl_certificate_location:
            password = self.ssl_key_password.get_secret_value() if self.ssl_key_password else None
            try:
                context.load_cert_chain(
                    self.ssl_certificate_location, self.ssl_key_location, password
                )
            except (ssl.SSLError, OSError) as exc:
                raise ValueError(
                    f"ssl_certificate_location {self.ssl_certificate_location!r} / "
                    f"ssl_key_location {self.ssl_key_location!r}: cannot load the client "
                    f"certificate and key ({type(exc).__name__}: {exc.args[-1]})"
                ) from None
        return context

    def aiokafka_options(self) -> dict[str, Any]:
        """Keyword arguments of aiokafka's producer, consumer and admin client."""
        options: dict[str, Any] = {"security_protocol": self.security_protocol}
        if self.tls:
            options["ssl_context"] = self.ssl_context()
        if self.sasl:
            assert self.sasl_password is not None  # checked by _consistent
            options["sasl_mechanism"] = self.sasl_mechanism
            options["sasl_plain_username"] = self.sasl_username
            options["sasl_plain_password"] = self.sasl_password.get_secret_value()
        return options

    def confluent_config(self) -> dict[str, str]:
        """The same settings as confluent-kafka (librdkafka) config entries."""
        config: dict[str, str] = {"security.protocol": self.security_protocol}
        if self.tls:
            names = {
                "ssl.ca.location": self.ssl_ca_location,
                "ssl.certificate.location": self.ssl_certificate_location,
                "ssl.key.location": self.ssl_key_location,
            }
            config.update({k: v for k, v in names.items() if v is not None})
            if self.ssl_key_password is not None:
                config["ssl.key.password"] = self.ssl_key_password.get_secret_value()
            algorithm = self.ssl_endpoint_identification_algorithm
            config["ssl.endpoint.identification.algorithm"] = algorithm
        if self.sasl:
            assert self.sasl_mechanism is not None and self.sasl_password is not None
            config["sasl.mechanism"] = self.sasl_mechanism
            config["sasl.username"] = str(self.sasl_username)
            config["sasl.password"] = self.sasl_password.get_secret_value()
        return config

    def security_only(self) -> KafkaSecurity:
        """Just these security settings (of a subclass such as StreamingSettings)."""
        return KafkaSecurity(**{name: getattr(self, name) for name in KafkaSecurity.model_fields})


class _HideSaslTokens(logging.Filter):
    """aiokafka logs each request at DEBUG, a SASL PLAIN token (user and password) too."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args if isinstance(record.args, tuple) else ()
        if any(type(arg).__name__.startswith("SaslAuthenticateRequest") for arg in args):
            record.args = tuple(
                "SaslAuthenticateRequest(<token not logged>)"
                if type(arg).__name__.startswith("SaslAuthenticateRequest")
                else arg
                for arg in args
            )
        return True


logging.getLogger("aiokafka.conn").addFilter(_HideSaslTokens())

SECRETS = frozenset({"sasl_password", "ssl_key_password"})
"""Settings only read from the environment: a command line is visible to every local user."""


def _host_port(server: str) -> tuple[str, int]:
    host, _, port = server.strip().rpartition(":")
    return host.strip("[]"), int(port)


async def _connect(server: str, options: dict[str, Any], timeout: float) -> None:
    host, port = _host_port(server)
    conn = await asyncio.wait_for(
        create_conn(host, port, request_timeout_ms=int(timeout * 1000), **options), timeout
    )
    conn.close()


def _closed(exc: BaseException) -> bool:
    return isinstance(exc, KafkaConnectionError) and "closed" in str(exc)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, KeyError):
        # aiokafka 0.14 reads a SCRAM server-final message without its signature
        # ("e=unknown-user", "e=invalid-proof") as a KeyError('v').
        return "the broker sent a SCRAM error instead of its signature (unknown user or bad proof)"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"certificate verify failed: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError):
        return str(exc.reason or exc)
    text = str(exc)
    name = type(exc).__name__
    return text if text.startswith(name) else f"{name}: {text}" if text else name


async def diagnose(
    security: KafkaSecurity, servers: str, timeout: float
) -> BrokerSecurityError | None:
    """Why a secured connection to ``servers`` fails, or None when it is not TLS or SASL.

    Connects to each bootstrap server first without SASL (so a TLS problem is
    told apart from a refused login), then with it.
    """
    options = security.aiokafka_options()
    plain = {"security_protocol": "SSL" if security.tls else "PLAINTEXT"}
    if security.tls:
        plain["ssl_context"] = options["ssl_context"]
    for server in servers.split(","):
        try:
            await _connect(server, plain, timeout)
        except ssl.SSLError as exc:
            return BrokerTLSError(
                f"TLS handshake with the Kafka broker {server.strip()} failed: {_reason(exc)} "
                f"(ssl_ca_location: {security.ssl_ca_location or 'system CAs'}; "
                "is the broker's certificate signed by it and for this host?)"
            )
        except Exception as exc:
            if security.tls and not security.ssl_certificate_location and _closed(exc):
                # TLS 1.3: a server that wants a client certificate says so by
                # closing the connection after the handshake.
                return BrokerTLSError(
                    f"the Kafka broker {server.strip()} closed the TLS connection after the "
                    f"handshake ({_reason(exc)}): it may require a client certificate "
                    "(ssl_certificate_location, ssl_key_location)"
                )
            continue  # not reachable at all: not a TLS or SASL problem
        if not security.sasl:
            return None
        try:
            await _connect(server, options, timeout)
        except Exception as exc:
            return BrokerAuthenticationError(
                f"the Kafka broker {server.strip()} refused the SASL {security.login()}: "
                f"{_reason(exc)} (check the user, STREAMFLOW_SASL_PASSWORD and that the "
                "broker enables this mechanism)"
            )
        return None
    return None


async def start_client(
    start: Callable[[], Awaitable[Any]], security: KafkaSecurity, servers: str, timeout: float
) -> None:
    """``await start()`` within ``timeout``; a TLS or SASL refusal raises a BrokerSecurityError.

    Only a failed start on a secured connection costs the extra diagnosing
    connection; other failures are raised as they are.
    """
    try:
        await asyncio.wait_for(start(), timeout)
    except Exception as exc:
        if security.security_protocol == "PLAINTEXT":
            raise
        found = await diagnose(security, servers, min(timeout, 10.0))
        if found is None:
            raise
        raise found from exc
