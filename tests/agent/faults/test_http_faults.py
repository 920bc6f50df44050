"""http_fault with real requests: seismo's HTTP probe in the client namespace asks the demo
app in the server namespace (the fault's target: requests arriving at its port)."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import pytest

from agent.faults.engine import FaultEngine, FaultInvalid
from agent.faults.kinds.base import table_name
from agent.faults.ledger import Ledger
from agent.faults.proxy import abort_response, parse_head
from agent.faults.settings import FaultSettings
from agent.faults.steps import MARKER_PREFIX, find_marked
from agent.faults.targets import TargetResolver
from tests.agent.faults.conftest import EngineFactory, Hosts
from tests.agent.faults.netcheck import HTTP, assert_clean, probe, seismo_tables

PORT = 8080
COUNT = 60

#: one kept-alive connection, many requests: the statuses it got
_KEEPALIVE = r"""
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
statuses = []
for _ in range(int(sys.argv[3])):
    s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    data = b""
    while b"\r\n\r\n" not in data:
        data += s.recv(4096)
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split()[1])
    statuses.append(status)
    lines = head.lower().split(b"\r\n")
    length = int([l.split(b":")[1] for l in lines if l.startswith(b"content-length")][0])
    while len(body) < length:
        body += s.recv(4096)
    if status != 200:
        break
print(",".join(map(str, statuses)))
"""


async def _apply(
    hosts: Hosts, make_engine: EngineFactory, **params: Any
) -> tuple[FaultEngine, str]:
    engine = make_engine([hosts.client_target, hosts.server_target])
    entry = await engine.apply("http_fault", hosts.server_target, {"port": PORT, **params}, ttl=60)
    assert entry.facts["mode"] == "proxy"
    return engine, entry.id


async def _probes(hosts: Hosts, count: int) -> list[dict[str, Any]]:
    url = f"http://{hosts.server_ip}:{PORT}/"
    return await probe(hosts.client, HTTP, url, timeout=3, count=count, concurrency=10)


def _gone(hosts: Hosts, fault_id: str) -> None:
    assert_clean(hosts.client, hosts.server)
    assert find_marked(MARKER_PREFIX + fault_id) == []


async def test_503_for_half_then_all_of_the_requests(
    hosts: Hosts, make_engine: EngineFactory
) -> None:
    await hosts.serve_http(PORT)
    assert {r["reason"] for r in await _probes(hosts, 5)} == {"success"}

    engine, fault = await _apply(hosts, make_engine, status=503, percent=50)
    results = await _probes(hosts, COUNT)
    reasons = [r["reason"] for r in results]
    failed = reasons.count("http_status")
    assert failed + reasons.count("success") == COUNT, reasons
    assert 0.25 * COUNT <= failed <= 0.75 * COUNT, failed
    codes = {r["metrics"]["probe_http_status_code"] for r in results}
    assert codes == {200, 503}
    await engine.revert(fault, "rollback")
    _gone(hosts, fault)

    engine, fault = await _apply(hosts, make_engine, status=503)
    assert {r["reason"] for r in await _probes(hosts, 10)} == {"http_status"}
    await engine.revert(fault, "rollback")
    assert {r["reason"] for r in await _probes(hosts, 5)} == {"success"}
    _gone(hosts, fault)


async def test_delay_grows_the_processing_phase(hosts: Hosts, make_engine: EngineFactory) -> None:
    await hosts.serve_http(PORT)
    engine, fault = await _apply(hosts, make_engine, delay_ms=300)
    results = await _probes(hosts, 5)
    assert {r["reason"] for r in results} == {"success"}
    assert all(0.3 <= r["phases"]["processing"] < 1.5 for r in results), results
    assert all(r["phases"]["connect"] < 0.15 for r in results), results  # not the connect
    await engine.revert(fault, "rollback")
    results = await _probes(hosts, 5)
    assert all(r["phases"]["processing"] < 0.15 for r in results), results
    _gone(hosts, fault)


async def test_kept_alive_connections_are_faulted_per_request(
    hosts: Hosts, make_engine: EngineFactory
) -> None:
    await hosts.serve_http(PORT)
    engine, fault = await _apply(hosts, make_engine, status=500, percent=10)
    proc = await asyncio.create_subprocess_exec(
        "ip", "netns", "exec", hosts.client, sys.executable, "-c", _KEEPALIVE,
        hosts.server_ip, str(PORT), "200",
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    async with asyncio.timeout(30):
        out, _ = await proc.communicate()
    statuses = [int(s) for s in out.decode().strip().split(",")]
    # 200s relayed on one connection until the first injected 500 (chance of none: 0.9^200)
    assert statuses[-1] == 500 and set(statuses[:-1]) <= {200}, statuses
    await engine.revert(fault, "rollback")
    _gone(hosts, fault)


async def test_reconcile_kills_an_orphaned_proxy(
    hosts: Hosts, make_engine: EngineFactory, tmp_path: Path
) -> None:
    await hosts.serve_http(PORT)
    crashed, fault = await _apply(hosts, make_engine, status=503)
    assert len(find_marked(MARKER_PREFIX + fault)) == 1
    # the agent died and its ledger is gone too: only the tags (table name, marker) are left
    allowed = [hosts.client_target, hosts.server_target]
    fresh = FaultEngine(
        Ledger(tmp_path / "fresh" / "ledger.jsonl"),
        TargetResolver(allowed),
        FaultSettings(allowed_targets=allowed),
        crashed.caps,
        crashed.kinds(),
    )
    await fresh.reconcile()
    assert find_marked(MARKER_PREFIX + fault) == []
    assert seismo_tables(hosts.server) == []
    assert not any(table_name(fault) in t for t in seismo_tables(hosts.server))
    assert {r["reason"] for r in await _probes(hosts, 5)} == {"success"}


@pytest.mark.parametrize(
    ("params", "problem"),
    [
        ({"port": PORT}, "needs a status"),
        ({"port": PORT, "status": 99}, "status"),
        ({"port": PORT, "status": 600}, "status"),
        ({"port": PORT, "status": 503, "percent": 150}, "percent"),
        ({"port": PORT, "status": 503, "percent": 0}, "percent"),
        ({"port": 0, "status": 503}, "port"),
        ({"port": PORT, "delay_ms": -1}, "delay_ms"),
    ],
)
async def test_http_bad_params_apply_nothing(
    hosts: Hosts,
    make_engine: EngineFactory,
    params: dict[str, Any],
    problem: str,
) -> None:
    engine = make_engine([hosts.server_target])
    with pytest.raises(FaultInvalid, match=problem):
        await engine.apply("http_fault", hosts.server_target, params, ttl=60)
    assert engine.active() == []
    assert_clean(hosts.server)


def test_request_heads_are_framed() -> None:
    head = parse_head(b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 12\r\n\r\n")
    assert (head.method, head.content_length, head.opaque, head.keep_alive) == (
        "POST", 12, False, True,
    )  # fmt: skip
    assert parse_head(b"GET / HTTP/1.0\r\n\r\n").keep_alive is False
    chunked = parse_head(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n")
    assert chunked.opaque
    assert abort_response(503, "seismo-fault=x").startswith(b"HTTP/1.1 503 Service Unavailable")
