"""The lean /probe front (agent.front) in a real agent, over real loopback sockets.

The front must be invisible from outside: what it serves looks like aiohttp's answer, and
what it hands over gets aiohttp's answer byte for byte. Several tests compare the agent's
port with a bare aiohttp listener on the same ``web.Server`` (what ``web.TCPSite`` was).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest

import agent.front
from agent import server
from agent.daemon import Agent
from agent.front import Front, ProbeHead, parse_head
from agent.server import ProbeQueryError, probe_request
from probes import Module
from tests.agent.conftest import (
    RunningAgent,
    Target,
    serve_demo_target,
    serve_hanging_target,
    start_agent,
)
from tests.waiting import until

CONFIG = """
agent: {watch_config: false}
modules:
  http_2xx:
    prober: http
    timeout: 30s
    http: {preferred_ip_protocol: ip4}
  tcp_connect:
    prober: tcp
"""


@dataclass
class Reply:
    status: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes

    def header(self, name: bytes) -> bytes | None:
        return next((v for k, v in self.headers if k.lower() == name.lower()), None)

    @property
    def names(self) -> list[bytes]:
        return [k for k, _ in self.headers]


async def read_reply(reader: asyncio.StreamReader) -> Reply:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 15)
    status, *lines = head[:-4].split(b"\r\n")
    headers = [(k, v) for k, _, v in (line.partition(b": ") for line in lines)]
    reply = Reply(status, headers, b"")
    length = reply.header(b"Content-Length")
    assert length is not None, head
    reply.body = await asyncio.wait_for(reader.readexactly(int(length)), 15)
    return reply


async def at_eof(reader: asyncio.StreamReader) -> bool:
    """True once the server has closed the connection (nothing more to read)."""
    try:
        return await asyncio.wait_for(reader.read(1), 15) == b""
    except ConnectionResetError:
        return True


@contextlib.asynccontextmanager
async def connection(port: int) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


def probe_get(
    target: str, *, version: str = "1.1", headers: bytes = b"", query: str | None = None
) -> bytes:
    query = query if query is not None else urlencode({"module": "http_2xx", "target": target})
    host = b"Host: 127.0.0.1\r\n" if version == "1.1" else b""
    return f"GET /probe?{query} HTTP/{version}\r\n".encode() + host + headers + b"\r\n"


def without_date(raw: bytes) -> bytes:
    return re.sub(rb"\r\nDate: [^\r]*", b"", raw)


def front_of(a: RunningAgent) -> Front:
    assert a.agent.front is not None
    return a.agent.front


@contextlib.asynccontextmanager
async def agent_with_config(tmp_path: Path) -> AsyncIterator[RunningAgent]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    cfg = tmp_path / "agent.yaml"
    cfg.write_text(CONFIG)
    async with start_agent(cfg, tmp_path / "data") as a:
        yield a


@contextlib.asynccontextmanager
async def bare_aiohttp(a: RunningAgent) -> AsyncIterator[int]:
    """The agent's own aiohttp server on a second port, with no front (as web.TCPSite did)."""
    loop = asyncio.get_running_loop()
    listener = await loop.create_server(front_of(a).fallback, "127.0.0.1", 0)
    try:
        yield listener.sockets[0].getsockname()[1]
    finally:
        listener.close()


# --- parse_head and probe_request ------------------------------------------------------


def test_parse_head_reads_the_hot_path_shape() -> None:
    head = (
        b"GET /probe?module=http_2xx&target=http%3A%2F%2Fa%2F HTTP/1.1\r\nHost: 127.0.0.1:9115\r\n"
        b"User-Agent: Prometheus/2.51.0\r\nAccept: */*\r\nAccept-Encoding: gzip\r\n"
        b"X-Prometheus-Scrape-Timeout-Seconds:  10 \r\nContent-Length: 0"
    )
    assert parse_head(head) == ProbeHead(
        query="module=http_2xx&target=http%3A%2F%2Fa%2F",
        minor_version=1,
        keep_alive=True,
        scrape_timeout="10",
    )


