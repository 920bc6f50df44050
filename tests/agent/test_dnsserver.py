"""agent.dnsserver: a real DNS server on loopback, queried with dnspython's own client."""

from __future__ import annotations

import asyncio
import base64
import ssl
import struct
from collections.abc import AsyncIterator

import aiohttp
import dns.asyncquery
import dns.exception
import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import pytest
import trustme
from aiohttp import web

from agent.dnsserver import Action, DNSServer, Record, Zone

ZONE = Zone.from_dict(
    "demo.test.",
    {
        "@": [
            ("SOA", "ns.demo.test. hostmaster.demo.test. 42 3600 600 86400 30", 3600),
            ("MX", "10 mail", 300),
        ],
        "www": [("A", "127.0.0.1", 300), ("A", "127.0.0.2", 300)],
        "alias": [("CNAME", "www", 60)],
        "outside": [("CNAME", "www.example.com.", 60)],
        "x.y": [("A", "127.0.0.3")],
        "big": [("TXT", f'"{i}' + "y" * 200 + '"') for i in range(5)],
    },
)


@pytest.fixture
async def server() -> AsyncIterator[DNSServer]:
    async with DNSServer(ZONE, behaviours={"down.demo.test.": Action.SERVFAIL}) as srv:
        yield srv


@pytest.fixture
async def port(server: DNSServer) -> int:
    return await server.start()


async def udp(port: int, name: str, rdtype: str = "A", **kw: object) -> dns.message.Message:
    query = dns.message.make_query(name, rdtype, **kw)  # type: ignore[arg-type]
    return await dns.asyncquery.udp(query, "127.0.0.1", port=port, timeout=5)


async def tcp(port: int, name: str, rdtype: str = "A") -> dns.message.Message:
    query = dns.message.make_query(name, rdtype)
    return await dns.asyncquery.tcp(query, "127.0.0.1", port=port, timeout=5)


# -- zone data -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("records", "message"),
    [
        (
            (Record("www", "BOGUS", "1.2.3.4"),),
            "record www 300 BOGUS '1.2.3.4': unknown record type",
        ),
        (
            (Record("www", "A", "not-an-ip"),),
            "record www 300 A 'not-an-ip': the data is not valid A",
        ),
        ((Record("www.other.", "A", "1.2.3.4"),), "the name must be inside the zone demo.test."),
        ((Record("www", "ANY", "1.2.3.4"),), "ANY is a query-only type"),
        ((Record("www", "A", "1.2.3.4", -1),), "the TTL must be an integer"),
        (
            (Record("www", "A", "1.2.3.4", 60), Record("www", "A", "1.2.3.5", 61)),
            "need the same TTL",
        ),
        (
            (Record("www", "CNAME", "x"), Record("www", "A", "1.2.3.4")),
            "a CNAME cannot coexist with other records",
        ),
        ((Record("sub", "SOA", "a. b. 1 2 3 4 5"),), "an SOA record belongs at the origin"),
    ],
)
def test_bad_zone_data_names_the_record_and_the_rule(
    records: tuple[Record, ...], message: str
) -> None:
    with pytest.raises(ValueError, match=r"zone demo\.test\.") as info:
        Zone("demo.test.", records)
    assert message in str(info.value)


def test_from_dict_rejects_bad_tuples() -> None:
    with pytest.raises(ValueError, match=r"must be \(type, rdata\) or \(type, rdata, ttl\)"):
        Zone.from_dict("demo.test.", {"www": [("A",)]})  # type: ignore[list-item]


def test_a_zone_without_soa_gets_one() -> None:
    zone = Zone("demo.test.", (Record("www", "A", "127.0.0.1"),))
    assert zone.soa[0].serial == 1


def test_forward_needs_an_upstream() -> None:
    with pytest.raises(ValueError, match="forward needs an upstream"):
        DNSServer(ZONE, behaviours={"a.demo.test.": Action.FORWARD})


# -- answers ---------------------------------------------------------------------------------


async def test_authoritative_answer_over_udp_and_tcp(port: int) -> None:
    for response in (await udp(port, "www.demo.test"), await tcp(port, "www.demo.test")):
        assert response.rcode() == dns.rcode.NOERROR
        assert response.flags & dns.flags.AA
        assert sorted(rd.address for rd in response.answer[0]) == ["127.0.0.1", "127.0.0.2"]


