"""Network faults on a real kernel, proven with real traffic between two test namespaces.

Each test applies a fault ONLY inside namespaces the ``hosts`` fixture created, proves it with
seismo's own probes run from the client namespace, reverts it, and proves that traffic is back
to normal and that nothing of seismo's (nftables table, qdisc) is left.
"""

from __future__ import annotations

from typing import Any

import pytest

from agent.faults.engine import FaultEngine, FaultInvalid, FaultRefused
from agent.faults.kinds import all_kinds, network
from agent.faults.kinds.network import (
    BandwidthParams,
    BlackholeParams,
    LossParams,
    RejectParams,
    burst_bytes,
    nft_script,
    rate_bits,
)
from tests.agent.faults.conftest import EngineFactory, Hosts, sh
from tests.agent.faults.netcheck import (
    HTTP,
    TCP,
    assert_clean,
    probe,
    probe_one,
    seismo_qdiscs,
    seismo_tables,
    serve_blob,
)

pytestmark = pytest.mark.netns

PORT_A = 18081
PORT_B = 18082


def _engine(make_engine: EngineFactory, *targets: str) -> FaultEngine:
    engine = make_engine(list(targets))
    return engine


# --- loss -------------------------------------------------------------------------------


async def test_loss_100_percent_times_out_connects_and_revert_restores(
    hosts: Hosts, make_engine: EngineFactory
) -> None:
    await hosts.serve_http(PORT_A)
    url = f"http://{hosts.server_ip}:{PORT_A}/"
    engine = _engine(make_engine, hosts.client_target)
    assert await probe_one(hosts.client, HTTP, url, 2) == "success"

    entry = await engine.apply("network_loss", hosts.client_target, {"percent": 100}, ttl=60)
    assert entry.state == "applied"
    assert seismo_tables(hosts.client) == [f"table inet seismo_{entry.id.replace('-', '_')}"]
    assert await probe_one(hosts.client, HTTP, url, 1) == "connect_timeout"

    reverted = await engine.revert(entry.id, "rollback")
    assert reverted is not None and reverted.state == "reverted"
    assert_clean(hosts.client)
    assert await probe_one(hosts.client, HTTP, url, 2) == "success"
    # reverting again is a no-op, never an error
    again = await engine.revert(entry.id, "rollback")
    assert again is not None and again.state == "reverted"


async def test_loss_30_percent_drops_about_that_share_of_connects(
    hosts: Hosts, make_engine: EngineFactory
) -> None:
    await hosts.serve_http(PORT_A)
    target = f"{hosts.server_ip}:{PORT_A}"
    engine = _engine(make_engine, hosts.client_target)
    # egress only: a connect fails when its SYN is dropped. The probe timeout (0.4 s) is
    # below the kernel's first SYN retransmission (1 s), so one drop is one failed connect.
    params = {"percent": 30, "direction": "egress", "protocol": "tcp", "port": PORT_A}
    entry = await engine.apply("network_loss", hosts.client_target, params, ttl=60)

    results = await probe(hosts.client, TCP, target, timeout=0.4, count=200, concurrency=50)
    reasons = [r["reason"] for r in results]
    assert set(reasons) <= {"success", "connect_timeout"}, set(reasons)
    ratio = reasons.count("connect_timeout") / len(reasons)
    print(f"\nnetwork_loss 30%: {ratio:.1%} of {len(reasons)} connects dropped")
    assert 0.10 <= ratio <= 0.60, ratio

    await engine.revert(entry.id, "rollback")
    assert_clean(hosts.client)
    after = await probe(hosts.client, TCP, target, timeout=2, count=20, concurrency=20)
    assert {r["reason"] for r in after} == {"success"}


# --- blackhole ----------------------------------------------------------------------------


async def test_blackhole_of_port_a_leaves_port_b_working(
    hosts: Hosts, make_engine: EngineFactory
) -> None:
    await hosts.serve_http(PORT_A)
    await hosts.serve_http(PORT_B)
    url_a = f"http://{hosts.server_ip}:{PORT_A}/"
    url_b = f"http://{hosts.server_ip}:{PORT_B}/"
    engine = _engine(make_engine, hosts.client_target)

    entry = await engine.apply(
        "network_blackhole",
        hosts.client_target,
        {"peer": f"{hosts.server_ip}/32", "port": PORT_A},
        ttl=60,
    )
    results = await probe(hosts.client, HTTP, url_a, timeout=1)
    results += await probe(hosts.client, HTTP, url_b, timeout=2)
    assert [r["reason"] for r in results] == ["connect_timeout", "success"]

    await engine.revert(entry.id, "rollback")
    assert_clean(hosts.client)
    assert await probe_one(hosts.client, HTTP, url_a, 2) == "success"