@pytest.mark.parametrize(
    ("head", "minor", "keep_alive"),
    [
        (b"GET /probe?target=a HTTP/1.1\r\nHost: h", 1, True),
        (b"GET /probe?target=a HTTP/1.1\r\nHost: h\r\nConnection: keep-alive", 1, True),
        (b"GET /probe?target=a HTTP/1.1\r\nHost: h\r\nConnection: Close", 1, False),
        (b"GET /probe?target=a HTTP/1.0", 0, False),
        (b"GET /probe?target=a HTTP/1.0\r\nConnection: close", 0, False),
        (b"GET /probe?target=a HTTP/1.0\r\nconnection: Keep-Alive", 0, True),
    ],
)
def test_parse_head_keep_alive_as_llhttp(head: bytes, minor: int, keep_alive: bool) -> None:
    parsed = parse_head(head)
    assert parsed is not None
    assert (parsed.minor_version, parsed.keep_alive) == (minor, keep_alive)


@pytest.mark.parametrize(
    "head",
    [
        b"get /probe?target=a HTTP/1.1\r\nHost: h",  # method case
        b"HEAD /probe?target=a HTTP/1.1\r\nHost: h",
        b"GET /probe?target=a HTTP/1.1",  # HTTP/1.1 without Host: aiohttp's 400
        b"GET /probe?target=a HTTP/1.2\r\nHost: h",
        b"GET /probe?target=a  HTTP/1.1\r\nHost: h",
        b"GET /probe?target=a HTTP/1.1 \r\nHost: h",
        b"GET /probe?target=a#frag HTTP/1.1\r\nHost: h",
        b"GET /probe?target=a b HTTP/1.1\r\nHost: h",
        b'GET /probe?target="a" HTTP/1.1\r\nHost: h',
        b"GET /probe/?target=a HTTP/1.1\r\nHost: h",
        b"GET /probe?target=\xc3\xa9 HTTP/1.1\r\nHost: h",
        b"GET /probe?target=a HTTP/1.1\r\nHost: h\r\nHost: h",  # any field twice
        b"GET /probe?target=a HTTP/1.1\r\nHost: h\r\nX-A: 1\r\nx-a: 1",
        b"GET /probe?target=a HTTP/1.1\r\nHost: h\r\nContent-Length: 3",
        b"GET /probe?target=a HTTP/1.1\r\nHost: h\r\nContent-Length: 00",
        b"GET /probe?target=a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked",
        b"GET /probe?target=a HTTP/1.1\r\nHost: h\r\nExpect: 100-continue",
        b"GET /probe?target=a HTTP/1.1\r\nHost: h\r\nUpgrade: websocket",
        b"GET /probe?target=a HTTP/1.1\r\nHost: h\r\nConnection: upgrade",
        b"GET /probe?target=a HTTP/1.1\r\nHost: h\r\nConnection: close, keep-alive",
        b"GET /probe?target=a HTTP/1.1\r\nHost: h\r\nConnection: close,",
        b"GET /probe?target=a HTTP/1.1\r\nHost: h\r\nX-A: 1\r\n folded",  # obs-fold
        b"GET /probe?target=a HTTP/1.1\r\nHost: h\r\nX-A : 1",
        b"GET /probe?target=a HTTP/1.1\r\nHost: h\r\nX-A: 1\nX-B: 2",  # bare LF
        b"GET /probe?target=a HTTP/1.1\r\nHost: h\r\nX-A: 1\rX-B: 2",  # bare CR
        b"GET /probe?target=a HTTP/1.1\r\nHost: h\r\nX-A: a\x00b",
        b"GET /probe?target=a HTTP/1.1\r\nHost: h\r\nX-A: caf\xc3\xa9",
        b"GET /probe?target=a HTTP/1.1\r\nHost: h\r\n: novalue",
        b"GET /probe?target=a HTTP/1.1\r\nHost: h\r\n"
        + b"".join(b"X-%d: 1\r\n" % i for i in range(agent.front.MAX_FIELDS))[:-2],
    ],
)
def test_parse_head_leaves_anything_odd_to_aiohttp(head: bytes) -> None:
    assert parse_head(head) is None


