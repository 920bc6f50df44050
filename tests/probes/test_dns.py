"""probes.dns against real DNS servers on loopback: agent.dnsserver, and dnsmasq."""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import ssl
import struct
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, cast

import dns.message
import dns.rrset
import pytest
import trustme
from aiohttp import web

from agent.dnsserver import Action, DNSServer, Zone
from probes import Module, ProbeResult, Reason, run_probe
from probes.connection import Memo
from probes.dnsmessage import DNSAnswer, _walk, rr_texts
from tests.probes.dns_wire import read, reference

FIXTURES = Path(__file__).parent.parent / "fixtures" / "blackbox"

ZONE = Zone.from_dict(
    "demo.test.",
    {
        "@": [
            ("SOA", "ns.demo.test. hostmaster.demo.test. 2024010101 3600 600 86400 60", 3600),
            ("MX", "10 mail.demo.test.", 300),
        ],
        "www": [("A", "127.0.0.1", 300), ("A", "127.0.0.2", 300)],
        "txt": [("TXT", '"hello world"', 60)],
        "big": [("TXT", f'"{i}' + "y" * 200 + '"') for i in range(5)],
    },
)


def dns_module(**dns: Any) -> Module:
    dns.setdefault("query_name", "www.demo.test")
    dns.setdefault("query_type", "A")
    return Module.model_validate({"prober": "dns", "dns": {"preferred_ip_protocol": "ip4", **dns}})


def names(result: ProbeResult) -> set[str]:
    return {m.name for m in result.measurements}


def metric(result: ProbeResult, name: str) -> float:
    return float(result.to_json()["metrics"][name])


@pytest.fixture
async def server() -> AsyncIterator[DNSServer]:
    async with DNSServer(
        ZONE,
        behaviours={"down.demo.test.": Action.SERVFAIL, "drop.demo.test.": Action.DROP},
    ) as srv:
        yield srv


@pytest.fixture
async def target(server: DNSServer) -> str:
    return f"127.0.0.1:{await server.start()}"


async def probe(target: str, timeout: float = 5.0, **dns: Any) -> ProbeResult:
    return await run_probe(dns_module(**dns), target, timeout=timeout)


# -- the answer ------------------------------------------------------------------------------


async def test_noerror_success_and_blackbox_gauges(target: str) -> None:
    result = await probe(target)
    assert result.reason is Reason.SUCCESS, result.detail
    assert metric(result, "probe_dns_answer_rrs") == 2
    assert metric(result, "probe_dns_authority_rrs") == 0
    assert metric(result, "probe_dns_query_succeeded") == 1
    assert metric(result, "probe_ip_protocol") == 4
    assert set(result.phases) == {"resolve", "connect", "request"}
    assert sorted(result.extra["dns"]["answer"]) == [
        "www.demo.test.\t300\tIN\tA\t127.0.0.1",
        "www.demo.test.\t300\tIN\tA\t127.0.0.2",
    ]


def test_rr_text_is_miekg_format() -> None:
    rrset = dns.rrset.from_text("www.prometheus.io.", 300, "IN", "A", "127.0.0.1")
    assert rr_texts([rrset]) == ["www.prometheus.io.\t300\tIN\tA\t127.0.0.1"]


@pytest.mark.parametrize(
    ("rule", "patterns", "ok"),
    [
        ("fail_if_matches_regexp", [r"127\.0\.0\.9"], True),
        ("fail_if_matches_regexp", [r"127\.0\.0\.2"], False),
        ("fail_if_not_matches_regexp", [r"^www\.demo\.test\.\t300\tIN\tA\t127\.0\.0\.[12]$"], True),
        ("fail_if_not_matches_regexp", [r"127\.0\.0\.1"], False),
        # blackbox 0.23 (checked against the binary): fails unless EVERY RR matches
        ("fail_if_all_match_regexp", [r"127\.0\.0\."], True),
        ("fail_if_all_match_regexp", [r"127\.0\.0\.1"], False),
        ("fail_if_none_matches_regexp", [r"127\.0\.0\.2"], True),
        ("fail_if_none_matches_regexp", [r"10\.0\.0\.1"], False),
    ],
)
async def test_answer_rules(target: str, rule: str, patterns: list[str], ok: bool) -> None:
    result = await probe(target, validate_answer_rrs={rule: patterns})
    assert result.reason is (Reason.SUCCESS if ok else Reason.DNS_ANSWER_MISMATCH), result.detail