async def test_blackhole_of_everything_needs_all_true(
    hosts: Hosts, make_engine: EngineFactory
) -> None:
    await hosts.serve_http(PORT_A)
    url = f"http://{hosts.server_ip}:{PORT_A}/"
    engine = _engine(make_engine, hosts.server_target)

    with pytest.raises(FaultInvalid, match=r"needs peer and/or port.*all: true"):
        await engine.apply("network_blackhole", hosts.server_target, {}, ttl=60)
    assert seismo_tables(hosts.server) == []

    # on the server, ingress only: the client's SYNs never arrive
    params = {"all": True, "direction": "ingress"}
    entry = await engine.apply("network_blackhole", hosts.server_target, params, ttl=60)
    assert await probe_one(hosts.client, HTTP, url, 1) == "connect_timeout"
    await engine.revert(entry.id, "rollback")
    assert_clean(hosts.server)
    assert await probe_one(hosts.client, HTTP, url, 2) == "success"


# --- reject -------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["reset", "icmp"])
async def test_reject_refuses_connections(
    mode: str, hosts: Hosts, make_engine: EngineFactory
) -> None:
    await hosts.serve_http(PORT_A)
    url = f"http://{hosts.server_ip}:{PORT_A}/"
    engine = _engine(make_engine, hosts.client_target)

    params = {"peer": hosts.server_ip, "port": PORT_A, "mode": mode}
    entry = await engine.apply("network_reject", hosts.client_target, params, ttl=60)
    assert entry.facts["mode"] == mode
    # refused at once: a 5 s budget that a timeout would use up entirely, and a reason
    # that only a refusal gives
    (result,) = await probe(hosts.client, HTTP, url, timeout=5)
    assert result["reason"] == "connect_refused", result

    await engine.revert(entry.id, "rollback")
    assert_clean(hosts.client)
    assert await probe_one(hosts.client, HTTP, url, 2) == "success"


# --- bandwidth ----------------------------------------------------------------------------

CAP = "1mbit"
CAP_BYTES_PER_S = 1_000_000 / 8
BLOB = 256 * 1024


async def _throughput(hosts: Hosts, port: int) -> float:
    """Bytes per second of one HTTP download of BLOB bytes, as seismo's probe timed it."""
    url = f"http://{hosts.server_ip}:{port}/bytes/{BLOB}"
    (result,) = await probe(hosts.client, HTTP, url, timeout=15)
    assert result["reason"] == "success", result
    assert result["metrics"]["probe_http_uncompressed_body_length"] == BLOB
    # the whole exchange: a cap slows the body, and the body dominates
    return BLOB / float(result["duration_seconds"])


async def test_bandwidth_cap_slows_a_transfer_to_about_the_cap(
    hosts: Hosts, make_engine: EngineFactory
) -> None:
    await serve_blob(hosts, PORT_A)
    engine = _engine(make_engine, hosts.server_target)
    before = await _throughput(hosts, PORT_A)

    # tbf shapes what a target sends: cap the server, which sends the download
    entry = await engine.apply("network_bandwidth", hosts.server_target, {"rate": CAP}, ttl=60)
    assert entry.params["interface"] == hosts.server_if  # its only non-loopback interface
    assert entry.facts["rate_bits_per_second"] == 1_000_000
    assert len(seismo_qdiscs(hosts.server)) == 1
    capped = await _throughput(hosts, PORT_A)
    print(
        f"\nnetwork_bandwidth {CAP}: {capped * 8 / 1e6:.3f} Mbit/s under the cap "
        f"({capped / CAP_BYTES_PER_S:.0%} of it); {before * 8 / 1e6:.0f} Mbit/s without"
    )
    # the bucket's 32 KiB burst goes at line rate, so a little above the cap is expected
    assert 0.5 * CAP_BYTES_PER_S <= capped <= 1.5 * CAP_BYTES_PER_S

    await engine.revert(entry.id, "rollback")
    assert_clean(hosts.server)
    after = await _throughput(hosts, PORT_A)
    assert after > 4 * CAP_BYTES_PER_S
    assert before > 4 * CAP_BYTES_PER_S