def test_probe_request_reads_blackbox_parameters() -> None:
    modules = {
        "http_2xx": Module.model_validate({"prober": "http", "timeout": "5s"}),
        "slow": Module.model_validate({"prober": "http", "timeout": "60s"}),
        "open": Module.model_validate({"prober": "http"}),
    }
    call = probe_request("target=http%3A%2F%2Fa%2F%3Fq%3D1+2&target=second", None, modules)
    assert (call.module_name, call.target, call.timeout, call.debug) == (
        "http_2xx",
        "http://a/?q=1 2",
        5.0,
        False,
    )
    assert probe_request("module=slow&target=a", "10", modules).timeout == 9.5
    assert probe_request("module=open&target=a", None, modules).timeout == 119.5
    assert probe_request("module=open&target=a", "", modules).timeout == 119.5
    assert probe_request("target=a&debug=TRUE", None, modules).debug
    for query, header, message in [
        ("module=nope&target=a", None, "Unknown module 'nope'\n"),
        ("module=http_2xx", None, "Target parameter is missing\n"),
        ("target=", None, "Target parameter is missing\n"),
        ("target=a", "soon", "Failed to parse timeout from Prometheus header: 'soon'\n"),
    ]:
        with pytest.raises(ProbeQueryError) as info:
            probe_request(query, header, modules)
        assert str(info.value) == message


def test_public_surface() -> None:
    assert sorted(agent.front.__all__) == [
        "Front",
        "HEAD_LIMIT",
        "IDLE_TIMEOUT",
        "ProbeHead",
        "parse_head",
    ]
    assert sorted(server.__all__) == [
        "AGENT",
        "ProbeQueryError",
        "ProbeRequest",
        "SCRAPE_TIMEOUT_HEADER",
        "bound_port",
        "build_app",
        "probe_request",
    ]


# --- the fast path ------------------------------------------------------------------------


async def test_probe_is_served_by_the_front_as_aiohttp_would(
    tmp_path: Path, http_target: Target
) -> None:
    async with agent_with_config(tmp_path) as a, bare_aiohttp(a) as bare:
        front = front_of(a)
        replies = {}
        for port in (a.agent.port, bare):
            async with connection(port) as (reader, writer):
                writer.write(probe_get(http_target.url))
                replies[port] = await read_reply(reader)
        assert (front.served, front.handed_over) == (1, 0)  # the bare port is aiohttp alone
    ours, theirs = replies[a.agent.port], replies[bare]
    assert ours.status == theirs.status == b"HTTP/1.1 200 OK"
    assert ours.names == theirs.names == [b"Content-Type", b"Content-Length", b"Date", b"Server"]
    for name in (b"Content-Type", b"Server"):
        assert ours.header(name) == theirs.header(name)
    assert ours.header(b"Content-Type") == b"text/plain; version=0.0.4; charset=utf-8"
    assert re.fullmatch(rb"\w{3}, \d\d \w{3} \d{4} \d\d:\d\d:\d\d GMT", ours.header(b"Date") or b"")
    assert b"probe_success 1\n" in ours.body
    names = re.compile(rb"^(\w+)", re.M)
    assert set(names.findall(ours.body)) == set(names.findall(theirs.body))


async def test_keep_alive_serves_several_probes_on_one_connection(
    tmp_path: Path, http_target: Target
) -> None:
    async with agent_with_config(tmp_path) as a, connection(a.agent.port) as (reader, writer):
        front = front_of(a)
        for _ in range(3):
            writer.write(probe_get(http_target.url))
            reply = await read_reply(reader)
            assert reply.status == b"HTTP/1.1 200 OK" and reply.header(b"Connection") is None
            assert b"probe_success 1\n" in reply.body
        assert (front.served, front.handed_over, front.connections) == (3, 0, 1)