async def test_rules_needing_rrs_fail_on_an_empty_section(target: str) -> None:
    result = await probe(target, validate_additional_rrs={"fail_if_none_matches_regexp": ["."]})
    assert result.reason is Reason.DNS_ANSWER_MISMATCH
    assert "additional" in result.detail


async def test_nxdomain_is_an_rcode_failure_unless_valid(target: str) -> None:
    failed = await probe(target, query_name="nope.demo.test")
    assert failed.reason is Reason.DNS_RCODE
    assert "NXDOMAIN" in failed.detail
    assert metric(failed, "probe_dns_query_succeeded") == 1  # an answer came, as in blackbox
    assert metric(failed, "probe_dns_authority_rrs") == 1
    passed = await probe(
        target,
        query_name="nope.demo.test",
        valid_rcodes=["NOERROR", "NXDOMAIN"],
        validate_authority_rrs={"fail_if_not_matches_regexp": [r"\tSOA\tns\.demo\.test\. "]},
    )
    assert passed.reason is Reason.SUCCESS, passed.detail


async def test_servfail(target: str) -> None:
    result = await probe(target, query_name="down.demo.test")
    assert result.reason is Reason.DNS_RCODE
    assert "SERVFAIL" in result.detail


async def test_tcp(target: str, server: DNSServer) -> None:
    result = await probe(target, transport_protocol="tcp")
    assert result.reason is Reason.SUCCESS, result.detail
    assert server.queries[-1].transport == "tcp"


@pytest.mark.parametrize("transport", ["udp", "tcp"])
async def test_dropped_query_times_out_with_gauges_present(target: str, transport: str) -> None:
    result = await probe(
        target, timeout=0.5, query_name="drop.demo.test", transport_protocol=transport
    )
    assert result.reason is Reason.TIMEOUT
    assert "request" in result.detail
    assert metric(result, "probe_dns_query_succeeded") == 0
    assert names(result) >= {"probe_dns_answer_rrs", "probe_dns_duration_seconds"}


async def test_mx_and_txt(target: str) -> None:
    mx = await probe(
        target,
        query_name="demo.test",
        query_type="MX",
        validate_answer_rrs={"fail_if_not_matches_regexp": ["\tMX\t10 mail\\.demo"]},
    )
    assert mx.reason is Reason.SUCCESS, mx.detail
    txt = await probe(
        target,
        query_name="txt.demo.test",
        query_type="TXT",
        validate_answer_rrs={"fail_if_not_matches_regexp": ['\tTXT\t"hello world"$']},
    )
    assert txt.reason is Reason.SUCCESS, txt.detail


async def test_soa_sets_the_serial(target: str) -> None:
    result = await probe(target, query_name="demo.test", query_type="SOA")
    assert result.reason is Reason.SUCCESS
    assert metric(result, "probe_dns_serial") == 2024010101
    assert "probe_dns_serial" not in names(await probe(target))


async def test_recursion_desired_false_clears_rd(target: str, server: DNSServer) -> None:
    await probe(target, recursion_desired=False)
    await probe(target)
    assert [q.recursion_desired for q in server.queries] == [False, True]


async def test_truncated_udp_answer_is_reported_not_retried(target: str, server: DNSServer) -> None:
    result = await probe(target, query_name="big.demo.test", query_type="TXT")
    assert result.reason is Reason.SUCCESS  # blackbox judges the truncated answer as it is
    assert result.extra["dns"]["truncated"] is True
    assert metric(result, "probe_dns_answer_rrs") == 0
    assert [q.transport for q in server.queries] == ["udp"]


