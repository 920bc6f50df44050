"""Loopback targets for the benchmarks: a minimal HTTP/HTTPS server on asyncio protocols.

Run in its own process (pinned to the core the agent does not use), so the agent under test
pays only for its own side of each probe. It serves every request the same small answer and
closes the connection, so seismo and blackbox_exporter see identical work; ``/delay/<ms>``
answers after a server-side sleep of ``<ms>`` milliseconds (timing_truth.py).

    python -m bench.targets --http 4 --https 4 --cert c.pem --key k.pem

prints one JSON line ``{"http": [ports], "https": [ports]}`` once every port listens, then
serves until SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import ssl
import sys

BODY = b"seismo bench target\n"
_OK = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: "
    + str(len(BODY)).encode()
    + b"\r\nConnection: close\r\n\r\n"
    + BODY
)
#: the largest request head read; a client sending more is cut off
_MAX_HEAD = 16 * 1024


class _HTTP(asyncio.Protocol):
    """One connection: read the request head, answer (maybe after a delay), close."""

    __slots__ = ("_buf", "_loop", "_transport")

    def __init__(self) -> None:
        self._buf = b""
        self._transport: asyncio.Transport | None = None
        self._loop = asyncio.get_running_loop()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport
        self._transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self._buf += data
        end = self._buf.find(b"\r\n\r\n")
        if end < 0:
            if len(self._buf) > _MAX_HEAD and self._transport is not None:
                self._transport.close()
            return
        line = self._buf[: self._buf.find(b"\r\n")]
        parts = line.split(b" ")
        path = parts[1] if len(parts) > 1 else b"/"
        self._buf = b""
        if path.startswith(b"/delay/"):
            try:
                ms = int(path[7:].split(b"?")[0])
            except ValueError:
                ms = 0
            self._loop.call_later(ms / 1000, self._answer)
        else:
            self._answer()

    def _answer(self) -> None:
        t = self._transport
        if t is not None and not t.is_closing():
            t.write(_OK)
            t.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None


async def serve(n_http: int, n_https: int, cert: str | None, key: str | None) -> None:
    loop = asyncio.get_running_loop()
    ctx = None
    if n_https:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert or "", key)
    servers = []
    ports: dict[str, list[int]] = {"http": [], "https": []}
    for kind, n, sslctx in (("http", n_http, None), ("https", n_https, ctx)):
        for _ in range(n):
            srv = await loop.create_server(_HTTP, "127.0.0.1", 0, ssl=sslctx, backlog=4096)
            servers.append(srv)
            ports[kind].append(srv.sockets[0].getsockname()[1])
    print(json.dumps(ports), flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    for srv in servers:
        srv.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--http", type=int, default=1, help="plain HTTP ports to open")
    p.add_argument("--https", type=int, default=0, help="HTTPS ports to open")
    p.add_argument("--cert", help="server certificate chain (PEM)")
    p.add_argument("--key", help="server key (PEM)")
    args = p.parse_args(argv)
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    asyncio.run(serve(args.http, args.https, args.cert, args.key))
    return 0


if __name__ == "__main__":
    sys.exit(main())
