"""network_latency with real traffic between two namespaces, measured by seismo's HTTP probe.

This kernel has no netem, so the fault runs in proxy mode (the userspace delay line); the
netem plan is checked as data.
"""

from __future__ import annotations

import statistics
from typing import Any

import pytest

from agent.faults.engine import FaultEngine, FaultInvalid, FaultRefused
from agent.faults.kinds.latency import Latency, LatencyParams
from agent.faults.preflight import Capabilities
from agent.faults.steps import MARKER_PREFIX, Run, find_marked
from agent.faults.targets import Target
from tests.agent.faults.conftest import EngineFactory, Hosts, sh
from tests.agent.faults.netcheck import HTTP, assert_clean, probe

PORT = 8080
OTHER_PORT = 8081
DELAY = 0.2


def _engine(make_engine: EngineFactory, hosts: Hosts) -> FaultEngine:
    engine = make_engine([hosts.client_target, hosts.server_target])
    return engine


async def _phases(hosts: Hosts, port: int, count: int = 6) -> dict[str, float]:
    """Median of each HTTP phase over ``count`` successful probes from the client."""
    url = f"http://{hosts.server_ip}:{port}/"
    results = await probe(hosts.client, HTTP, url, timeout=3, count=count)
    assert [r["reason"] for r in results] == ["success"] * count, results
    return {
        phase: statistics.median(r["phases"][phase] for r in results)
        for phase in ("connect", "processing")
    }


def _assert_gone(hosts: Hosts, fault_id: str) -> None:
    assert_clean(hosts.client, hosts.server)
    assert find_marked(MARKER_PREFIX + fault_id) == []
    links = sh("ip", "-o", "link", "show", netns=hosts.client).stdout
    assert " s5e" not in links, links  # the delay line's TAP device went with it


async def test_latency_proxy_adds_delay_in_connect_phase(
    hosts: Hosts, make_engine: EngineFactory
) -> None:
    await hosts.serve_http(PORT)
    await hosts.serve_http(OTHER_PORT)
    engine = _engine(make_engine, hosts)
    before = await _phases(hosts, PORT)

    entry = await engine.apply(
        "network_latency",
        hosts.client_target,
        {"delay_ms": int(DELAY * 1000), "port": PORT, "protocol": "tcp"},
        ttl=60,
    )
    assert entry.facts["mode"] == "proxy"  # no netem on this kernel
    assert entry.params["interface"] == hosts.client_if  # found in the target
    during = await _phases(hosts, PORT)
    added_connect = during["connect"] - before["connect"]
    added_processing = during["processing"] - before["processing"]
    # the SYN waits DELAY, then the request waits DELAY again (egress delay, as netem)
    assert DELAY * 0.9 <= added_connect <= DELAY * 2, (before, during)
    assert DELAY * 0.9 <= added_processing <= DELAY * 2, (before, during)
    other = await _phases(hosts, OTHER_PORT)
    assert other["connect"] < DELAY / 2, other  # another port is not delayed

    await engine.revert(entry.id, "rollback")
    after = await _phases(hosts, PORT)
    assert after["connect"] < DELAY / 2 and after["processing"] < DELAY / 2, after
    _assert_gone(hosts, entry.id)


async def test_latency_jitter_and_peer_filter(hosts: Hosts, make_engine: EngineFactory) -> None:
    await hosts.serve_http(PORT)
    engine = _engine(make_engine, hosts)
    entry = await engine.apply(
        "network_latency",
        hosts.client_target,
        {"delay_ms": 150, "jitter_ms": 50, "peer": f"{hosts.server_ip}/32"},
        ttl=60,
    )
    url = f"http://{hosts.server_ip}:{PORT}/"
    results = await probe(hosts.client, HTTP, url, timeout=3, count=6)
    connects = [r["phases"]["connect"] for r in results]
    assert all(0.09 <= c <= 0.5 for c in connects), connects  # 150 ± 50 ms, plus slack
    await engine.revert(entry.id, "rollback")
    _assert_gone(hosts, entry.id)


