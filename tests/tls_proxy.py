"""A TLS-terminating TCP proxy: ``python -m tests.tls_proxy PORT UPSTREAM_PORT CERT KEY``.

The test broker cannot serve TLS itself (docs/security.md, "What the test
broker supports"), so the TLS tests put this in front of it: clients make a
real TLS handshake with it (certificate chain, hostname check) and it pipes
the decrypted bytes to the broker on ``127.0.0.1:UPSTREAM_PORT``. The broker
advertises the proxy's address, so every connection a client opens after the
bootstrap goes through TLS too. Optional ``CLIENT_CA``: require a client
certificate signed by it (mutual TLS).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import sys


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


async def main(port: int, upstream: int, cert: str, key: str, client_ca: str | None) -> None:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    if client_ca:
        context.load_verify_locations(client_ca)
        context.verify_mode = ssl.CERT_REQUIRED

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", upstream)
        except OSError:
            writer.close()
            return
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))

    server = await asyncio.start_server(serve, "127.0.0.1", port, ssl=context)
    print(f"tls proxy on 127.0.0.1:{port} -> 127.0.0.1:{upstream}", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    args = sys.argv[1:]
    asyncio.run(main(int(args[0]), int(args[1]), args[2], args[3], (args[4:] or [None])[0]))