async def test_bandwidth_checks_the_interface_in_the_target(
    hosts: Hosts, make_engine: EngineFactory
) -> None:
    engine = _engine(make_engine, hosts.server_target)
    with pytest.raises(FaultInvalid, match=r"network_bandwidth: interface: 'eth9' does not exist"):
        await engine.apply(
            "network_bandwidth", hosts.server_target, {"rate": CAP, "interface": "eth9"}, ttl=60
        )
    # a root qdisc that is not seismo's is never replaced (nor deleted by a revert)
    sh(
        "tc", "qdisc", "add", "dev", hosts.server_if, "root", "handle", "1:",
        "tbf", "rate", "10mbit", "burst", "32kb", "latency", "50ms",
        netns=hosts.server,
    )  # fmt: skip
    with pytest.raises(FaultRefused, match=r"already has a root qdisc \(tbf 1:\)"):
        await engine.apply("network_bandwidth", hosts.server_target, {"rate": CAP}, ttl=60)
    shown = sh("tc", "qdisc", "show", "dev", hosts.server_if, netns=hosts.server).stdout
    assert "tbf 1: root" in shown
    assert engine.active() == []
    assert not engine._ledger.path.exists()

    # one cap per interface: a second is refused, and never takes the first one's qdisc away
    sh("tc", "qdisc", "del", "dev", hosts.server_if, "root", netns=hosts.server)
    first = await engine.apply("network_bandwidth", hosts.server_target, {"rate": CAP}, ttl=60)
    with pytest.raises(FaultRefused, match=r"\(tbf 5e15:\) of another seismo fault"):
        await engine.apply("network_bandwidth", hosts.server_target, {"rate": "2mbit"}, ttl=60)
    assert engine.active() == [first]
    assert len(seismo_qdiscs(hosts.server)) == 1


async def test_revert_of_a_fault_whose_namespace_is_gone_succeeds(
    hosts: Hosts, make_engine: EngineFactory
) -> None:
    engine = _engine(make_engine, hosts.client_target, hosts.server_target)
    loss = await engine.apply("network_loss", hosts.client_target, {"percent": 50}, ttl=60)
    cap = await engine.apply("network_bandwidth", hosts.server_target, {"rate": CAP}, ttl=60)
    sh("ip", "netns", "del", hosts.client)
    sh("ip", "netns", "del", hosts.server)
    # the pod went away, and the fault with it: reverted, not stuck forever as "active"
    for entry in (loss, cap):
        reverted = await engine.revert(entry.id, "rollback")
        assert reverted is not None and reverted.state == "reverted"
    assert engine.active() == []


async def test_every_rule_shape_is_accepted_by_the_real_nft(
    hosts: Hosts, make_engine: EngineFactory
) -> None:
    engine = make_engine([hosts.client_target], max_concurrent=20)
    shapes: list[tuple[str, dict[str, Any]]] = [
        ("network_loss", {"percent": 0.5, "peer": "fd00:5e15::/64", "protocol": "udp"}),
        ("network_loss", {"percent": 99.99, "port": 53, "protocol": "udp", "direction": "ingress"}),
        ("network_loss", {"percent": 1, "protocol": "tcp", "direction": "egress"}),
        ("network_blackhole", {"peer": "fd00::1", "port": 443, "protocol": "tcp"}),
        ("network_blackhole", {"all": True}),
        ("network_reject", {"peer": "10.211.0.0/16", "mode": "icmp", "protocol": "any"}),
        ("network_reject", {"port": 53, "protocol": "udp", "mode": "icmp"}),
        ("network_reject", {"peer": "fd00::/8", "direction": "ingress"}),
    ]
    for kind, params in shapes:
        await engine.apply(kind, hosts.client_target, params, ttl=60)
    assert len(seismo_tables(hosts.client)) == len(shapes)
    assert len(await engine.clear()) == len(shapes)
    assert_clean(hosts.client)


