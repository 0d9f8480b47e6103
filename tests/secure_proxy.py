"""A proxy that adds TLS and SASL in front of the test broker, which has neither in working order.

``python -m tests.secure_proxy --port P --upstream U [--cert C --key K [--client-ca CA]]
[--user NAME:PASSWORD ...]``

* With ``--cert``/``--key`` it terminates real TLS (with ``--client-ca`` it
  requires a client certificate signed by it) and pipes the decrypted bytes
  to the broker on ``127.0.0.1:U``.
* With ``--user`` it is the SASL server, as a Kafka broker is: it passes
  ``ApiVersions`` through, answers ``SaslHandshake`` and ``SaslAuthenticate``
  itself (PLAIN; SCRAM-SHA-256 and SCRAM-SHA-512 by the scramp library,
  RFC 5802/7677, 4096 iterations), and refuses any other request before a login succeeds by
  closing the connection. A failed login gets error 58
  (SASL_AUTHENTICATION_FAILED) with Kafka's message. After a login, bytes flow
  unchanged.

The broker advertises the proxy's address, so every connection a client
opens goes through it. The clients under test are unchanged aiokafka.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ssl
import struct

import scramp

SASL_HANDSHAKE, SASL_AUTHENTICATE = 17, 36
UNSUPPORTED_SASL_MECHANISM, SASL_AUTHENTICATION_FAILED = 33, 58
ITERATIONS = 4096
SCRAM = ("SCRAM-SHA-256", "SCRAM-SHA-512")
MECHANISMS = ["PLAIN", *SCRAM]


class Refused(Exception):
    """The login failed: answer error 58 and close."""


def _string(text: str | None) -> bytes:
    if text is None:
        return struct.pack(">h", -1)
    data = text.encode()
    return struct.pack(">h", len(data)) + data


class Scram:
    """The server side of one SCRAM exchange (client-first, then client-final), by scramp."""

    def __init__(self, mechanism: str, users: dict[str, str]) -> None:
        self.mechanism = scramp.ScramMechanism(mechanism)
        self.users = users
        self.server = self.mechanism.make_server(self._auth_info)

    def _auth_info(self, user: str) -> tuple[bytes, bytes, bytes, int]:
        password = self.users.get(user)
        if password is None:
            raise Refused
        info: tuple[bytes, bytes, bytes, int] = self.mechanism.make_auth_info(
            password, iteration_count=ITERATIONS
        )
        return info

    def answer(self, message: bytes) -> tuple[bytes, bool]:
        try:
            if self.server.stage is None:
                self.server.set_client_first(message.decode())
                return self.server.get_server_first().encode(), False
            self.server.set_client_final(message.decode())
            return self.server.get_server_final().encode(), True
        except scramp.ScramException as exc:
            raise Refused from exc


def _plain(message: bytes, users: dict[str, str]) -> tuple[bytes, bool]:
    _authzid, user, password = message.decode().split("\0")
    if users.get(user) != password:
        raise Refused
    return b"", True


async def _read_frame(reader: asyncio.StreamReader) -> bytes:
    size = struct.unpack(">i", await reader.readexactly(4))[0]
    return await reader.readexactly(size)


async def _login(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    upstream: asyncio.StreamWriter,
    users: dict[str, str],
) -> bool:
    """Serve requests until a SASL login succeeds (True) or fails (False)."""
    mechanism: str | None = None
    exchange: Scram | None = None
    while True:
        frame = await _read_frame(reader)
        key, version, correlation = struct.unpack(">hhi", frame[:8])
        if key not in (SASL_HANDSHAKE, SASL_AUTHENTICATE):
            if key != 18:  # ApiVersions is the only request allowed before a login
                return False
            upstream.write(struct.pack(">i", len(frame)) + frame)
            await upstream.drain()
            continue
        client_id_length = struct.unpack(">h", frame[8:10])[0]
        body = frame[10 + max(client_id_length, 0) :]
        if key == SASL_HANDSHAKE:
            length = struct.unpack(">h", body[:2])[0]
            mechanism = body[2 : 2 + length].decode()
            code = 0 if mechanism in MECHANISMS else UNSUPPORTED_SASL_MECHANISM
            answer = struct.pack(">hi", code, len(MECHANISMS))
            answer += b"".join(_string(m) for m in MECHANISMS)
            if mechanism in SCRAM:
                exchange = Scram(mechanism, users)
        else:
            length = struct.unpack(">i", body[:4])[0]
            token = body[4 : 4 + length]
            try:
                if mechanism == "PLAIN":
                    reply, done = _plain(token, users)
                elif exchange is not None:
                    reply, done = exchange.answer(token)
                else:
                    raise Refused
                code, message = 0, None
            except (Refused, ValueError, KeyError, IndexError):
                reply, done, code = b"", False, SASL_AUTHENTICATION_FAILED
                message = (
                    "Authentication failed during authentication due to invalid credentials "
                    f"with SASL mechanism {mechanism}"
                )
            answer = struct.pack(">h", code) + _string(message)
            answer += struct.pack(">i", len(reply)) + reply
            if version >= 1:
                answer += struct.pack(">q", 0)
        response = struct.pack(">i", correlation) + answer
        writer.write(struct.pack(">i", len(response)) + response)
        await writer.drain()
        if key == SASL_HANDSHAKE and code:
            return False
        if key == SASL_AUTHENTICATE and code:
            return False
        if key == SASL_AUTHENTICATE and done:
            return True


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, ssl.SSLError, OSError):
        pass
    finally:
        with contextlib.suppress(Exception):
            writer.close()


async def main(options: argparse.Namespace) -> None:
    context: ssl.SSLContext | None = None
    if options.cert:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(options.cert, options.key)
        if options.client_ca:
            context.load_verify_locations(options.client_ca)
            context.verify_mode = ssl.CERT_REQUIRED
    users = dict(user.split(":", 1) for user in options.user)

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", options.upstream)
        except OSError:
            writer.close()
            return
        back = asyncio.ensure_future(_pipe(up_reader, writer))
        try:
            if users and not await _login(reader, writer, up_writer, users):
                raise ConnectionResetError("login refused")
            await _pipe(reader, up_writer)
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError, OSError):
            pass
        finally:
            for stream in (writer, up_writer):
                with contextlib.suppress(Exception):
                    stream.close()
            back.cancel()

    server = await asyncio.start_server(serve, "127.0.0.1", options.port, ssl=context)
    print(f"proxy on 127.0.0.1:{options.port} -> 127.0.0.1:{options.upstream}", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m tests.secure_proxy")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", type=int, required=True)
    parser.add_argument("--cert")
    parser.add_argument("--key")
    parser.add_argument("--client-ca")
    parser.add_argument("--user", action="append", default=[], metavar="NAME:PASSWORD")
    asyncio.run(main(parser.parse_args()))
