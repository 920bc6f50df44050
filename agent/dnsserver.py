"""A small, real, authoritative DNS server on asyncio, built on dnspython's wire format.

It serves one zone given as data, over UDP and TCP on one port, over DNS-over-TLS, and
as an aiohttp handler for DNS-over-HTTPS (RFC 8484). It is the agent's demo DNS target, the
tests' "real DNS server on loopback", and the base of DNS fault injection.

What it answers, per query name (a **behaviour table**, changeable while running):

=========  ==================================================================================
ANSWER     from the zone: AA answers, CNAME chains inside the zone, NXDOMAIN and NODATA with
           the SOA in the authority section, REFUSED for names outside the zone
NXDOMAIN   NXDOMAIN (AA, SOA in authority) whatever the zone holds
SERVFAIL   SERVFAIL
REFUSED    REFUSED
DROP       no answer at all, so the client times out
FORWARD    relay the query to ``upstream`` (UDP, then TCP on truncation); SERVFAIL when the
           upstream fails. Fault injection uses ``default=FORWARD`` and overrides a few names.
=========  ==================================================================================

UDP answers larger than the client's limit (512 bytes without EDNS, else the advertised payload,
capped at ``max_udp_payload``) are sent with the TC flag and empty sections, as RFC 2181 §9 asks.

    zone = Zone.from_dict("demo.test.", {"www": [("A", "127.0.0.1", 300)]})
    server = DNSServer(zone, behaviours={"down.demo.test.": Action.SERVFAIL})
    port = await server.start()            # UDP and TCP on 127.0.0.1:port
    app.router.add_route("*", "/dns-query", server.doh_handler())
    await server.close()
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
import ssl
import struct
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import Any, cast

import dns.asyncquery
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset
from aiohttp import web

__all__ = ["Action", "DNSServer", "QueryLog", "Record", "Zone"]

_log = logging.getLogger(__name__)

#: RFC 1035 limit for UDP answers to clients that do not use EDNS
_CLASSIC_UDP_LIMIT = 512
_TCP_LIMIT = 65535
_MAX_TTL = 2**31 - 1
#: types that are not data and cannot appear in a zone
_META_TYPES = frozenset(
    {
        dns.rdatatype.ANY,
        dns.rdatatype.OPT,
        dns.rdatatype.AXFR,
        dns.rdatatype.IXFR,
        dns.rdatatype.TSIG,
        dns.rdatatype.TKEY,
        dns.rdatatype.NONE,
    }
)
_DOH_CONTENT_TYPE = "application/dns-message"
_DEFAULT_TTL = 300
#: a CNAME chain longer than this inside one zone is a loop
_MAX_CNAME_CHAIN = 8


class Action(StrEnum):
    """What the server does with a query for a name (see the module docstring)."""

    ANSWER = "answer"
    NXDOMAIN = "nxdomain"
    SERVFAIL = "servfail"
    REFUSED = "refused"
    DROP = "drop"
    FORWARD = "forward"


_ACTION_RCODES: Mapping[Action, dns.rcode.Rcode] = MappingProxyType(
    {Action.SERVFAIL: dns.rcode.SERVFAIL, Action.REFUSED: dns.rcode.REFUSED}
)


@dataclass(frozen=True, slots=True)
class Record:
    """One resource record as text: ``Record("www", "A", "127.0.0.1", 300)``.

    ``name`` is relative to the zone origin unless it ends with a dot; ``@`` is the origin.
    """

    name: str
    type: str
    data: str
    ttl: int = _DEFAULT_TTL

    def describe(self) -> str:
        return f"{self.name} {self.ttl} {self.type} {self.data!r}"


@dataclass(frozen=True, slots=True)
class Zone:
    """An authoritative zone: an origin and its records, validated on construction.

    Without an SOA record, one is made up (serial 1) so NXDOMAIN/NODATA answers carry one.
    Raises ``ValueError`` naming the record and the rule it breaks.
    """

    origin: str
    records: tuple[Record, ...] = ()
    _rrsets: Mapping[dns.name.Name, Mapping[dns.rdatatype.RdataType, dns.rrset.RRset]] = field(
        init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        object.__setattr__(self, "_rrsets", MappingProxyType(_compile(self.origin, self.records)))

    @classmethod
    def from_dict(
        cls, origin: str, data: Mapping[str, Iterable[tuple[str, str] | tuple[str, str, int]]]
    ) -> Zone:
        """Build a zone from ``{name: [(type, rdata text[, ttl]), ...]}``.

        >>> Zone.from_dict("demo.test.", {"mail": [("A", "127.0.0.9"), ("TXT", '"hi"', 60)]})
        """
        records = []
        for name, entries in data.items():
            for entry in entries:
                if len(entry) not in (2, 3):
                    raise ValueError(
                        f"zone {origin}: record {name} {entry!r}: "
                        "must be (type, rdata) or (type, rdata, ttl)"
                    )
                ttl = entry[2] if len(entry) == 3 else _DEFAULT_TTL
                records.append(Record(name, entry[0], entry[1], ttl))
        return cls(origin, tuple(records))

    @property
    def origin_name(self) -> dns.name.Name:
        return dns.name.from_text(self.origin)

    @property
    def soa(self) -> dns.rrset.RRset:
        return self._rrsets[self.origin_name][dns.rdatatype.SOA]

    def node(self, name: dns.name.Name) -> Mapping[dns.rdatatype.RdataType, dns.rrset.RRset] | None:
        """The RRsets at ``name``: ``{}`` for an empty non-terminal, ``None`` for no such name."""
        found = self._rrsets.get(name)
        if found is not None:
            return found
        if any(owner.is_subdomain(name) for owner in self._rrsets):
            return MappingProxyType({})
        return None


def _compile(
    origin_text: str, records: tuple[Record, ...]
) -> dict[dns.name.Name, Mapping[dns.rdatatype.RdataType, dns.rrset.RRset]]:
    try:
        origin = dns.name.from_text(origin_text)
    except dns.exception.DNSException as exc:
        raise ValueError(f"zone origin {origin_text!r} is not a domain name: {exc}") from exc
    nodes: dict[dns.name.Name, dict[dns.rdatatype.RdataType, dns.rrset.RRset]] = {}
    for record in records:
        owner, rdata = _parse_record(origin, record)
        rrsets = nodes.setdefault(owner, {})
        rrset = rrsets.get(rdata.rdtype)
        if rrset is None:
            rrset = rrsets[rdata.rdtype] = dns.rrset.RRset(owner, dns.rdataclass.IN, rdata.rdtype)
        elif rrset.ttl != record.ttl:
            raise ValueError(
                f"zone {origin}: record {record.describe()}: all records of one name and type "
                f"need the same TTL (RFC 2181 §5.2), an earlier one has {rrset.ttl}"
            )
        rrset.add(rdata, record.ttl)
    for owner, rrsets in nodes.items():
        if dns.rdatatype.CNAME in rrsets and len(rrsets) > 1:
            raise ValueError(
                f"zone {origin}: name {owner}: a CNAME cannot coexist with other records "
                "(RFC 1034 §3.6.2)"
            )
        if dns.rdatatype.SOA in rrsets and owner != origin:
            raise ValueError(f"zone {origin}: name {owner}: an SOA record belongs at the origin")
    apex = nodes.setdefault(origin, {})
    if dns.rdatatype.SOA not in apex:
        apex[dns.rdatatype.SOA] = dns.rrset.from_text(
            origin,
            3600,
            "IN",
            "SOA",
            f"ns.{origin} hostmaster.{origin} 1 3600 600 86400 60",
        )
    elif len(apex[dns.rdatatype.SOA]) > 1:
        raise ValueError(f"zone {origin}: a zone has exactly one SOA record")
    return {owner: MappingProxyType(rrsets) for owner, rrsets in nodes.items()}


def _parse_record(origin: dns.name.Name, record: Record) -> tuple[dns.name.Name, dns.rdata.Rdata]:
    def bad(rule: str) -> ValueError:
        return ValueError(f"zone {origin}: record {record.describe()}: {rule}")

    try:
        owner = dns.name.from_text(record.name, origin) if record.name != "@" else origin
    except dns.exception.DNSException as exc:
        raise bad(f"the name is not a domain name ({exc})") from exc
    if not owner.is_subdomain(origin):
        raise bad(f"the name must be inside the zone {origin}")
    try:
        rdtype = dns.rdatatype.from_text(record.type)
    except dns.exception.DNSException as exc:
        raise bad("unknown record type") from exc
    if rdtype in _META_TYPES:
        raise bad(f"{record.type} is a query-only type, not zone data")
    if (
        isinstance(record.ttl, bool)
        or not isinstance(record.ttl, int)
        or not (0 <= record.ttl <= _MAX_TTL)
    ):
        raise bad(f"the TTL must be an integer 0-{_MAX_TTL}")
    try:
        rdata = dns.rdata.from_text(
            dns.rdataclass.IN, rdtype, record.data, origin=origin, relativize=False
        )
    except (dns.exception.DNSException, ValueError) as exc:
        raise bad(f"the data is not valid {record.type} rdata ({exc})") from exc
    return owner, rdata


@dataclass(frozen=True, slots=True)
class QueryLog:
    """One query the server received (kept for tests and the fault timeline)."""

    name: str
    type: str
    recursion_desired: bool
    transport: str  # udp | tcp | tls | https
    action: Action


class DNSServer:
    """An authoritative DNS server for one :class:`Zone` (UDP, TCP, DoT, DoH).

    ``behaviours`` maps absolute names (``"x.demo.test."``, or ``"*.demo.test."`` for a whole
    subtree) to an :class:`Action`; other names get ``default``. ``upstream`` (ip, port) is
    needed by ``Action.FORWARD``.

        async with DNSServer(zone) as server:
            port = await server.start()
    """

    def __init__(
        self,
        zone: Zone,
        *,
        behaviours: Mapping[str, Action] | None = None,
        default: Action = Action.ANSWER,
        upstream: tuple[str, int] | None = None,
        forward_timeout: float = 2.0,
        max_udp_payload: int = 1232,
        idle_timeout: float = 10.0,
        query_log_size: int = 1024,
    ) -> None:
        self.zone = zone
        self._default = default
        self._upstream = upstream
        self._forward_timeout = forward_timeout
        self._max_udp_payload = max(_CLASSIC_UDP_LIMIT, max_udp_payload)
        self._idle_timeout = idle_timeout
        self._behaviours: dict[dns.name.Name, Action] = {}
        for name, action in (behaviours or {}).items():
            self.set_behaviour(name, action)
        if default is Action.FORWARD and upstream is None:
            raise ValueError("default action forward needs an upstream (ip, port)")
        self._queries: deque[QueryLog] = deque(maxlen=query_log_size)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._servers: list[asyncio.Server] = []
        self._udp: list[asyncio.DatagramTransport] = []
        self._closing = asyncio.Event()

    async def __aenter__(self) -> DNSServer:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- behaviour table ---------------------------------------------------------------------

    def set_behaviour(self, name: str, action: Action | None) -> None:
        """Set (``None``: remove) the action for ``name`` (absolute; ``*.`` for a subtree)."""
        try:
            key = dns.name.from_text(name)
        except dns.exception.DNSException as exc:
            raise ValueError(f"behaviour for {name!r}: not a domain name ({exc})") from exc
        if action is None:
            self._behaviours.pop(key, None)
            return
        if action is Action.FORWARD and self._upstream is None:
            raise ValueError(f"behaviour for {name!r}: forward needs an upstream (ip, port)")
        self._behaviours[key] = Action(action)

    def action_for(self, qname: dns.name.Name) -> Action:
        """The action for ``qname``: exact entry, else nearest ``*.`` subtree, else default."""
        exact = self._behaviours.get(qname)
        if exact is not None:
            return exact
        name = qname
        while len(name) > 1:
            wild = self._behaviours.get(dns.name.Name((b"*", *name.labels)))
            if wild is not None:
                return wild
            name = name.parent()
        return self._default

    @property
    def queries(self) -> tuple[QueryLog, ...]:
        """The most recent queries received, oldest first."""
        return tuple(self._queries)

    # -- listeners ---------------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Serve UDP and TCP on ``host:port`` (0: a port free for both). Returns the port."""
        loop = asyncio.get_running_loop()
        # port 0 picks a free UDP port; TCP may hold that number already, so try a few
        attempts = 20 if port == 0 else 1
        for attempt in range(attempts):
            transport, _ = await loop.create_datagram_endpoint(
                lambda: _UDPHandler(self), local_addr=(host, port)
            )
            bound = int(transport.get_extra_info("sockname")[1])
            try:
                server = await asyncio.start_server(self._serve_stream_tcp, host, bound)
            except OSError:
                transport.close()
                if attempt == attempts - 1:
                    raise
                continue
            self._udp.append(transport)
            self._servers.append(server)
            return bound
        raise AssertionError("unreachable")  # pragma: no cover

    async def start_tls(
        self, ssl_ctx: ssl.SSLContext, host: str = "127.0.0.1", port: int = 0
    ) -> int:
        """Serve DNS-over-TLS (RFC 7858) on ``host:port``. Returns the bound port."""
        server = await asyncio.start_server(
            self._serve_stream_tls,
            host,
            port,
            ssl=ssl_ctx,
            ssl_handshake_timeout=self._idle_timeout,
        )
        self._servers.append(server)
        return int(server.sockets[0].getsockname()[1])

    def doh_handler(self) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        """An aiohttp handler for RFC 8484 (GET ``?dns=`` and POST ``application/dns-message``).

        app.router.add_route("*", "/dns-query", server.doh_handler())
        """
        return self._handle_doh

    async def close(self) -> None:
        """Stop every listener and cancel and await every task the server started."""
        self._closing.set()
        for transport in self._udp:
            transport.close()
        for server in self._servers:
            server.close()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for server in self._servers:
            await server.wait_closed()
        self._udp.clear()
        self._servers.clear()

    def _spawn(self, coro: Awaitable[None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- transports --------------------------------------------------------------------------

    async def _answer_datagram(
        self, transport: asyncio.DatagramTransport, wire: bytes, addr: Any
    ) -> None:
        reply = await self.reply(wire, "udp")
        if reply is not None and not transport.is_closing():
            transport.sendto(reply, addr)

    async def _serve_stream_tcp(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await self._serve_stream(reader, writer, "tcp")

    async def _serve_stream_tls(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await self._serve_stream(reader, writer, "tls")

    async def _serve_stream(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, transport: str
    ) -> None:
        # asyncio.start_server starts this task; own it so close() can cancel it
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            while True:
                async with asyncio.timeout(self._idle_timeout):
                    (length,) = struct.unpack("!H", await reader.readexactly(2))
                    wire = await reader.readexactly(length)
                reply = await self.reply(wire, transport)
                if reply is not None:  # DROP: keep the connection, never answer
                    writer.write(struct.pack("!H", len(reply)) + reply)
                    await writer.drain()
        except (asyncio.IncompleteReadError, TimeoutError, ConnectionError, ssl.SSLError):
            pass  # the client left, idled out or broke TLS: nothing to answer
        except asyncio.CancelledError:
            # only close() cancels this task. Ending normally matters on Python 3.11, whose
            # start_server callback calls task.exception() on a cancelled task and logs a trace
            if not self._closing.is_set():
                raise
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, ssl.SSLError):
                await writer.wait_closed()
            if task is not None:
                self._tasks.discard(task)

    async def _handle_doh(self, request: web.Request) -> web.StreamResponse:
        if request.method == "GET":
            encoded = request.query.get("dns", "")
            try:
                wire = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
            except (binascii.Error, ValueError):
                raise web.HTTPBadRequest(text="dns parameter is not base64url") from None
        elif request.method == "POST":
            if request.content_type != _DOH_CONTENT_TYPE:
                raise web.HTTPUnsupportedMediaType(text=f"use {_DOH_CONTENT_TYPE}")
            wire = await request.read()
        else:
            raise web.HTTPMethodNotAllowed(request.method, ["GET", "POST"])
        if not wire:
            raise web.HTTPBadRequest(text="empty DNS message")
        reply = await self.reply(wire, "https")
        if reply is None:
            # DROP over HTTP: hold the request until the server closes, like a dead resolver
            await self._closing.wait()
            raise web.HTTPServiceUnavailable()
        return web.Response(body=reply, content_type=_DOH_CONTENT_TYPE)

    # -- the DNS logic -----------------------------------------------------------------------

    async def reply(self, wire: bytes, transport: str) -> bytes | None:
        """The wire reply to the query ``wire`` received over ``transport``; ``None``: no reply."""
        try:
            return await self._reply(wire, transport)
        except Exception:
            # a bug here must not kill the listener or leave the client waiting: log it and
            # answer SERVFAIL, as real servers do
            _log.exception("dns server failed to answer a %s query", transport)
            return _formerr(wire, dns.rcode.SERVFAIL)

    async def _reply(self, wire: bytes, transport: str) -> bytes | None:
        try:
            query = dns.message.from_wire(wire)
        except dns.exception.DNSException:
            return _formerr(wire)
        if query.flags & dns.flags.QR:
            return None  # a response, not a query: answering could start a loop
        if query.opcode() != dns.opcode.QUERY or len(query.question) != 1:
            return _error_reply(query, dns.rcode.NOTIMP if query.question else dns.rcode.FORMERR)
        question = query.question[0]
        action = self.action_for(question.name)
        self._queries.append(
            QueryLog(
                name=question.name.to_text(),
                type=dns.rdatatype.to_text(question.rdtype),
                recursion_desired=bool(query.flags & dns.flags.RD),
                transport=transport,
                action=action,
            )
        )
        if action is Action.DROP:
            return None
        if action is Action.FORWARD:
            response = await self._forward(query)
        else:
            response = self._authoritative(query, action)
        return self._encode(query, response, transport)

    def _authoritative(self, query: dns.message.Message, action: Action) -> dns.message.Message:
        response = dns.message.make_response(query, our_payload=self._max_udp_payload)
        if action in _ACTION_RCODES:
            response.set_rcode(_ACTION_RCODES[action])
            return response
        question = query.question[0]
        in_zone = question.rdclass == dns.rdataclass.IN and question.name.is_subdomain(
            self.zone.origin_name
        )
        if action is Action.NXDOMAIN and not in_zone:
            # an injected fault for a name we do not own: there is no SOA of ours to give
            response.set_rcode(dns.rcode.NXDOMAIN)
            return response
        if not in_zone:
            response.set_rcode(dns.rcode.REFUSED)  # not our zone: an authoritative server refuses
            return response
        response.flags |= dns.flags.AA
        if action is Action.NXDOMAIN:
            return _negative(response, self.zone, dns.rcode.NXDOMAIN)
        return _lookup(response, self.zone, question.name, question.rdtype)

    async def _forward(self, query: dns.message.Message) -> dns.message.Message:
        assert self._upstream is not None  # set_behaviour and __init__ guarantee it
        ip, port = self._upstream
        try:
            upstream = await dns.asyncquery.udp(query, ip, timeout=self._forward_timeout, port=port)
            if upstream.flags & dns.flags.TC:
                upstream = await dns.asyncquery.tcp(
                    query, ip, timeout=self._forward_timeout, port=port
                )
        except (dns.exception.DNSException, OSError) as exc:
            _log.info("forwarding %s to %s:%d failed: %s", query.question[0].name, ip, port, exc)
            return _error_message(query, dns.rcode.SERVFAIL)
        upstream.id = query.id
        return upstream

    def _encode(
        self, query: dns.message.Message, response: dns.message.Message, transport: str
    ) -> bytes:
        limit = _TCP_LIMIT
        if transport == "udp":
            limit = _CLASSIC_UDP_LIMIT
            if query.edns >= 0:
                limit = min(max(query.payload, _CLASSIC_UDP_LIMIT), self._max_udp_payload)
        try:
            return response.to_wire(max_size=limit)
        except dns.exception.TooBig:
            # RFC 2181 §9: a truncated answer is empty with TC set; the client retries on TCP
            truncated = dns.message.make_response(query, our_payload=self._max_udp_payload)
            truncated.flags |= dns.flags.TC | (response.flags & dns.flags.AA)
            truncated.set_rcode(response.rcode())
            return truncated.to_wire(max_size=limit)


def _lookup(
    response: dns.message.Message, zone: Zone, qname: dns.name.Name, rdtype: int
) -> dns.message.Message:
    name = qname
    for _ in range(_MAX_CNAME_CHAIN):
        node = zone.node(name)
        if node is None:
            # NXDOMAIN, even after a CNAME: RFC 6604 keeps the rcode of the last name
            return _negative(response, zone, dns.rcode.NXDOMAIN)
        if rdtype == dns.rdatatype.ANY:
            response.answer.extend(node.values())
            break
        if rdtype in node:
            response.answer.append(node[dns.rdatatype.RdataType(rdtype)])
            break
        cname = node.get(dns.rdatatype.CNAME)
        if cname is None:
            break
        response.answer.append(cname)
        name = cname[0].target
        if not name.is_subdomain(zone.origin_name):
            return response  # the target is elsewhere; the client follows it
    if not response.answer:
        return _negative(response, zone, dns.rcode.NOERROR)  # NODATA
    return response


def _negative(
    response: dns.message.Message, zone: Zone, rcode: dns.rcode.Rcode
) -> dns.message.Message:
    # RFC 2308 §3: the SOA goes in authority, with TTL min(SOA TTL, SOA MINIMUM)
    soa = zone.soa
    negative = dns.rrset.RRset(soa.name, soa.rdclass, soa.rdtype)
    negative.add(soa[0], min(soa.ttl, soa[0].minimum))
    response.authority.append(negative)
    response.set_rcode(rcode)
    return response


def _error_message(query: dns.message.Message, rcode: dns.rcode.Rcode) -> dns.message.Message:
    response = dns.message.make_response(query)
    response.set_rcode(rcode)
    return response


def _error_reply(query: dns.message.Message, rcode: dns.rcode.Rcode) -> bytes:
    return _error_message(query, rcode).to_wire()


def _formerr(wire: bytes, rcode: int = dns.rcode.FORMERR) -> bytes | None:
    """A bare FORMERR (or ``rcode``) for a query we cannot parse, if it has a header at all."""
    if len(wire) < 12:
        return None
    (qid, flags) = struct.unpack("!HH", wire[:4])
    if flags & dns.flags.QR:
        return None
    opcode_bits = flags & 0x7800  # keep the opcode, as RFC 1035 asks
    return struct.pack("!HHHHHH", qid, dns.flags.QR | opcode_bits | rcode, 0, 0, 0, 0)


class _UDPHandler(asyncio.DatagramProtocol):
    def __init__(self, server: DNSServer) -> None:
        self._server = server
        self._transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # asyncio's selector transport does not subclass DatagramTransport, so no isinstance
        self._transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if self._transport is not None:
            # a task per query, so a slow FORWARD never holds up the others
            self._server._spawn(self._server._answer_datagram(self._transport, data, addr))

    def error_received(self, exc: Exception) -> None:
        # ICMP errors for earlier replies (the client went away): nothing to do
        _log.debug("dns server udp error: %s", exc)