@pytest.mark.parametrize(
    ("version", "headers", "connection_header", "closes"),
    [
        ("1.1", b"Connection: close\r\n", b"close", True),
        ("1.0", b"", None, True),
        ("1.0", b"Connection: keep-alive\r\n", b"keep-alive", False),
    ],
)
async def test_connection_close_and_http_1_0(
    tmp_path: Path,
    http_target: Target,
    version: str,
    headers: bytes,
    connection_header: bytes | None,
    closes: bool,
) -> None:
    async with agent_with_config(tmp_path) as a, bare_aiohttp(a) as bare:
        for port in (a.agent.port, bare):
            async with connection(port) as (reader, writer):
                writer.write(probe_get(http_target.url, version=version, headers=headers))
                reply = await read_reply(reader)
                assert reply.status == f"HTTP/{version} 200 OK".encode()
                assert reply.header(b"Connection") == connection_header
                assert b"probe_success 1\n" in reply.body
                if closes:
                    assert await at_eof(reader)
                else:  # still open: a second probe on it
                    writer.write(probe_get(http_target.url, version=version, headers=headers))
                    assert (await read_reply(reader)).status == reply.status
        front = front_of(a)
        assert front.served == (1 if closes else 2)


async def test_pipelined_requests_are_answered_in_order(
    tmp_path: Path, http_target: Target
) -> None:
    async with agent_with_config(tmp_path) as a, connection(a.agent.port) as (reader, writer):
        front = front_of(a)
        bad = probe_get(http_target.url, query="module=nope&target=x")
        writer.write(probe_get(http_target.url) * 3 + b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n")
        writer.write(probe_get(http_target.url) + bad)
        replies = [await read_reply(reader) for _ in range(6)]
        assert [r.status for r in replies] == [b"HTTP/1.1 200 OK"] * 5 + [
            b"HTTP/1.1 400 Bad Request"
        ]
        assert all(b"probe_success 1\n" in r.body for r in replies[:3] + replies[4:5])
        assert replies[3].body == b"ok\n"
        assert replies[5].body == b"Unknown module 'nope'\n"
        # the first three by the front; from /healthz on, aiohttp owns the connection
        assert (front.served, front.handed_over) == (3, 1)


async def test_head_arriving_in_pieces_is_still_served_by_the_front(
    tmp_path: Path, http_target: Target
) -> None:
    async with agent_with_config(tmp_path) as a, connection(a.agent.port) as (reader, writer):
        request = probe_get(http_target.url)
        for i in range(0, len(request), 7):
            writer.write(request[i : i + 7])
            await writer.drain()
            await asyncio.sleep(0)  # give the agent a chance to read each piece on its own
        reply = await read_reply(reader)
        assert reply.status == b"HTTP/1.1 200 OK" and b"probe_success 1\n" in reply.body
        assert (front_of(a).served, front_of(a).handed_over) == (1, 0)


# --- handover to aiohttp --------------------------------------------------------------------


async def test_other_paths_are_handed_over_on_a_fresh_and_on_a_used_connection(
    tmp_path: Path, http_target: Target
) -> None:
    async with agent_with_config(tmp_path) as a:
        front = front_of(a)
        async with connection(a.agent.port) as (reader, writer):
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n")
            assert (await read_reply(reader)).body == b"ok\n"
        assert (front.served, front.handed_over) == (0, 1)
        async with connection(a.agent.port) as (reader, writer):
            writer.write(probe_get(http_target.url))
            assert b"probe_success 1\n" in (await read_reply(reader)).body
            assert (front.served, front.handed_over) == (1, 1)
            writer.write(b"GET /readyz HTTP/1.1\r\nHost: a\r\n\r\n")
            assert (await read_reply(reader)).body == b"ready\n"
            assert front.handed_over == 2
            # aiohttp owns this connection now, /probe included
            writer.write(probe_get(http_target.url))
            assert b"probe_success 1\n" in (await read_reply(reader)).body
            writer.write(b"GET /metrics HTTP/1.1\r\nHost: a\r\n\r\n")
            assert b"seismo_config_last_reload_successful" in (await read_reply(reader)).body
        assert (front.served, front.handed_over) == (1, 2)


ODD_REQUESTS = {
    "malformed request line": b"GET /probe?target=x HTTP/1.1 junk\r\nHost: a\r\n\r\n",
    "garbage": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",
    "unknown module": b"GET /probe?module=nope&target=x HTTP/1.1\r\nHost: a\r\n"
    b"Connection: close\r\n\r\n",
    "missing target": b"GET /probe?module=http_2xx HTTP/1.1\r\nHost: a\r\n"
    b"Connection: close\r\n\r\n",
    "no query": b"GET /probe HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    "bad timeout header": b"GET /probe?target=x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n"
    b"X-Prometheus-Scrape-Timeout-Seconds: soon\r\n\r\n",
    "no Host": b"GET /probe?target=x HTTP/1.1\r\n\r\n",
    "two Hosts": b"GET /probe?target=x HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    "obs-fold": b"GET /probe?target=x HTTP/1.1\r\nHost: a\r\nX-A: 1\r\n 2\r\n\r\n",
    "unknown path": b"GET /nope HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    "POST with a body": b"POST /probe?module=nope&target=x HTTP/1.1\r\nHost: a\r\n"
    b"Content-Length: 5\r\nConnection: close\r\n\r\nhello",
    "chunked GET": b"GET /probe?module=nope&target=x HTTP/1.1\r\nHost: a\r\n"
    b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n0\r\n\r\n",
}


@pytest.mark.parametrize("name", ODD_REQUESTS)
async def test_odd_requests_get_exactly_aiohttps_answer(tmp_path: Path, name: str) -> None:
    request = ODD_REQUESTS[name]
    async with agent_with_config(tmp_path) as a, bare_aiohttp(a) as bare:
        answers = []
        for port in (a.agent.port, bare):
            async with connection(port) as (reader, writer):
                writer.write(request)
                answers.append(without_date(await asyncio.wait_for(reader.read(), 15)))
        front = front_of(a)
        assert (front.served, front.handed_over) == (0, 1)
    assert answers[0] == answers[1]
    assert answers[0].startswith((b"HTTP/1.1 4", b"HTTP/1.0 4"))


async def test_a_probe_with_a_body_or_debug_is_aiohttps(
    tmp_path: Path, http_target: Target
) -> None:
    async with agent_with_config(tmp_path) as a, connection(a.agent.port) as (reader, writer):
        writer.write(probe_get(http_target.url, headers=b"Content-Length: 4\r\n") + b"body")
        reply = await read_reply(reader)
        assert reply.status == b"HTTP/1.1 200 OK" and b"probe_success 1\n" in reply.body
        writer.write(probe_get(http_target.url, query=f"target={http_target.url}&debug=true"))
        reply = await read_reply(reader)
        assert reply.body.startswith(b"Logs for the probe:\nmodule=http_2xx")
        assert b"Module configuration:" in reply.body
        assert (front_of(a).served, front_of(a).handed_over) == (0, 1)


async def test_a_head_over_the_cap_goes_to_aiohttp(tmp_path: Path, http_target: Target) -> None:
    padding = b"".join(b"X-Pad-%d: %s\r\n" % (i, b"a" * 500) for i in range(20))
    request = probe_get(http_target.url, headers=padding)
    assert len(request) > agent.front.HEAD_LIMIT
    async with agent_with_config(tmp_path) as a, connection(a.agent.port) as (reader, writer):
        writer.write(request)
        reply = await read_reply(reader)
        assert reply.status == b"HTTP/1.1 200 OK" and b"probe_success 1\n" in reply.body
        assert (front_of(a).served, front_of(a).handed_over) == (0, 1)


# --- failures, disconnects, idle and shutdown -----------------------------------------------


async def test_a_client_leaving_mid_probe_cancels_it(
    tmp_path: Path, hanging_target: Target
) -> None:
    async with agent_with_config(tmp_path) as a:
        front = front_of(a)
        async with connection(a.agent.port) as (_, writer):
            writer.write(probe_get(hanging_target.url))  # 30 s of waiting, unless cancelled
            await until(lambda: front.probes_in_flight == 1, what="the probe to start")
        await until(lambda: front.probes_in_flight == 0, what="the probe to be cancelled")
        assert (front.cancelled, front.served, front.connections) == (1, 0, 0)
        assert not [t for t in asyncio.all_tasks() if "_answer" in repr(t.get_coro())]


async def test_a_bug_in_the_probe_is_aiohttps_500(
    tmp_path: Path, http_target: Target, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(agent.front, "run_probe", broken)
    monkeypatch.setattr(server, "run_probe", broken)
    async with agent_with_config(tmp_path) as a, bare_aiohttp(a) as bare:
        answers = []
        for port in (a.agent.port, bare):
            async with connection(port) as (reader, writer):
                writer.write(probe_get(http_target.url))
                answers.append(without_date(await asyncio.wait_for(reader.read(), 15)))
    assert answers[0] == answers[1]
    assert answers[0].startswith(b"HTTP/1.1 500 Internal Server Error\r\n")


async def test_an_idle_connection_is_closed(tmp_path: Path, http_target: Target) -> None:
    async with agent_with_config(tmp_path) as a:
        front = front_of(a)
        front.idle_timeout = 0.2  # for connections opened from now on
        async with connection(a.agent.port) as (reader, writer):
            writer.write(probe_get(http_target.url))
            assert (await read_reply(reader)).status == b"HTTP/1.1 200 OK"
            assert await at_eof(reader)
        assert front.connections == 0


async def test_shutdown_closes_idle_busy_and_handed_over_connections(
    tmp_path: Path, http_target: Target, hanging_target: Target
) -> None:
    await stop_with_open_connections(tmp_path, http_target, hanging_target)


async def stop_with_open_connections(
    tmp_path: Path, http_target: Target, hanging_target: Target
) -> None:
    tmp_path.mkdir(parents=True, exist_ok=True)
    cfg = tmp_path / "agent.yaml"
    cfg.write_text(CONFIG)
    running = Agent(config_path=cfg, data_dir=tmp_path / "data", listen=("127.0.0.1", 0), env={})
    task = asyncio.create_task(running.run())
    async with contextlib.AsyncExitStack() as stack:
        try:
            await until(lambda: running.ready or task.done())
            front = running.front
            assert front is not None
            idle = await stack.enter_async_context(connection(running.port))
            idle[1].write(probe_get(http_target.url))
            assert (await read_reply(idle[0])).status == b"HTTP/1.1 200 OK"
            handed = await stack.enter_async_context(connection(running.port))
            handed[1].write(b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n")
            assert (await read_reply(handed[0])).body == b"ok\n"
            busy = await stack.enter_async_context(connection(running.port))
            busy[1].write(probe_get(hanging_target.url))
            await until(lambda: front.probes_in_flight == 1, what="the probe to start")
            assert (front.connections, len(front.fallback.connections)) == (2, 1)
        finally:
            running.stop()
            await asyncio.wait_for(task, 15)
        for reader, _ in (idle, handed, busy):
            assert await at_eof(reader)
        assert (front.connections, front.probes_in_flight, front.cancelled) == (0, 0, 1)
        assert front.fallback.connections == []


# --- the same under uvloop (what `seismo agent` runs on) ------------------------------------


def run_on_uvloop(scenario: Callable[[], Coroutine[Any, Any, None]]) -> None:
    uvloop = pytest.importorskip("uvloop")
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(scenario())


def test_on_uvloop(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with serve_demo_target() as target, serve_hanging_target() as hanging:
            async with agent_with_config(tmp_path / "one") as a:
                front = front_of(a)
                async with connection(a.agent.port) as (reader, writer):
                    writer.write(probe_get(target.url) * 2)
                    for _ in range(2):
                        assert b"probe_success 1\n" in (await read_reply(reader)).body
                    writer.write(b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n")
                    assert (await read_reply(reader)).body == b"ok\n"
                assert (front.served, front.handed_over) == (2, 1)
                async with connection(a.agent.port) as (_, writer):
                    writer.write(probe_get(hanging.url))
                    await until(lambda: front.probes_in_flight == 1, what="the probe to start")
                await until(lambda: front.probes_in_flight == 0, what="the probe to be cancelled")
                assert front.cancelled == 1
            await stop_with_open_connections(tmp_path / "two", target, hanging)

    run_on_uvloop(scenario)
