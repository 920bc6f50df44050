"""The agent's listening socket: a lean HTTP/1.1 front for ``GET /probe``, aiohttp behind it.

Prometheus calls ``/probe`` for every probe. aiohttp's request handling costs about 78 µs
of CPU per request on the benchmark machine, a bare ``asyncio.Protocol`` about 31 µs, and a
whole http probe has about 250 µs. The front is an ``asyncio.Protocol`` that answers only the
narrow, well-understood shape of that hot path itself:

- ``GET /probe?<query> HTTP/1.1`` (or ``HTTP/1.0``), the whole head within ``HEAD_LIMIT``
  bytes, in plain visible ASCII: a strict request line, token header names, no obs-fold, no
  bare CR or LF, no header given twice, ``Host`` present on HTTP/1.1;
- no body (no ``Content-Length`` other than ``0``, no ``Transfer-Encoding``), no ``Expect``,
  no ``Upgrade``, ``Connection`` naming only ``close`` or ``keep-alive``;
- a query that ``agent.server.probe_request`` accepts (known module, a target, a valid or
  absent ``X-Prometheus-Scrape-Timeout-Seconds``), and not ``debug=true``.

Anything else is **handed over** to aiohttp, which stays the reference implementation of
every endpoint, ``/probe`` included: the transport and the raw, unconsumed bytes from the
start of that request go to a fresh ``RequestHandler`` of the runner's ``web.Server``, and
from then on aiohttp owns the connection (``runner.cleanup()`` closes it). A malformed
request, the 400s of ``/probe``, ``debug=true``, ``/metrics`` and the API are all aiohttp's.

The answer is aiohttp's, byte for byte in its framing: ``HTTP/1.x 200 OK``, the metrics
content type, ``Content-Length``, ``Date`` (formatted once per second), ``Server``, and
``Connection`` as aiohttp sets it. Connections are kept alive unless the client asked to
close or spoke HTTP/1.0 without keep-alive, and closed after ``IDLE_TIMEOUT`` seconds idle.
One request at a time per connection: pipelined bytes wait in the buffer (reading pauses
past ``HEAD_LIMIT``) until the response is written. A client that goes away mid-probe
cancels its probe, as blackbox_exporter cancels a probe whose scrape was cancelled.

    front = Front(agent, runner.server)
    await front.start("127.0.0.1", 9115)
    ...
    await front.close()       # stop listening, cancel and await the probes in flight
    await runner.cleanup()    # then aiohttp closes the connections handed to it
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import socket
import time
from dataclasses import dataclass
from email.utils import formatdate
from typing import TYPE_CHECKING, cast

from aiohttp import web
from aiohttp.http import SERVER_SOFTWARE

from agent.metrics import CONTENT_TYPE
from agent.server import SCRAPE_TIMEOUT_HEADER, ProbeQueryError, ProbeRequest, probe_request
from probes import run_probe

if TYPE_CHECKING:
    from agent.daemon import Agent

__all__ = ["HEAD_LIMIT", "IDLE_TIMEOUT", "Front", "ProbeHead", "parse_head"]

log = logging.getLogger(__name__)

#: the longest request head (request line, headers, final CRLF CRLF) the front reads itself;
#: below aiohttp's own line and field limits (8190), so aiohttp never refuses what it serves
HEAD_LIMIT = 8192
#: the most header fields the front reads itself (aiohttp allows 128)
MAX_FIELDS = 64
#: how long a kept-alive connection may sit idle (aiohttp's long-time default; 3.14 keeps
#: the connections it owns for 3630 s)
IDLE_TIMEOUT = 75.0

_PREFIX = b"GET /probe?"
_END_OF_HEAD = b"\r\n\r\n"
# RFC 3986 query characters only; anything else (a fragment, raw spaces, quotes, obs-text)
# is aiohttp's to judge
_REQUEST_LINE = re.compile(rb"GET /probe\?([A-Za-z0-9\-._~%!$&'()*+,;=:@/?]*) HTTP/1\.([01])")
_TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
# visible ASCII with inner spaces and tabs; leading and trailing whitespace is not the value's
_VALUE = rb"(?:[\x21-\x7e](?:[\x21-\x7e \t]*[\x21-\x7e])?)?"
_FIELD = rb"(" + _TOKEN + rb"):[ \t]*(" + _VALUE + rb")[ \t]*\r\n"
_FIELDS = re.compile(rb"(?:" + _FIELD + rb")*")
_ONE_FIELD = re.compile(_FIELD)
# fields that mean a body, a protocol switch, an interim response or a transfer coding:
# aiohttp's to handle
_REFUSED_FIELDS = frozenset(
    (b"transfer-encoding", b"expect", b"upgrade", b"te", b"sec-websocket-key1")
)
_SCRAPE_TIMEOUT = SCRAPE_TIMEOUT_HEADER.lower().encode()

_CONTENT_TYPE = CONTENT_TYPE.encode()
_SERVER = SERVER_SOFTWARE.encode()
# aiohttp's Connection header: "keep-alive" only to HTTP/1.0, "close" only to HTTP/1.1
_CONNECTION = {
    (0, True): b"Connection: keep-alive\r\n",
    (0, False): b"",
    (1, True): b"",
    (1, False): b"Connection: close\r\n",
}
_ERROR_STATUS = b"500 Internal Server Error"
_ERROR_TYPE = b"text/plain; charset=utf-8"
_ERROR_BODY = b"500 Internal Server Error\n\nServer got itself in trouble"


@dataclass(frozen=True, slots=True)
class ProbeHead:
    """The head of a ``GET /probe`` request the front serves itself."""

    query: str
    minor_version: int
    keep_alive: bool
    scrape_timeout: str | None


def parse_head(head: bytes) -> ProbeHead | None:
    """Read a request head (without its final CRLF CRLF), or None if it is aiohttp's.

    parse_head(b"GET /probe?target=x HTTP/1.1\\r\\nHost: a") -> ProbeHead(...)
    """
    if head.count(b"\r\n") > MAX_FIELDS:
        return None
    line_end = head.find(b"\r\n")
    if line_end < 0:
        line, fields = head, b""
    else:
        line, fields = head[:line_end], head[line_end + 2 :] + b"\r\n"
    request = _REQUEST_LINE.fullmatch(line)
    if request is None or _FIELDS.fullmatch(fields) is None:
        return None
    pairs = _ONE_FIELD.findall(fields)
    minor = 1 if request[2] == b"1" else 0
    seen: set[bytes] = set()
    host = close = keep_alive = False
    scrape_timeout: str | None = None
    for raw_name, value in pairs:
        name = raw_name.lower()
        if name in seen or name in _REFUSED_FIELDS:
            return None
        seen.add(name)
        if name == b"host":
            host = True
        elif name == _SCRAPE_TIMEOUT:
            scrape_timeout = value.decode("ascii")
        elif name == b"content-length":
            if value != b"0":
                return None
        elif name == b"connection":
            for token in value.lower().split(b","):
                token = token.strip(b" \t")
                if token == b"close":
                    close = True
                elif token == b"keep-alive":
                    keep_alive = True
                else:
                    return None
    if (minor == 1 and not host) or (close and keep_alive):
        return None
    return ProbeHead(
        query=request[1].decode("ascii"),
        minor_version=minor,
        keep_alive=not close if minor == 1 else keep_alive,
        scrape_timeout=scrape_timeout,
    )


class Front:
    """The listening socket: ``/probe`` served here, everything else by ``fallback``.

    Counters: ``served``, the ``/probe`` requests the front answered itself;
    ``handed_over``, the connections it gave to aiohttp; ``cancelled``, the probes it
    cancelled because their client went away (or the agent stopped).
    """

    def __init__(
        self,
        agent: Agent,
        fallback: web.Server,
        *,
        head_limit: int = HEAD_LIMIT,
        idle_timeout: float = IDLE_TIMEOUT,
    ) -> None:
        self.agent = agent
        self.fallback = fallback
        self.head_limit = head_limit
        self.idle_timeout = idle_timeout
        self.served = 0
        self.handed_over = 0
        self.cancelled = 0
        self._server: asyncio.Server | None = None
        self._connections: set[_Connection] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._closing = False
        self._date_second = -1
        self._date = b""

    async def start(self, host: str | None, port: int) -> None:
        """Listen on ``host:port`` (port 0: any free port, then see ``port``)."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _Connection(self, loop), host, port)

    @property
    def port(self) -> int:
        """The port the front listens on."""
        sockets = self._server.sockets if self._server is not None else ()
        return int(sockets[0].getsockname()[1]) if sockets else 0

    @property
    def connections(self) -> int:
        """Open connections the front still owns (not handed over)."""
        return len(self._connections)

    @property
    def probes_in_flight(self) -> int:
        return len(self._tasks)

    async def close(self) -> None:
        """Stop listening, close the front's connections, cancel and await their probes.

        Connections handed over belong to aiohttp: ``runner.cleanup()`` closes them.
        """
        self._closing = True
        if self._server is not None:
            self._server.close()
        for connection in list(self._connections):
            connection.close()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def date(self) -> bytes:
        """The ``Date`` header's value, formatted once per second."""
        now = int(time.time())
        if now != self._date_second:
            self._date_second = now
            self._date = formatdate(now, usegmt=True).encode()
        return self._date

    def _own(self, task: asyncio.Task[None]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


class _Connection(asyncio.Protocol):
    """One client connection, until it closes or is handed over."""

    __slots__ = (
        "_buffer",
        "_front",
        "_idle_handle",
        "_idle_since",
        "_reading_paused",
        "_transport",
        "_writing_paused",
        "loop",
        "task",
    )

    def __init__(self, front: Front, loop: asyncio.AbstractEventLoop) -> None:
        self._front = front
        self.loop = loop
        self._transport: asyncio.Transport | None = None
        self._buffer = b""
        self.task: asyncio.Task[None] | None = None
        self._reading_paused = False
        self._writing_paused = False
        self._idle_since = 0.0
        self._idle_handle: asyncio.TimerHandle | None = None

    # --- asyncio.Protocol ------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport = cast(asyncio.Transport, transport)  # uvloop's: no subclass
        front = self._front
        if front._closing:
            transport.close()
            return
        front._connections.add(self)
        sock = transport.get_extra_info("socket")
        if sock is not None:  # as aiohttp's handler does (tcp_keepalive=True)
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        self._idle_since = self.loop.time()
        self._idle_handle = self.loop.call_at(
            self._idle_since + front.idle_timeout, self._idle_check
        )

    def data_received(self, data: bytes) -> None:
        self._buffer = self._buffer + data if self._buffer else data
        if self.task is None and not self._writing_paused:
            self._next()
        elif len(self._buffer) > self._front.head_limit and not self._reading_paused:
            # a pipelining client waits for this answer before more of its bytes are read
            self._reading_paused = True
            assert self._transport is not None
            self._transport.pause_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self._front._connections.discard(self)
        self._transport = None
        if self._idle_handle is not None:
            self._idle_handle.cancel()
            self._idle_handle = None
        if self.task is not None:
            self.task.cancel()  # the client gave up on this probe

    def pause_writing(self) -> None:
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False
        if self.task is None and self._transport is not None:
            self._next()

    # --- serving -----------------------------------------------------------------------

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def _next(self) -> None:
        """Serve, hand over, or wait for the rest of the request at the buffer's start."""
        buffer = self._buffer
        if not buffer or self._transport is None:
            return
        if self._reading_paused:
            self._reading_paused = False
            assert self._transport is not None
            self._transport.resume_reading()
        if buffer[: len(_PREFIX)] != _PREFIX[: len(buffer)]:
            self._hand_over()
            return
        front = self._front
        end = buffer.find(_END_OF_HEAD, 0, front.head_limit)
        if end < 0:
            if len(buffer) >= front.head_limit:
                self._hand_over()
            return  # the rest of the head is on its way
        head = parse_head(buffer[:end])
        if head is None:
            self._hand_over()
            return
        try:
            call = probe_request(head.query, head.scrape_timeout, front.agent.config.modules)
        except ProbeQueryError:
            self._hand_over()  # aiohttp answers the 400, with the same text as ever
            return
        if call.debug:
            self._hand_over()
            return
        self._buffer = buffer[end + len(_END_OF_HEAD) :]
        self.task = self.loop.create_task(self._answer(call, head))
        front._own(self.task)

    async def _answer(self, call: ProbeRequest, head: ProbeHead) -> None:
        """Run the probe, write its page, then go on with the next request."""
        front = self._front
        try:
            result = await run_probe(
                call.module, call.target, call.timeout, connector=front.agent.connector
            )
            body = front.agent.metrics.render_probe(result).encode()
        except asyncio.CancelledError:
            front.cancelled += 1
            raise
        except Exception:
            # a bug, not a probe failure: aiohttp's 500, and the connection closes
            log.exception("/probe failed: module=%s target=%s", call.module_name, call.target)
            self._respond(head.minor_version, False, _ERROR_STATUS, _ERROR_TYPE, _ERROR_BODY)
            self.close()
            return
        finally:
            self.task = None
        front.served += 1
        keep_alive = head.keep_alive
        self._respond(head.minor_version, keep_alive, b"200 OK", _CONTENT_TYPE, body)
        if not keep_alive:
            self.close()
            return
        self._idle_since = self.loop.time()
        if not self._writing_paused:
            self._next()

    def _respond(
        self, minor_version: int, keep_alive: bool, status: bytes, content_type: bytes, body: bytes
    ) -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        transport.write(
            b"HTTP/1.%d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\nDate: %s\r\n"
            b"Server: %s\r\n%s\r\n%s"
            % (
                minor_version,
                status,
                content_type,
                len(body),
                self._front.date(),
                _SERVER,
                _CONNECTION[minor_version, keep_alive],
                body,
            )
        )

    def _hand_over(self) -> None:
        """Give the transport and the unconsumed bytes to a fresh aiohttp handler."""
        transport = self._transport
        assert transport is not None
        front = self._front
        front._connections.discard(self)
        if self._idle_handle is not None:
            self._idle_handle.cancel()
            self._idle_handle = None
        pending, self._buffer = self._buffer, b""
        self._transport = None
        handler = front.fallback()
        transport.set_protocol(handler)
        handler.connection_made(transport)
        front.handed_over += 1
        handler.data_received(pending)

    def _idle_check(self) -> None:
        """Close a connection idle for ``idle_timeout``; a request in flight is not idle."""
        self._idle_handle = None
        if self._transport is None:
            return
        deadline = self._idle_since + self._front.idle_timeout
        if self.task is not None or self.loop.time() < deadline:
            self._idle_handle = self.loop.call_at(
                max(deadline, self.loop.time() + 1.0), self._idle_check
            )
            return
        self._transport.close()