async def test_reconcile_after_crash_removes_the_delay_line(
    hosts: Hosts, make_engine: EngineFactory
) -> None:
    await hosts.serve_http(PORT)
    crashed = make_engine([hosts.client_target, hosts.server_target])
    entry = await crashed.apply(
        "network_latency", hosts.client_target, {"delay_ms": 200, "port": PORT}, ttl=60
    )
    assert len(find_marked(MARKER_PREFIX + entry.id)) == 1
    # the agent is SIGKILLed: its helper lives on (own session); a new agent starts over
    # the same ledger and reconciles
    restarted = _engine(make_engine, hosts)
    reverted = await restarted.reconcile()
    assert [e.id for e in reverted] == [entry.id]
    _assert_gone(hosts, entry.id)
    assert (await _phases(hosts, PORT, count=3))["connect"] < DELAY / 2


@pytest.mark.parametrize(
    ("params", "problem"),
    [
        ({"delay_ms": 0}, "delay_ms"),
        ({"delay_ms": 100, "jitter_ms": 200}, "jitter_ms 200 must not exceed"),
        ({"delay_ms": 100, "peer": "10.0.0.300/8"}, "not an IP address or CIDR"),
        ({"delay_ms": 100, "port": 70000}, "port"),
        ({"delay_ms": 100, "protocol": "udp"}, "protocol needs a port"),
        ({"delay_ms": 100, "interface": "bad name!"}, "not an interface name"),
        ({"delay_ms": 100, "interface": "eth9"}, "'eth9' does not exist in"),
    ],
)
async def test_latency_bad_params_apply_nothing(
    hosts: Hosts,
    make_engine: EngineFactory,
    params: dict[str, Any],
    problem: str,
) -> None:
    engine = _engine(make_engine, hosts)
    with pytest.raises(FaultInvalid, match=problem):
        await engine.apply("network_latency", hosts.client_target, params, ttl=60)
    assert engine.active() == []
    assert_clean(hosts.client)


async def test_forcing_netem_without_netem_is_refused(
    hosts: Hosts, make_engine: EngineFactory
) -> None:
    engine = _engine(make_engine, hosts)
    if engine.caps.has("netem"):
        pytest.skip("this kernel has netem")
    with pytest.raises(FaultRefused, match="no netem qdisc"):
        await engine.apply(
            "network_latency", hosts.client_target, {"delay_ms": 100, "mode": "netem"}, ttl=60
        )
    assert_clean(hosts.client)


def test_netem_plan_is_a_root_qdisc_and_its_exact_inverse() -> None:
    target = Target("netns:x", "netns", "x", "/run/netns/x")
    caps = Capabilities(frozenset({"root", "nsenter", "netem", "nftables"}))
    kind = Latency()
    plan = kind.plan(
        "f1", LatencyParams(delay_ms=300, jitter_ms=20, interface="eth0"), target, caps
    )
    assert plan.facts["mode"] == "netem"
    assert [s.argv for s in plan.apply if isinstance(s, Run)] == [
        ("tc", "qdisc", "add", "dev", "eth0", "root", "handle", "5e15:",
         "netem", "delay", "300ms", "20ms"),
    ]  # fmt: skip
    assert [s.argv for s in plan.revert if isinstance(s, Run)] == [
        ("tc", "qdisc", "del", "dev", "eth0", "root", "handle", "5e15:")
    ]
    filtered = kind.plan(
        "f1", LatencyParams(delay_ms=300, peer="10.0.0.0/8", port=443, interface="eth0"),
        target, caps,
    )  # fmt: skip
    argvs = [s.argv for s in filtered.apply if isinstance(s, Run)]
    assert argvs[0][-3:] == ("prio", "bands", "4")
    assert (
        all("flowid" in a for a in argvs[2:]) and len(argvs[2:]) == 4
    )  # (tcp, udp) x (dport, sport)
    assert filtered.revert == plan.revert