async def test_cname_is_followed_inside_the_zone(port: int) -> None:
    response = await udp(port, "alias.demo.test")
    assert [rrset.rdtype for rrset in response.answer] == [dns.rdatatype.CNAME, dns.rdatatype.A]


async def test_cname_out_of_the_zone_is_left_to_the_client(port: int) -> None:
    response = await udp(port, "outside.demo.test")
    assert [rrset.rdtype for rrset in response.answer] == [dns.rdatatype.CNAME]
    assert response.rcode() == dns.rcode.NOERROR


async def test_nxdomain_carries_the_soa_with_negative_ttl(port: int) -> None:
    response = await udp(port, "nope.demo.test")
    assert response.rcode() == dns.rcode.NXDOMAIN
    assert response.flags & dns.flags.AA
    (soa,) = response.authority
    assert soa.rdtype == dns.rdatatype.SOA
    assert soa.ttl == 30  # min(SOA TTL, SOA minimum), RFC 2308


@pytest.mark.parametrize("name", ["www.demo.test", "y.demo.test"])  # y: empty non-terminal
async def test_nodata_is_noerror_with_soa(port: int, name: str) -> None:
    response = await udp(port, name, "MX")
    assert response.rcode() == dns.rcode.NOERROR
    assert not response.answer
    assert response.authority[0].rdtype == dns.rdatatype.SOA


async def test_names_outside_the_zone_are_refused(port: int) -> None:
    response = await udp(port, "example.com")
    assert response.rcode() == dns.rcode.REFUSED
    assert not response.flags & dns.flags.AA


async def test_any_returns_every_rrset(port: int) -> None:
    response = await tcp(port, "demo.test", "ANY")
    assert {rrset.rdtype for rrset in response.answer} == {dns.rdatatype.SOA, dns.rdatatype.MX}


@pytest.mark.parametrize(
    ("action", "rcode"),
    [
        (Action.SERVFAIL, dns.rcode.SERVFAIL),
        (Action.REFUSED, dns.rcode.REFUSED),
        (Action.NXDOMAIN, dns.rcode.NXDOMAIN),
    ],
)
async def test_behaviours_override_the_zone(
    server: DNSServer, port: int, action: Action, rcode: dns.rcode.Rcode
) -> None:
    server.set_behaviour("www.demo.test.", action)
    assert (await udp(port, "www.demo.test")).rcode() == rcode
    server.set_behaviour("www.demo.test.", None)
    assert (await udp(port, "www.demo.test")).rcode() == dns.rcode.NOERROR


async def test_subtree_behaviour(server: DNSServer, port: int) -> None:
    server.set_behaviour("*.y.demo.test.", Action.SERVFAIL)
    assert (await udp(port, "x.y.demo.test")).rcode() == dns.rcode.SERVFAIL
    assert (await udp(port, "www.demo.test")).rcode() == dns.rcode.NOERROR


async def test_drop_never_answers(server: DNSServer, port: int) -> None:
    server.set_behaviour("www.demo.test.", Action.DROP)
    with pytest.raises(dns.exception.Timeout):
        await dns.asyncquery.udp(
            dns.message.make_query("www.demo.test", "A"), "127.0.0.1", port=port, timeout=0.3
        )
    assert server.queries[-1].action is Action.DROP


async def test_big_udp_answer_is_truncated_and_complete_over_tcp(port: int) -> None:
    truncated = await udp(port, "big.demo.test", "TXT")
    assert truncated.flags & dns.flags.TC
    assert not truncated.answer
    assert len((await tcp(port, "big.demo.test", "TXT")).answer[0]) == 5
    # with EDNS the client's larger buffer is honoured
    edns = await udp(port, "big.demo.test", "TXT", use_edns=0, payload=4096)
    assert not edns.flags & dns.flags.TC
    assert len(edns.answer[0]) == 5


async def test_query_log_records_the_rd_flag(server: DNSServer, port: int) -> None:
    await udp(port, "www.demo.test", flags=0)
    await udp(port, "www.demo.test")
    assert [q.recursion_desired for q in server.queries] == [False, True]
    assert server.queries[0].transport == "udp"


