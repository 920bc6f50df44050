"""dns_fault with real queries: seismo's DNS probe in the client namespace asks a real DNS
server (agent.dnsserver) in the server namespace, through the fault."""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import pytest

from agent.faults.engine import FaultEngine, FaultInvalid
from agent.faults.steps import MARKER_PREFIX, find_marked
from tests.agent.faults.conftest import EngineFactory, Hosts
from tests.agent.faults.netcheck import assert_clean, probe

REAL = "10.0.0.7"
WRONG = "10.9.9.9"

_UPSTREAM = r"""
import asyncio, sys
from agent.dnsserver import DNSServer, Zone

async def main():
    zone = Zone.from_dict("demo.test.", {"www": [("A", "10.0.0.7")], "api": [("A", "10.0.0.8")]})
    server = DNSServer(zone)
    await server.start(sys.argv[1], 53)
    print("ready", flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


async def _serve_dns(hosts: Hosts) -> None:
    proc = hosts.spawn(hosts.server, sys.executable, "-c", _UPSTREAM, hosts.server_ip)
    assert proc.stdout is not None
    line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 15)
    assert line.strip() == b"ready", line


def _module(name: str, expect: str | None = None, transport: str = "udp") -> dict[str, Any]:
    dns: dict[str, Any] = {
        "query_name": name,
        "query_type": "A",
        "transport_protocol": transport,
        "preferred_ip_protocol": "ip4",
    }
    if expect is not None:
        dns["validate_answer_rrs"] = {"fail_if_none_matches_regexp": [expect.replace(".", r"\.")]}
    return {"prober": "dns", "dns": dns}


async def _reason(hosts: Hosts, module: dict[str, Any], timeout: float = 2) -> str:
    (result,) = await probe(hosts.client, module, f"{hosts.server_ip}:53", timeout=timeout)
    return str(result["reason"])


async def _apply(
    hosts: Hosts, make_engine: EngineFactory, **params: Any
) -> tuple[FaultEngine, str]:
    engine = make_engine([hosts.client_target, hosts.server_target])
    entry = await engine.apply(
        "dns_fault", hosts.client_target, {"upstream": hosts.server_ip, **params}, ttl=60
    )
    assert entry.facts["mode"] == "proxy"
    return engine, entry.id


async def test_nxdomain_for_one_name_others_still_resolve(
    hosts: Hosts, make_engine: EngineFactory
) -> None:
    await _serve_dns(hosts)
    www = _module("www.demo.test", REAL)
    assert await _reason(hosts, www) == "success"

    engine, fault = await _apply(hosts, make_engine, names=["www.demo.test"], action="nxdomain")
    assert await _reason(hosts, www) == "dns_rcode"  # valid_rcodes: NOERROR
    assert await _reason(hosts, _module("www.demo.test", REAL, "tcp")) == "dns_rcode"
    assert await _reason(hosts, _module("api.demo.test", "10.0.0.8")) == "success"  # forwarded

    await engine.revert(fault, "rollback")
    assert await _reason(hosts, www) == "success"
    assert_clean(hosts.client, hosts.server)
    assert find_marked(MARKER_PREFIX + fault) == []


async def test_timeout_for_a_subtree(hosts: Hosts, make_engine: EngineFactory) -> None:
    await _serve_dns(hosts)
    engine, fault = await _apply(hosts, make_engine, names=["*.demo.test"], action="timeout")
    assert await _reason(hosts, _module("www.demo.test"), timeout=1) == "timeout"
    assert await _reason(hosts, _module("demo.test"), timeout=1) == "timeout"  # apex included
    # a name outside the subtree is forwarded: the real server refuses it (not its zone)
    refused = _module("www.other.test")
    refused["dns"]["valid_rcodes"] = ["REFUSED"]
    assert await _reason(hosts, refused) == "success"
    await engine.revert(fault, "rollback")
    assert await _reason(hosts, _module("www.demo.test", REAL)) == "success"
    assert_clean(hosts.client)


async def test_servfail_and_wrong_answer(hosts: Hosts, make_engine: EngineFactory) -> None:
    await _serve_dns(hosts)
    engine, fault = await _apply(
        hosts, make_engine, names=["www.demo.test"], action="answer", answer=WRONG
    )
    assert await _reason(hosts, _module("www.demo.test", REAL)) == "dns_answer_mismatch"
    assert await _reason(hosts, _module("www.demo.test", WRONG)) == "success"
    await engine.revert(fault, "rollback")

    engine, fault = await _apply(hosts, make_engine, names=["api.demo.test"], action="servfail")
    assert await _reason(hosts, _module("api.demo.test")) == "dns_rcode"
    await engine.revert(fault, "rollback")
    assert await _reason(hosts, _module("www.demo.test", REAL)) == "success"
    assert_clean(hosts.client)


@pytest.mark.parametrize(
    ("params", "problem"),
    [
        ({"upstream": "resolver", "names": ["a.test"], "action": "nxdomain"}, "not an IP"),
        ({"upstream": "10.0.0.1:0", "names": ["a.test"], "action": "nxdomain"}, "port"),
        ({"upstream": "10.0.0.1", "names": [], "action": "nxdomain"}, "names"),
        ({"upstream": "10.0.0.1", "names": ["a.*.test"], "action": "nxdomain"}, "suffix"),
        ({"upstream": "10.0.0.1", "names": ["a.test"], "action": "answer"}, "needs answer"),
        (
            {"upstream": "10.0.0.1", "names": ["a.test"], "action": "answer", "answer": "x"},
            "not an IP address",
        ),
        (
            {
                "upstream": "10.0.0.1",
                "names": ["a.test"],
                "action": "servfail",
                "answer": "1.1.1.1",
            },
            "only for action answer",
        ),
        ({"upstream": "10.0.0.1", "names": ["a.test"], "action": "explode"}, "action"),
    ],
)
async def test_dns_bad_params_apply_nothing(
    hosts: Hosts,
    make_engine: EngineFactory,
    params: dict[str, Any],
    problem: str,
) -> None:
    engine = make_engine([hosts.client_target])
    with pytest.raises(FaultInvalid, match=problem):
        await engine.apply("dns_fault", hosts.client_target, params, ttl=60)
    assert engine.active() == []
    assert_clean(hosts.client)