def closed_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_udp_to_a_closed_port_is_refused() -> None:
    result = await probe(f"127.0.0.1:{closed_udp_port()}")
    assert result.reason is Reason.CONNECT_REFUSED


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("query_type", "NOPE", "'NOPE' is not a DNS record type"),
        ("query_class", "XX", "'XX' is not a DNS class"),
        ("valid_rcodes", ["NOPE"], "'NOPE' is not a DNS rcode"),
    ],
)
def test_bad_dns_names_are_rejected_at_load(key: str, value: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Module.model_validate({"prober": "dns", "dns": {"query_name": "a.test", key: value}})


# -- matching answers to queries: a scripted UDP server ---------------------------------------

Script = Callable[[dns.message.Message], list[bytes]]


class ScriptedServer(asyncio.DatagramProtocol):
    """Answers each query with the datagrams ``script`` makes, in order; keeps every query."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.queries: list[bytes] = []
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # asyncio's selector transport does not subclass DatagramTransport, so no isinstance
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        assert self.transport is not None
        self.queries.append(data)
        for datagram in self.script(dns.message.from_wire(data)):
            self.transport.sendto(datagram, addr)


@asynccontextmanager
async def scripted(script: Script) -> AsyncIterator[tuple[str, ScriptedServer]]:
    """A UDP DNS server on 127.0.0.1 port 0 that follows ``script``: (target, server)."""
    loop = asyncio.get_running_loop()
    transport, server = await loop.create_datagram_endpoint(
        lambda: ScriptedServer(script), local_addr=("127.0.0.1", 0)
    )
    try:
        yield f"127.0.0.1:{transport.get_extra_info('sockname')[1]}", server
    finally:
        transport.close()


def a_answer(
    query: dns.message.Message,
    address: str,
    *,
    qid: int | None = None,
    question: str | None = None,
    ttl: int = 300,
) -> bytes:
    """An answer to ``query`` with one A record; ``qid``/``question`` make it mismatch."""
    asked = query
    if question is not None:
        asked = dns.message.make_query(question, "A", use_edns=False, id=query.id)
    response = dns.message.make_response(asked)
    response.answer.append(dns.rrset.from_text("www.demo.test.", ttl, "IN", "A", address))
    if qid is not None:
        response.id = qid
    return response.to_wire()


def mismatches_first(query: dns.message.Message) -> list[bytes]:
    return [
        a_answer(query, "10.0.0.1", qid=query.id ^ 0xFFFF),
        a_answer(query, "10.0.0.2", question="other.demo.test"),
        # a server may echo the name in another case (DNS 0x20): it is the same question
        a_answer(query, "127.0.0.1", question="WWW.Demo.TEST"),
    ]


async def test_udp_skips_answers_with_another_id_or_question() -> None:
    async with scripted(mismatches_first) as (target, server):
        result = await probe(target)
    assert result.reason is Reason.SUCCESS, result.detail
    # the RR's name is compressed against the question, so it is printed in the echoed case
    assert result.extra["dns"]["answer"] == ["WWW.Demo.TEST.\t300\tIN\tA\t127.0.0.1"]
    assert metric(result, "probe_dns_answer_rrs") == 1
    assert len(server.queries) == 1


async def test_each_query_has_a_fresh_id_and_dnspythons_wire_form() -> None:
    async with scripted(lambda query: [a_answer(query, "127.0.0.1")]) as (target, server):
        for _ in range(8):
            assert (await probe(target)).reason is Reason.SUCCESS
    # 8 random 16-bit IDs are all equal with a probability of 2**-112
    assert len({query[:2] for query in server.queries}) > 1
    made = dns.message.make_query("www.demo.test", "A", use_edns=False, id=0).to_wire()
    assert {query[2:] for query in server.queries} == {made[2:]}


async def test_each_distinct_answer_is_read_as_it_is() -> None:
    # a caching resolver counts TTLs down: equal answers but for the TTL are not confused
    ttls = iter([300, 299, 300])

    def counting_down(query: dns.message.Message) -> list[bytes]:
        return [a_answer(query, "127.0.0.1", ttl=next(ttls))]

    async with scripted(counting_down) as (target, _):
        answers = [(await probe(target)).extra["dns"]["answer"] for _ in range(3)]
    assert [answer[0].split("\t")[1] for answer in answers] == ["300", "299", "300"]


async def test_an_unparseable_udp_answer_is_a_protocol_error() -> None:
    async with scripted(lambda query: [query.to_wire()[:2] + b"\x80"]) as (target, _):
        result = await probe(target)
    assert result.reason is Reason.DNS_PROTOCOL_ERROR
    assert metric(result, "probe_dns_query_succeeded") == 0


async def test_tcp_answer_with_another_id_is_a_protocol_error(serve: Any) -> None:
    async def wrong_id(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        (length,) = struct.unpack("!H", await reader.readexactly(2))
        query = dns.message.from_wire(await reader.readexactly(length))
        wire = a_answer(query, "127.0.0.1", qid=query.id ^ 1)
        writer.write(struct.pack("!H", len(wire)) + wire)
        await writer.drain()

    async with serve(wrong_id) as port:
        result = await probe(f"127.0.0.1:{port}", transport_protocol="tcp")
    assert result.reason is Reason.DNS_PROTOCOL_ERROR
    assert "does not match" in result.detail


def test_an_answer_keeps_its_own_facts() -> None:
    query = dns.message.make_query("demo.test", "SOA", use_edns=False)
    response = dns.message.make_response(query)
    response.answer.append(
        dns.rrset.from_text("demo.test.", 60, "IN", "SOA", "ns. host. 7 3600 600 86400 60")
    )
    response.flags |= dns.flags.TC
    answer = DNSAnswer.from_wire(response.to_wire(), Memo())
    assert answer.counts == (1, 0, 0)
    assert answer.serial == 7
    assert answer.truncated
    texts = answer.texts()
    assert texts.rcode == "NOERROR"
    assert texts.flags == "QR TC RD"
    assert texts.answer == ("demo.test.\t60\tIN\tSOA\tns. host. 7 3600 600 86400 60",)
    assert answer.texts() is texts  # formatted once


def run_on_uvloop(scenario: Callable[[], Coroutine[Any, Any, None]]) -> None:
    uvloop = pytest.importorskip("uvloop")
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(scenario())


def test_udp_on_uvloop() -> None:
    """The UDP path on uvloop (what ``seismo agent`` runs on): its socket calls differ."""

    async def scenario() -> None:
        async with DNSServer(ZONE) as server:
            ok = await probe(f"127.0.0.1:{await server.start()}")
        assert ok.reason is Reason.SUCCESS, ok.detail
        assert metric(ok, "probe_dns_answer_rrs") == 2
        async with scripted(mismatches_first) as (target, _):
            skipped = await probe(target)
        assert skipped.reason is Reason.SUCCESS, skipped.detail
        assert skipped.extra["dns"]["answer"] == ["WWW.Demo.TEST.\t300\tIN\tA\t127.0.0.1"]
        refused = await probe(f"127.0.0.1:{closed_udp_port()}")
        assert refused.reason is Reason.CONNECT_REFUSED

    run_on_uvloop(scenario)


# -- the answer reader on real answers -------------------------------------------------------


async def ask_udp(target: str, qname: str, qtype: str, *, edns: bool) -> bytes:
    """The raw answer of the server at ``target`` to one query, with or without EDNS."""
    host, port = target.rsplit(":", 1)
    loop = asyncio.get_running_loop()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setblocking(False)
        sock.connect((host, int(port)))
        query = dns.message.make_query(qname, qtype, use_edns=0 if edns else False)
        await loop.sock_sendall(sock, query.to_wire())
        async with asyncio.timeout(5):
            return await loop.sock_recv(sock, 65535)


def walked(wire: bytes) -> bool:
    """Whether the reader walks ``wire`` itself (read with ID 0, as it always is)."""
    return _walk(b"\0\0" + wire[2:]) is not None


ZONE_QUESTIONS = (
    ("www.demo.test", "A"),
    ("WwW.DeMo.TeSt", "A"),  # the answer's owner is compressed against the echoed case
    ("demo.test", "MX"),
    ("demo.test", "SOA"),
    ("demo.test", "NS"),
    ("demo.test", "ANY"),
    ("txt.demo.test", "TXT"),
    ("big.demo.test", "TXT"),  # over 512 bytes: cut to TC without EDNS
    ("www.demo.test", "AAAA"),  # NODATA, with the SOA
    ("nope.demo.test", "A"),  # NXDOMAIN, with the SOA
    ("down.demo.test", "A"),  # SERVFAIL
)


@pytest.mark.parametrize("edns", [False, True], ids=["plain", "edns"])
async def test_the_reader_walks_real_answers_as_dnspython_reads_them(
    target: str, edns: bool
) -> None:
    for qname, qtype in ZONE_QUESTIONS:
        wire = await ask_udp(target, qname, qtype, edns=edns)
        assert walked(wire), (qname, qtype)
        assert read(wire) == reference(wire), (qname, qtype)


# -- blackbox compatibility ------------------------------------------------------------------


async def test_measurement_names_cover_blackbox(target: str) -> None:
    expected = json.loads((FIXTURES / "dns.json").read_text())
    udp_ok = await probe(target)
    nx = await probe(target, query_name="nope.demo.test", valid_rcodes=["NOERROR"])
    tcp_ok = await probe(target, transport_protocol="tcp")
    assert nx.reason is Reason.DNS_RCODE
    assert names(udp_ok) >= set(expected["dns_udp"]["success"])
    assert names(nx) >= set(expected["dns_udp"]["nxdomain"])
    assert names(tcp_ok) >= set(expected["dns_tcp"]["success"])
    helps = {m.name: m.help for m in udp_ok.measurements}
    assert helps["probe_dns_duration_seconds"] == "Duration of DNS request by phase"


# -- DoT and DoH -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def ca_file(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("ca") / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


def server_context(ca: trustme.CA) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "dns.demo.test").configure_cert(ctx)
    return ctx


async def test_dns_over_tls(server: DNSServer, ca: trustme.CA, ca_file: str) -> None:
    port = await server.start_tls(server_context(ca))
    result = await probe(
        f"127.0.0.1:{port}",
        transport_protocol="tcp",
        dns_over_tls=True,
        tls_config={"ca_file": ca_file},
    )
    assert result.reason is Reason.SUCCESS, result.detail
    assert set(result.phases) == {"resolve", "connect", "tls", "request"}
    assert result.tls is not None and result.tls.verified
    assert server.queries[-1].transport == "tls"


async def test_dns_over_tls_untrusted(server: DNSServer, ca: trustme.CA) -> None:
    port = await server.start_tls(server_context(ca))
    result = await probe(f"127.0.0.1:{port}", transport_protocol="tcp", dns_over_tls=True)
    assert result.reason is Reason.TLS_UNTRUSTED, result.detail
    assert metric(result, "probe_dns_query_succeeded") == 0


@pytest.fixture
async def doh_port(server: DNSServer, ca: trustme.CA) -> AsyncIterator[int]:
    app = web.Application()
    app.router.add_route("*", "/dns-query", server.doh_handler())
    app.router.add_route("*", "/custom", server.doh_handler())
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_context(ca))
    await site.start()
    yield int(runner.addresses[0][1])
    await server.close()
    await runner.cleanup()


async def test_dns_over_https(doh_port: int, ca_file: str, server: DNSServer) -> None:
    result = await probe(
        f"127.0.0.1:{doh_port}", transport_protocol="https", tls_config={"ca_file": ca_file}
    )
    assert result.reason is Reason.SUCCESS, result.detail
    assert metric(result, "probe_dns_answer_rrs") == 2
    assert set(result.phases) == {"resolve", "connect", "tls", "request"}
    assert server.queries[-1].transport == "https"


async def test_dns_over_https_url_and_status(doh_port: int, ca_file: str) -> None:
    by_url = await probe(
        f"https://127.0.0.1:{doh_port}/custom",
        transport_protocol="https",
        tls_config={"ca_file": ca_file},
    )
    assert by_url.reason is Reason.SUCCESS, by_url.detail
    missing = await probe(
        f"127.0.0.1:{doh_port}",
        transport_protocol="https",
        doh_path="/nothing-here",
        tls_config={"ca_file": ca_file},
    )
    assert missing.reason is Reason.HTTP_STATUS
    assert "404" in missing.detail


async def test_dns_over_https_untrusted(doh_port: int) -> None:
    result = await probe(f"127.0.0.1:{doh_port}", transport_protocol="https")
    assert result.reason is Reason.TLS_UNTRUSTED


# -- an independent server: dnsmasq ----------------------------------------------------------

DNSMASQ = shutil.which("dnsmasq") or (
    "/usr/sbin/dnsmasq" if Path("/usr/sbin/dnsmasq").exists() else None
)


def free_port() -> int:
    # dnsmasq binds UDP and TCP on one number; a just-freed UDP+TCP pair is the best we can do
    for _ in range(20):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp, socket.socket() as tcp:
            udp.bind(("127.0.0.1", 0))
            port = int(udp.getsockname()[1])
            try:
                tcp.bind(("127.0.0.1", port))
            except OSError:
                continue  # that number is taken over TCP: draw another
            return port
    raise AssertionError("no port free over both UDP and TCP in 20 draws")


async def _start_dnsmasq(port: int) -> asyncio.subprocess.Process | None:
    """dnsmasq on ``port``; None if the port was taken meanwhile (the caller retries)."""
    assert DNSMASQ is not None
    proc = await asyncio.create_subprocess_exec(
        DNSMASQ,
        "--no-daemon",
        "--conf-file=/dev/null",
        "--no-resolv",
        "--no-hosts",
        "--address=/test.example/127.0.0.5",
        f"--port={port}",
        "--listen-address=127.0.0.1",
        "--bind-interfaces",
        "--log-facility=-",
        "--pid-file=",
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        env={},
    )
    assert proc.stderr is not None
    async with asyncio.timeout(10):
        # dnsmasq logs "started" once its sockets are bound
        while b"started" not in (line := await proc.stderr.readline()):
            if not line:
                await proc.wait()
                return None  # e.g. "Address already in use": another process won the race
    return proc


@pytest.fixture
async def dnsmasq() -> AsyncIterator[str]:
    if DNSMASQ is None:
        pytest.skip("dnsmasq is not installed (Debian package dnsmasq-base)")
    proc = None
    for _ in range(5):  # a just-freed port can be taken again before dnsmasq binds it
        port = free_port()
        proc = await _start_dnsmasq(port)
        if proc is not None:
            break
    assert proc is not None, "dnsmasq did not start on any of 5 free ports"
    try:
        yield f"127.0.0.1:{port}"
    finally:
        if proc.returncode is None:
            proc.kill()
        async with asyncio.timeout(10):
            await proc.wait()


async def test_against_dnsmasq(dnsmasq: str) -> None:
    result = await probe(
        dnsmasq,
        query_name="www.test.example",
        validate_answer_rrs={"fail_if_not_matches_regexp": [r"\tA\t127\.0\.0\.5$"]},
    )
    assert result.reason is Reason.SUCCESS, result.detail
    assert metric(result, "probe_dns_answer_rrs") == 1
    over_tcp = await probe(dnsmasq, query_name="www.test.example", transport_protocol="tcp")
    assert over_tcp.reason is Reason.SUCCESS, over_tcp.detail
    # dnsmasq with no upstream refuses what it does not know
    unknown = await probe(dnsmasq, query_name="www.elsewhere.example")
    assert unknown.reason is Reason.DNS_RCODE


async def test_the_reader_walks_dnsmasq_answers_as_dnspython_reads_them(dnsmasq: str) -> None:
    for qname, qtype in (
        ("www.test.example", "A"),
        ("WWW.Test.Example", "A"),
        ("www.test.example", "AAAA"),
        ("www.test.example", "MX"),
        ("www.elsewhere.example", "A"),  # REFUSED
    ):
        plain = await ask_udp(dnsmasq, qname, qtype, edns=False)
        assert walked(plain), (qname, qtype)
        assert read(plain) == reference(plain), (qname, qtype)
        # to an EDNS query dnsmasq may add an Extended DNS Error option, which the walk
        # leaves to dnspython (the probe's queries carry no EDNS)
        with_edns = await ask_udp(dnsmasq, qname, qtype, edns=True)
        assert read(with_edns) == reference(with_edns), (qname, qtype)
