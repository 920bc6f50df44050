"""A probe's TCP connection: a small asyncio protocol with a read buffer, instead of streams.

``asyncio.open_connection`` builds a ``StreamReader``, a ``StreamReaderProtocol`` and a
``StreamWriter`` for every connection, and every read goes through their layers. A probe
opens a fresh connection each time, so that cost is paid per probe: on this project's
benchmark machine a protocol of its own took an HTTP exchange from ~6,300-8,000 to
~8,000-10,000 per CPU-second (``docs/benchmarks.md``). :class:`Stream` keeps the part of the
streams API the probes use, with the same exceptions, so the error translation in
:mod:`probes.errors` applies unchanged:

- ``read(n)`` returns up to ``n`` bytes, ``b""`` at end of stream;
- ``readexactly(n)`` raises ``asyncio.IncompleteReadError`` at a premature end;
- ``readuntil(sep)`` raises ``asyncio.LimitOverrunError`` past ``limit`` bytes without the
  separator, ``asyncio.IncompleteReadError`` at the end;
- a connection lost with an error (a reset) raises that error from the next read or drain.

Reading is paused while more than ``limit`` bytes wait unread, so a flooding peer cannot
grow the buffer. TLS is started in place (``start_tls``) and keeps the same object.

    stream = await Stream.connect("127.0.0.1", 80)
    stream.write(b"GET / HTTP/1.1\\r\\n...")
    data = await stream.read(65536)
    stream.close()
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Any

__all__ = ["Stream"]


class _Protocol(asyncio.Protocol):
    """Collects bytes and wakes the one reader or writer waiting on the connection."""

    __slots__ = (
        "_buffer",
        "_eof",
        "_error",
        "_limit",
        "_lost",
        "_paused",
        "_reading_paused",
        "_transport",
        "_waiter",
        "_write_waiter",
    )

    def __init__(self, limit: int) -> None:
        self._buffer = bytearray()
        self._eof = False
        self._error: BaseException | None = None
        self._limit = limit
        self._lost = False
        self._paused = False  # the transport's write buffer is full
        self._reading_paused = False
        self._transport: asyncio.Transport | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._write_waiter: asyncio.Future[None] | None = None

    # --- transport callbacks --------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]  # uvloop: not a subclass

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if len(self._buffer) > self._limit and not self._reading_paused:
            self._reading_paused = True
            assert self._transport is not None
            self._transport.pause_reading()
        self._wake()

    def eof_received(self) -> bool:
        self._eof = True
        self._wake()
        return False  # close our side too: a probe never writes after the peer is done

    def connection_lost(self, exc: Exception | None) -> None:
        self._eof = True
        self._lost = True
        if exc is not None:
            self._error = exc
        self._wake()
        waiter = self._write_waiter
        if waiter is not None and not waiter.done():
            if exc is None:
                waiter.set_result(None)
            else:
                waiter.set_exception(exc)

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        waiter = self._write_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


class Stream:
    """One TCP (optionally TLS) connection of a probe. See the module docstring."""

    __slots__ = ("_loop", "_protocol", "_transport")

    def __init__(self, transport: asyncio.Transport, protocol: _Protocol) -> None:
        self._loop = asyncio.get_running_loop()
        self._transport = transport
        self._protocol = protocol

    @classmethod
    async def connect(
        cls, ip: str, port: int, *, local_addr: tuple[str, int] | None = None, limit: int = 2**16
    ) -> Stream:
        """Connect to ``ip``:``port`` (an address, never a name: resolving is timed apart)."""
        loop = asyncio.get_running_loop()
        transport, protocol = await loop.create_connection(
            lambda: _Protocol(limit), ip, port, local_addr=local_addr
        )
        return cls(transport, protocol)

    # --- reading ------------------------------------------------------------------

    async def read(self, n: int) -> bytes:
        """Up to ``n`` bytes; ``b""`` once the peer has closed and everything was read."""
        p = self._protocol
        while not p._buffer:
            if p._error is not None:
                raise p._error
            if p._eof:
                return b""
            await self._wait()
        data = bytes(p._buffer[:n])
        del p._buffer[:n]
        self._maybe_resume()
        return data

    async def readexactly(self, n: int) -> bytes:
        p = self._protocol
        while len(p._buffer) < n:
            if p._error is not None:
                raise p._error
            if p._eof:
                partial = bytes(p._buffer)
                p._buffer.clear()
                raise asyncio.IncompleteReadError(partial, n)
            await self._wait()
        data = bytes(p._buffer[:n])
        del p._buffer[:n]
        self._maybe_resume()
        return data

    async def readuntil(self, separator: bytes = b"\n") -> bytes:
        """Bytes up to and including ``separator``; the separator must come within ``limit``."""
        p = self._protocol
        start = 0
        while True:
            found = p._buffer.find(separator, start)
            if found >= 0:
                end = found + len(separator)
                if end > p._limit:
                    raise asyncio.LimitOverrunError("separator found past the limit", found)
                data = bytes(p._buffer[:end])
                del p._buffer[:end]
                self._maybe_resume()
                return data
            if len(p._buffer) > p._limit:
                raise asyncio.LimitOverrunError("separator not found within the limit", p._limit)
            if p._error is not None:
                raise p._error
            if p._eof:
                partial = bytes(p._buffer)
                p._buffer.clear()
                raise asyncio.IncompleteReadError(partial, None)
            start = max(0, len(p._buffer) - len(separator) + 1)
            await self._wait()

    async def _wait(self) -> None:
        p = self._protocol
        if p._reading_paused:  # cannot happen with an empty buffer, but never wait on nothing
            self._maybe_resume()
        waiter = p._waiter = self._loop.create_future()
        try:
            await waiter
        finally:
            p._waiter = None

    def _maybe_resume(self) -> None:
        p = self._protocol
        if p._reading_paused and len(p._buffer) <= p._limit:
            p._reading_paused = False
            self._transport.resume_reading()

    # --- writing ------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        self._transport.write(data)

    async def drain(self) -> None:
        """Wait until the transport's write buffer is below its high-water mark."""
        p = self._protocol
        if p._error is not None:
            raise p._error
        if self._transport.is_closing():
            # as StreamWriter: let connection_lost run first, then report it
            await asyncio.sleep(0)
        if p._lost:
            raise ConnectionResetError("Connection lost")
        if not p._paused:
            return
        waiter = p._write_waiter = self._loop.create_future()
        try:
            await waiter
        finally:
            p._write_waiter = None

    # --- TLS and the rest ----------------------------------------------------------

    async def start_tls(self, context: ssl.SSLContext, *, server_hostname: str) -> None:
        """Upgrade this connection to TLS in place (the handshake runs here)."""
        transport = await self._loop.start_tls(
            self._transport, self._protocol, context, server_hostname=server_hostname
        )
        if transport is None:  # the connection went away during the handshake
            raise ConnectionResetError("connection lost during the TLS handshake")
        self._transport = transport

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._transport.get_extra_info(name, default)

    def close(self) -> None:
        """Close gracefully (after any buffered write; a TLS close_notify is bounded)."""
        self._transport.close()

    def abort(self) -> None:
        """Close at once, dropping unsent data (a flood we stopped reading, a failed step)."""
        self._transport.abort()
