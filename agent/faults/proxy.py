"""The fault helper process: userspace network faults the kernel has no module for.

The engine starts it with a :class:`~agent.faults.steps.Spawn` step inside the target's network
namespace, and ends it with SIGTERM on revert (reconcile finds orphans by the marker argument)::

    python -m agent.faults.proxy delay --tap seis1a2b3c4d --interface eth0 \\
        --delay-ms 200 --jitter-ms 20 seismo-fault=network-latency-1a2b3c4d
    python -m agent.faults.proxy dns --port 15353 --upstream 10.96.0.10:53 \\
        --action nxdomain --name api.example.com. --name '*.corp.example.' seismo-fault=...
    python -m agent.faults.proxy http --port 16080 --status 503 --percent 50 seismo-fault=...

It prints ``ready`` on stdout once it works and never writes to stdout again; it logs to
stderr; SIGTERM or SIGINT end it cleanly. After setting up it switches its group to
:data:`HELPER_GID`, so the redirect rules of a fault can let the helper's own upstream
traffic through (``meta skgid``) instead of sending it back to itself.

Modes
    ``delay``  A packet delay line (netem's ``delay`` in userspace). It owns a TAP device (gone
               when the process ends); the fault's nftables ``netdev`` egress rule forwards the
               matching frames leaving ``--interface`` into it. Each frame is held
               ``delay ± jitter`` ms (uniform), in order, then sent out of ``--interface`` with
               ``SO_MARK`` :data:`DELAY_MARK`, which the rule lets pass. At most ``--limit``
               frames are held; more are dropped (netem's ``limit``). Frames the TAP device
               itself emits (its own IPv6 chatter) are never sent on. On SIGTERM every held
               frame is sent at once before exit.
    ``dns``    :class:`agent.dnsserver.DNSServer` in FORWARD mode on ``127.0.0.1:--port``
               (``::1`` for an IPv6 upstream), with the fault's names answered NXDOMAIN,
               SERVFAIL, never (timeout), or with a wrong address (``--answer``; TTL 0, so no
               cache keeps it after the fault).
    ``http``   An HTTP/1.1 fault proxy on ``--port``. For each request it reads the head (at
               most :data:`MAX_HEAD` bytes), and with probability ``--percent`` delays it
               ``--delay-ms`` and/or answers ``--status`` itself (``Connection: close``).
               Other requests go byte-for-byte to the original destination (``SO_ORIGINAL_DST``)
               and their responses come back byte-for-byte (h11 only finds where a response
               ends, so kept-alive connections are faulted per request). A chunked request
               body, an upgrade or ``CONNECT`` turns the rest of that connection into a plain
               relay.

Resources are bounded: every network await has a timeout, data moves in chunks of at most
:data:`CHUNK` bytes with back-pressure (``drain``), and connections are capped
(:data:`MAX_CONNECTIONS`), so a slow peer cannot grow the helper's memory.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import hashlib
import http
import ipaddress
import logging
import os
import random
import signal
import socket
import struct
import sys
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import h11

from agent.dnsserver import Action, DNSServer, Zone
from agent.faults.steps import MARKER_PREFIX

__all__ = [
    "CHUNK",
    "DELAY_MARK",
    "HELPER_GID",
    "MAX_CONNECTIONS",
    "MAX_HEAD",
    "build_parser",
    "helper_argv",
    "listen_port",
    "main",
    "tap_name",
]

log = logging.getLogger("seismo.faults.proxy")

_FORMAT = "%(levelname)s seismo fault helper: %(message)s"
#: a mode's start: set up, and return how to stop
Closer = Callable[[], Awaitable[None]]
Starter = Callable[[argparse.Namespace], Awaitable[Closer]]

#: the group the helper runs as once set up; fault rules exempt it with ``meta skgid``
HELPER_GID = 0x5E15
#: the packet mark of frames the delay line sends on; the fault's rule lets them pass
DELAY_MARK = 0x5E15
CHUNK = 64 * 1024
MAX_HEAD = 64 * 1024
MAX_CONNECTIONS = 512
CONNECT_TIMEOUT = 10.0
IDLE_TIMEOUT = 60.0
#: frames read from the TAP device per wake-up, so a flood cannot starve the timers
_READS_PER_WAKE = 256
_MAX_FRAME = 65536

# linux/if_tun.h, linux/sockios.h, linux/netfilter_ipv4.h
_TUNSETIFF = 0x400454CA
_IFF_TAP = 0x0002
_IFF_NO_PI = 0x1000
_SIOCGIFFLAGS = 0x8913
_SIOCSIFFLAGS = 0x8914
_IFF_UP = 0x1
_IFF_NOARP = 0x80
_SO_ORIGINAL_DST = 80


# --- what the fault kinds use --------------------------------------------------------------


def helper_argv(mode: str, fault_id: str, *options: str) -> tuple[str, ...]:
    """The argv of a helper for ``fault_id``, carrying its marker as the last argument."""
    return (sys.executable, "-m", "agent.faults.proxy", mode, *options, MARKER_PREFIX + fault_id)


def listen_port(fault_id: str) -> int:
    """The helper's port inside the target, fixed by the fault id so a plan can name it.

    15000-19999: below Linux's ephemeral range, so no outgoing connection holds it.
    """
    return 15000 + int(hashlib.sha256(fault_id.encode()).hexdigest()[:8], 16) % 5000


def tap_name(fault_id: str) -> str:
    """The TAP device of a delay line: ``s5e`` and 12 hex digits (15 characters at most)."""
    return "s5e" + hashlib.sha256(fault_id.encode()).hexdigest()[:12]


# --- the process ---------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m agent.faults.proxy", description=__doc__)
    modes = parser.add_subparsers(dest="mode", required=True)

    delay = modes.add_parser("delay", help="hold packets leaving an interface")
    delay.add_argument("--tap", required=True, help="name of the TAP device to create")
    delay.add_argument("--interface", required=True, help="where held frames are sent on")
    delay.add_argument("--delay-ms", type=float, required=True)
    delay.add_argument("--jitter-ms", type=float, default=0.0)
    delay.add_argument("--limit", type=int, default=1000, help="frames held at most")

    dnsp = modes.add_parser("dns", help="a forwarding DNS server with faulted names")
    dnsp.add_argument("--port", type=int, required=True)
    dnsp.add_argument("--upstream", required=True, help="IP:PORT of the real resolver")
    dnsp.add_argument("--action", choices=("nxdomain", "servfail", "timeout", "answer"))
    dnsp.add_argument("--name", action="append", required=True, dest="names")
    dnsp.add_argument("--answer", help="the wrong address, for --action answer")

    httpp = modes.add_parser("http", help="an HTTP fault proxy")
    httpp.add_argument("--port", type=int, required=True)
    httpp.add_argument("--status", type=int, default=0, help="abort with this status (0: no)")
    httpp.add_argument("--delay-ms", type=float, default=0.0)
    httpp.add_argument("--percent", type=float, default=100.0)

    for sub in (delay, dnsp, httpp):
        sub.add_argument("marker", help="seismo-fault=<id>, so reconcile can find this process")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: ``python -m agent.faults.proxy MODE ... seismo-fault=<id>``."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format=_FORMAT)
    starters: dict[str, Starter] = {
        "delay": _start_delay,
        "dns": _start_dns,
        "http": _start_http,
    }
    try:
        asyncio.run(_serve(starters[args.mode], args))
    except (OSError, ValueError) as exc:
        log.error("cannot start: %s", exc)
        return 1
    return 0


async def _serve(start: Starter, args: argparse.Namespace) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    close = await start(args)
    try:
        _tag_group()
        print("ready", flush=True)
        _quiet_stderr()
        await stop.wait()
    finally:
        async with asyncio.timeout(5):
            await close()
    log.info("stopped")


class _DroppingHandler(logging.StreamHandler):  # type: ignore[type-arg]
    def handleError(self, record: logging.LogRecord) -> None:
        pass  # stderr is full (nobody reads it): the line is lost, the helper goes on


def _quiet_stderr() -> None:
    # after "ready" nobody may read stderr: a full pipe must never block the helper (it would
    # stall the traffic it carries), so writes become non-blocking and only warnings remain
    os.set_blocking(sys.stderr.fileno(), False)
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler = _DroppingHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(_FORMAT))
    root.addHandler(handler)
    root.setLevel(logging.WARNING)


def _tag_group() -> None:
    # sockets opened from here on carry HELPER_GID, which the fault's redirect rules exempt.
    # The uid stays: this is a tag, not a privilege drop (the interpreter may live in /root)
    os.setgroups([])
    os.setgid(HELPER_GID)


# --- delay: a packet delay line --------------------------------------------------------------


class DelayLine:
    """Frames in from a TAP fd, out on a packet socket ``delay ± jitter`` later, in order."""

    def __init__(
        self,
        tap: int,
        out: socket.socket,
        delay: float,
        jitter: float,
        limit: int,
        rng: random.Random,
    ) -> None:
        self._tap = tap
        self._out = out
        self._delay = delay
        self._jitter = jitter
        self._limit = limit
        self._rng = rng
        self._held: deque[tuple[float, bytes]] = deque()
        self._last = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._loop = asyncio.get_running_loop()
        # frames whose source MAC is not the interface's are the TAP's own, never sent on
        self._mac = bytes(out.getsockname()[4])[:6]
        self.dropped = 0

    def start(self) -> None:
        self._loop.add_reader(self._tap, self._readable)

    def close(self) -> None:
        self._loop.remove_reader(self._tap)
        if self._timer is not None:
            self._timer.cancel()
        while self._held:  # on revert the held frames go at once: none is lost
            self._send(self._held.popleft()[1])

    def _readable(self) -> None:
        now = self._loop.time()
        for _ in range(_READS_PER_WAKE):
            try:
                frame = os.read(self._tap, _MAX_FRAME)
            except BlockingIOError:
                break
            if frame[6:12] != self._mac:
                continue
            if len(self._held) >= self._limit:
                self.dropped += 1
                if self.dropped % 1000 == 1:
                    log.warning(
                        "delay line full (%d frames): %d dropped", self._limit, self.dropped
                    )
                continue
            hold = max(0.0, self._delay + self._rng.uniform(-self._jitter, self._jitter))
            # never before the frame ahead of it: jitter must not reorder a TCP stream
            self._last = max(self._last, now + hold)
            self._held.append((self._last, frame))
        self._arm()

    def _arm(self) -> None:
        if self._timer is None and self._held:
            self._timer = self._loop.call_at(self._held[0][0], self._due)

    def _due(self) -> None:
        self._timer = None
        now = self._loop.time()
        while self._held and self._held[0][0] <= now:
            self._send(self._held.popleft()[1])
        self._arm()

    def _send(self, frame: bytes) -> None:
        try:
            self._out.send(frame)
        except OSError as exc:  # a full device queue: the frame is lost, as on a real link
            self.dropped += 1
            log.debug("send failed: %s", exc)


def _open_tap(name: str) -> int:
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, _TUNSETIFF, struct.pack("16sH", name.encode(), _IFF_TAP | _IFF_NO_PI))
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as ctl:
            req = struct.pack("16sH", name.encode(), 0)
            flags = struct.unpack("16sH", fcntl.ioctl(ctl, _SIOCGIFFLAGS, req))[1]
            up = struct.pack("16sH", name.encode(), flags | _IFF_UP | _IFF_NOARP)
            fcntl.ioctl(ctl, _SIOCSIFFLAGS, up)
    except OSError:
        os.close(fd)
        raise
    # best effort: without IPv6 the TAP device sends no solicitations of its own
    with (
        contextlib.suppress(OSError),
        open(f"/proc/sys/net/ipv6/conf/{name}/disable_ipv6", "w") as knob,
    ):
        knob.write("1")
    return fd


def _open_sender(interface: str) -> socket.socket:
    out = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)  # send only: protocol 0
    out.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, DELAY_MARK)
    out.bind((interface, 0))
    out.setblocking(False)
    return out


async def _start_delay(args: argparse.Namespace) -> Closer:
    if not 0 <= args.jitter_ms <= args.delay_ms <= 60_000 or args.limit < 1:
        raise ValueError("need 0 <= jitter-ms <= delay-ms <= 60000 and limit >= 1")
    out = _open_sender(args.interface)
    tap = _open_tap(args.tap)
    line = DelayLine(
        tap, out, args.delay_ms / 1000, args.jitter_ms / 1000, args.limit, random.Random()
    )
    line.start()
    log.info(
        "holding frames from %s for %gms ± %gms, out on %s",
        args.tap,
        args.delay_ms,
        args.jitter_ms,
        args.interface,
    )

    async def close() -> None:
        line.close()
        out.close()
        os.close(tap)  # the TAP device goes with its last fd

    return close


# --- dns: a forwarding server with faulted names -------------------------------------------

_DNS_ACTIONS = {
    "nxdomain": Action.NXDOMAIN,
    "servfail": Action.SERVFAIL,
    "timeout": Action.DROP,
    # ANSWER is never answered from the (empty) zone: FaultDNSServer.reply takes it first
    "answer": Action.ANSWER,
}
#: the server's own zone; nothing real lives under .invalid (RFC 6761)
_ZONE = "fault.seismo.invalid."


class FaultDNSServer(DNSServer):
    """DNSServer that also answers names set to ``Action.ANSWER`` with a wrong address."""

    def __init__(self, *, answer: str | None, **kwargs: object) -> None:
        super().__init__(Zone(_ZONE), **kwargs)  # type: ignore[arg-type]
        self._answer = ipaddress.ip_address(answer) if answer else None

    async def reply(self, wire: bytes, transport: str) -> bytes | None:
        if self._answer is not None:
            with contextlib.suppress(dns.exception.DNSException):
                query = dns.message.from_wire(wire)
                if (
                    not query.flags & dns.flags.QR
                    and len(query.question) == 1
                    and self.action_for(query.question[0].name) is Action.ANSWER
                ):
                    return self._wrong(query).to_wire()
        return await super().reply(wire, transport)

    def _wrong(self, query: dns.message.Message) -> dns.message.Message:
        assert self._answer is not None
        response = dns.message.make_response(query)
        question = query.question[0]
        rdtype = dns.rdatatype.A if self._answer.version == 4 else dns.rdatatype.AAAA
        if question.rdtype == rdtype:  # any other type: NODATA, so no real address leaks
            response.answer.append(
                dns.rrset.from_text(question.name, 0, dns.rdataclass.IN, rdtype, str(self._answer))
            )
        return response


def _host_port(text: str, default_port: int) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or ("]" not in text and text.count(":") > 1):
        host, port = text, str(default_port)
    ip = ipaddress.ip_address(host.strip("[]"))
    return str(ip), int(port)


async def _start_dns(args: argparse.Namespace) -> Closer:
    upstream = _host_port(args.upstream, 53)
    if args.action is None or (args.action == "answer") != (args.answer is not None):
        raise ValueError("--action is required, and --answer goes with --action answer only")
    server = FaultDNSServer(
        answer=args.answer,
        behaviours={name: _DNS_ACTIONS[args.action] for name in args.names},
        default=Action.FORWARD,
        upstream=upstream,
    )
    host = "::1" if ipaddress.ip_address(upstream[0]).version == 6 else "127.0.0.1"
    await server.start(host, args.port)
    log.info("dns on %s:%d: %s for %s, the rest to %s", host, args.port, args.action,
             ", ".join(args.names), args.upstream)  # fmt: skip
    return server.close


# --- http: request-level faults --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HttpFault:
    status: int
    delay: float
    percent: float


@dataclass(frozen=True, slots=True)
class RequestHead:
    raw: bytes
    method: str
    content_length: int
    #: the body or protocol cannot be framed here (chunked, upgrade, CONNECT): relay the rest
    opaque: bool
    keep_alive: bool


class BadRequest(Exception):
    """A request head the proxy cannot read; the connection is closed."""


def parse_head(raw: bytes) -> RequestHead:
    """The parts of a request head that framing needs (``raw`` ends with CRLF CRLF)."""
    lines = raw.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise BadRequest(f"not an HTTP/1.x request line: {lines[0][:80]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep:
            raise BadRequest(f"bad header line {line[:80]!r}")
        key = name.strip().lower()
        headers[key] = f"{headers[key]},{value.strip()}" if key in headers else value.strip()
    try:
        length = int(headers.get("content-length", "0").split(",")[0])
    except ValueError:
        raise BadRequest("bad content-length") from None
    if length < 0:
        raise BadRequest("bad content-length")
    connection = headers.get("connection", "").lower()
    method = parts[0]
    return RequestHead(
        raw=raw,
        method=method,
        content_length=length,
        opaque="transfer-encoding" in headers or "upgrade" in headers or method == "CONNECT",
        keep_alive=(
            "keep-alive" in connection if parts[2] == "HTTP/1.0" else "close" not in connection
        ),
    )


def abort_response(status: int, marker: str) -> bytes:
    """The response an aborted request gets."""
    try:
        phrase = http.HTTPStatus(status).phrase
    except ValueError:
        phrase = "Injected Fault"
    body = f"seismo fault injection: {status}\n".encode()
    head = (
        f"HTTP/1.1 {status} {phrase}\r\ncontent-type: text/plain\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\nx-seismo-fault: {marker}\r\n\r\n"
    )
    return head.encode() + body


def original_dst(sock: socket.socket) -> tuple[str, int]:
    """Where the client meant to connect before the redirect (conntrack's SO_ORIGINAL_DST)."""
    if sock.family == socket.AF_INET6:
        raw = sock.getsockopt(socket.IPPROTO_IPV6, _SO_ORIGINAL_DST, 28)
        port, addr = struct.unpack("!2xH4x16s4x", raw)
        return socket.inet_ntop(socket.AF_INET6, addr), port
    raw = sock.getsockopt(socket.SOL_IP, _SO_ORIGINAL_DST, 16)
    port, addr4 = struct.unpack("!2xH4s8x", raw)
    return socket.inet_ntoa(addr4), port


class HttpProxy:
    def __init__(self, fault: HttpFault, marker: str, rng: random.Random) -> None:
        self._fault = fault
        self._marker = marker
        self._rng = rng
        self._slots = asyncio.Semaphore(MAX_CONNECTIONS)
        self.faulted = 0
        self.passed = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One client connection, until it or the upstream closes."""
        if self._slots.locked():
            writer.close()  # over the cap: refuse rather than queue
            return
        async with self._slots:
            upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
            try:
                dst = original_dst(writer.get_extra_info("socket"))
                upstream = await self._requests(reader, writer, dst)
            except (OSError, TimeoutError, BadRequest, asyncio.IncompleteReadError) as exc:
                log.debug("connection ended: %s", exc)
            finally:
                for w in (writer, upstream[1] if upstream else None):
                    if w is not None:
                        w.close()
                        with contextlib.suppress(OSError, TimeoutError):
                            async with asyncio.timeout(1):
                                await w.wait_closed()

    async def _requests(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, dst: tuple[str, int]
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        upstream = None
        while True:
            head = await _read_head(reader)
            if head is None:
                return upstream
            if self._rng.random() * 100 < self._fault.percent:
                self.faulted += 1
                if self._fault.delay:
                    await asyncio.sleep(self._fault.delay)
                if self._fault.status:
                    writer.write(abort_response(self._fault.status, self._marker))
                    await _drain(writer)
                    return upstream
            else:
                self.passed += 1
            if upstream is None:
                async with asyncio.timeout(CONNECT_TIMEOUT):
                    upstream = await asyncio.open_connection(*dst, limit=CHUNK)
            up_reader, up_writer = upstream
            up_writer.write(head.raw)
            if head.opaque:
                await _relay_both(reader, writer, up_reader, up_writer)
                return upstream
            await _copy_exactly(reader, up_writer, head.content_length)
            await _drain(up_writer)
            if not await _relay_response(up_reader, writer, head.method) or not head.keep_alive:
                return upstream


async def _read_head(reader: asyncio.StreamReader) -> RequestHead | None:
    try:
        async with asyncio.timeout(IDLE_TIMEOUT):
            raw = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        if exc.partial.strip():
            raise BadRequest("the client closed mid-head") from None
        return None  # a clean close between requests
    except asyncio.LimitOverrunError:
        raise BadRequest(f"request head over {MAX_HEAD} bytes") from None
    return parse_head(raw)


async def _drain(writer: asyncio.StreamWriter) -> None:
    async with asyncio.timeout(IDLE_TIMEOUT):
        await writer.drain()


async def _copy_exactly(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
    while n > 0:
        async with asyncio.timeout(IDLE_TIMEOUT):
            data = await reader.read(min(n, CHUNK))
        if not data:
            raise asyncio.IncompleteReadError(b"", n)
        n -= len(data)
        writer.write(data)
        await _drain(writer)


async def _relay_response(
    up_reader: asyncio.StreamReader, writer: asyncio.StreamWriter, method: str
) -> bool:
    """Relay one response byte-for-byte; True when the connection can carry another request."""
    tracker = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD)
    # h11 only tracks framing (which depends on the method); these bytes are never sent
    tracker.send(h11.Request(method=method, target="/", headers=[("host", "x")]))
    tracker.send(h11.EndOfMessage())
    while True:
        async with asyncio.timeout(IDLE_TIMEOUT):
            data = await up_reader.read(CHUNK)
        if data:
            writer.write(data)
            await _drain(writer)
        try:
            tracker.receive_data(data)
            while True:
                event = tracker.next_event()
                if event is h11.NEED_DATA:
                    break
                if isinstance(event, h11.EndOfMessage):
                    return tracker.their_state is h11.DONE and tracker.our_state is h11.DONE
                if isinstance(event, h11.ConnectionClosed):
                    return False
        except h11.RemoteProtocolError:
            # a response h11 cannot frame: relay the rest as it comes, then close
            await _pipe(up_reader, writer)
            return False
        if not data:
            return False


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while True:
        async with asyncio.timeout(IDLE_TIMEOUT):
            data = await reader.read(CHUNK)
        if not data:
            return
        writer.write(data)
        await _drain(writer)


async def _relay_both(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    up_reader: asyncio.StreamReader,
    up_writer: asyncio.StreamWriter,
) -> None:
    async with asyncio.TaskGroup() as group:
        group.create_task(_pipe(reader, up_writer))
        group.create_task(_pipe(up_reader, writer))


async def _start_http(args: argparse.Namespace) -> Closer:
    if not (args.status == 0 or 100 <= args.status <= 599) or not 0 <= args.percent <= 100:
        raise ValueError("status must be 0 or 100-599 and percent 0-100")
    if not 0 <= args.delay_ms <= 600_000 or (args.status == 0 and args.delay_ms == 0):
        raise ValueError("need a status and/or a delay-ms of 0-600000")
    proxy = HttpProxy(
        HttpFault(args.status, args.delay_ms / 1000, args.percent), args.marker, random.Random()
    )
    server = await asyncio.start_server(proxy.handle, None, args.port, limit=MAX_HEAD)
    log.info("http faults on port %d: status=%d delay=%gms percent=%g",
             args.port, args.status, args.delay_ms, args.percent)  # fmt: skip

    async def close() -> None:
        server.close()
        log.info("requests faulted=%d passed=%d", proxy.faulted, proxy.passed)

    return close


if __name__ == "__main__":
    sys.exit(main())