# --- parameters (no kernel needed) ------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "params", "message"),
    [
        ("network_loss", {"percent": 150}, "percent: Input should be less than or equal to 100"),
        ("network_loss", {"percent": 0}, "percent: Input should be greater than 0"),
        ("network_loss", {"percent": 33.333}, "percent 33.333 has more than two decimals"),
        ("network_loss", {"percent": 10, "peer": "10.0.0.300"}, "peer: '10.0.0.300' is not"),
        ("network_loss", {"percent": 10, "port": 70000}, "port: Input should be less than"),
        ("network_loss", {"percent": 10, "direction": "up"}, "direction: Input should be"),
        ("network_loss", {"percent": 10, "protocol": "icmp"}, "protocol: Input should be"),
        ("network_loss", {"percent": 10, "pct": 1}, "pct: unknown parameter"),
        ("network_blackhole", {"all": True, "port": 80}, "cannot be combined with peer/port"),
        ("network_reject", {}, "a reject needs peer and/or port"),
        ("network_reject", {"port": 53, "protocol": "udp"}, "mode reset is for tcp"),
        ("network_bandwidth", {"rate": "fast"}, "rate: 'fast' is not a rate"),
        ("network_bandwidth", {"rate": "1kbit"}, "rate 1kbit must be between 8kbit and 100gbit"),
        ("network_bandwidth", {"rate": "1mbit", "burst": "1b"}, "burst 1b must be between"),
        ("network_bandwidth", {"rate": "1mbit", "burst": "lots"}, "burst: 'lots' is not a size"),
        ("network_bandwidth", {"rate": "1mbit", "latency": "1h"}, "latency: '1h' is not a"),
        ("network_bandwidth", {"rate": "1mbit", "interface": "eth0; rm"}, "interface: 'eth0; rm'"),
    ],
)
async def test_bad_parameters_name_the_parameter_and_the_rule(
    kind: str, params: dict[str, Any], message: str, make_engine: EngineFactory
) -> None:
    engine = make_engine(["netns:never-resolved"])
    with pytest.raises(FaultInvalid) as caught:
        await engine.apply(kind, "netns:never-resolved", params, ttl=60)
    assert f"{kind}: " in str(caught.value)
    assert message in str(caught.value), str(caught.value)
    assert not engine._ledger.path.exists()


def test_nft_rules_follow_the_parameters() -> None:
    script = nft_script(
        "seismo_t",
        LossParams(percent=12.5, peer="fd00::/64", port=443, direction="egress"),
        "numgen random mod 10000 < 1250 drop",
    )
    assert "chain input" not in script
    assert 'oifname "lo" accept' in script
    assert "ip6 daddr fd00::/64 meta l4proto { tcp, udp } th dport 443 numgen" in script
    assert "ip6 daddr fd00::/64 meta l4proto { tcp, udp } th sport 443 numgen" in script

    script = nft_script("seismo_t", BlackholeParams(peer="10.1.2.3"), "drop")
    assert "ip daddr 10.1.2.3/32 drop" in script and "ip saddr 10.1.2.3/32 drop" in script

    script = nft_script("seismo_t", BlackholeParams(all=True), "drop")
    assert "\n    drop\n" in script

    script = nft_script("seismo_t", RejectParams(port=80, direction="ingress"), "x", "tcp")
    assert "meta l4proto tcp th dport 80 x" in script and "chain output" not in script


def test_the_network_kinds_and_their_public_surface() -> None:
    assert network.__all__ == [
        "KINDS",
        "Bandwidth",
        "BandwidthParams",
        "Blackhole",
        "BlackholeParams",
        "Loss",
        "LossParams",
        "Reject",
        "RejectParams",
    ]
    names = ["network_loss", "network_blackhole", "network_reject", "network_bandwidth"]
    assert [k.name for k in network.KINDS] == names
    kinds = all_kinds()
    for kind in network.KINDS:
        assert kinds[kind.name] is not None
        assert kind.__doc__ and "Inverse:" in kind.__doc__ and "Needs:" in kind.__doc__
        assert kind.params.model_config.get("extra") == "forbid"
    assert LossParams(percent=0.29).percent == 0.29


def test_rates_and_sizes_read_as_tc_reads_them() -> None:
    assert rate_bits("1mbit") == 1_000_000
    assert rate_bits("500kbit") == 500_000
    assert rate_bits("10mbps") == 80_000_000  # tc: bytes per second
    assert rate_bits("1.5gbit") == 1_500_000_000
    assert burst_bytes("32kb") == 32768
    assert burst_bytes("4096") == 4096
    assert BandwidthParams(rate="1MBit").rate == "1mbit"