async def test_garbage_gets_formerr(port: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    garbage = struct.pack("!HHHHHH", 0x1234, 0, 1, 0, 0, 0) + b"\xff\xff"
    writer.write(struct.pack("!H", len(garbage)) + garbage)
    (length,) = struct.unpack("!H", await reader.readexactly(2))
    reply = await reader.readexactly(length)
    writer.close()
    assert struct.unpack("!H", reply[:2])[0] == 0x1234
    assert struct.unpack("!H", reply[2:4])[0] & 0xF == dns.rcode.FORMERR


async def test_close_ends_idle_connections_and_tasks(server: DNSServer, port: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"\x00")  # half a length prefix: the handler waits for more
    await writer.drain()
    await server.close()
    try:
        ended = await reader.read() == b""
    except ConnectionResetError:  # unread bytes at close make the kernel send RST: also an end
        ended = True
    assert ended
    assert not server._tasks
    writer.close()


# -- forwarding ------------------------------------------------------------------------------


async def test_forward_relays_to_upstream_and_overrides_win() -> None:
    upstream_zone = Zone.from_dict("example.org.", {"www": [("A", "192.0.2.7")]})
    async with DNSServer(upstream_zone) as upstream:
        upstream_port = await upstream.start()
        async with DNSServer(
            Zone("fault.test."),
            default=Action.FORWARD,
            upstream=("127.0.0.1", upstream_port),
            behaviours={"bad.example.org.": Action.NXDOMAIN},
        ) as forwarder:
            port = await forwarder.start()
            relayed = await udp(port, "www.example.org")
            assert relayed.answer[0][0].address == "192.0.2.7"
            assert (await udp(port, "bad.example.org")).rcode() == dns.rcode.NXDOMAIN


async def test_forward_to_a_dead_upstream_is_servfail() -> None:
    async with DNSServer(ZONE) as dead:
        dead_port = await dead.start()
        dead.set_behaviour("*.demo.test.", Action.DROP)
        async with DNSServer(
            Zone("fault.test."),
            default=Action.FORWARD,
            upstream=("127.0.0.1", dead_port),
            forward_timeout=0.2,
        ) as forwarder:
            port = await forwarder.start()
            assert (await udp(port, "www.demo.test")).rcode() == dns.rcode.SERVFAIL


# -- DoT and DoH -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def server_context(ca: trustme.CA) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "dns.demo.test").configure_cert(ctx)
    return ctx


def client_context(ca: trustme.CA) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    return ctx


async def test_dns_over_tls(server: DNSServer, ca: trustme.CA) -> None:
    port = await server.start_tls(server_context(ca))
    response = await dns.asyncquery.tls(
        dns.message.make_query("www.demo.test", "A"),
        "127.0.0.1",
        port=port,
        timeout=5,
        ssl_context=client_context(ca),
        server_hostname="127.0.0.1",
    )
    assert response.answer[0].rdtype == dns.rdatatype.A
    assert server.queries[-1].transport == "tls"


@pytest.fixture
async def doh_url(server: DNSServer, ca: trustme.CA) -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_route("*", "/dns-query", server.doh_handler())
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_context(ca))
    await site.start()
    port = runner.addresses[0][1]
    yield f"https://127.0.0.1:{port}/dns-query"
    await server.close()  # releases a dropped request before aiohttp waits for handlers
    await runner.cleanup()


async def test_doh_get_and_post(doh_url: str, ca: trustme.CA, server: DNSServer) -> None:
    wire = dns.message.make_query("www.demo.test", "A", id=0).to_wire()
    encoded = base64.urlsafe_b64encode(wire).rstrip(b"=").decode()
    connector = aiohttp.TCPConnector(ssl=client_context(ca))
    async with aiohttp.ClientSession(connector=connector) as session:
        async with session.get(doh_url, params={"dns": encoded}) as got:
            assert got.status == 200
            assert got.content_type == "application/dns-message"
            by_get = dns.message.from_wire(await got.read())
        async with session.post(
            doh_url, data=wire, headers={"Content-Type": "application/dns-message"}
        ) as posted:
            by_post = dns.message.from_wire(await posted.read())
        async with session.post(doh_url, data=wire, headers={"Content-Type": "text/plain"}) as bad:
            assert bad.status == 415
        async with session.get(doh_url, params={"dns": "!!"}) as bad_get:
            assert bad_get.status == 400
    assert by_get.answer == by_post.answer
    assert len(by_get.answer[0]) == 2
    assert [q.transport for q in server.queries] == ["https", "https"]
