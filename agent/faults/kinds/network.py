"""Network fault kinds: packet loss, blackhole (partition), reject, and a bandwidth cap.

Each applies inside the target's network namespace only (``nsenter --net=...``), never in
the node's own namespace.

===================  =========================================  ==============================
kind                 what the kernel does                        inverse
===================  =========================================  ==============================
network_loss         nftables ``numgen random`` drop of N %      ``nft delete table``
network_blackhole    nftables drop of all matching traffic       ``nft delete table``
network_reject       nftables ``reject`` (tcp reset / icmp)      ``nft delete table``
network_bandwidth    a root ``tbf`` qdisc (handle ``5e15:``)     ``tc qdisc del ... handle``
===================  =========================================  ==============================

The nftables kinds put one ``inet`` table per fault, named ``seismo_<fault id>``
(:func:`~agent.faults.kinds.base.table_name`), with an ``output`` chain (direction
``egress``) and an ``input`` chain (``ingress``) hooked at priority ``raw``: the packets are
seen before conntrack and NAT, so a peer CIDR matches the real address even when another
fault redirects traffic. Deleting the table removes every rule at once; the table is the
whole fault. Loopback traffic (``lo``) is never touched: these are faults of the network,
and a pod's own localhost sidecars keep working.

Matching is shared by the three nftables kinds:

- ``peer``: a CIDR (IPv4 or IPv6); egress matches the destination, ingress the source;
- ``port``: packets whose source *or* destination port is ``port``, so the same fault works
  on a client (traffic to a server's port) and on a server (traffic of its own port);
- ``protocol``: ``tcp``, ``udp`` or ``any`` (``any`` with a port means tcp and udp);
- ``direction``: ``egress``, ``ingress`` or ``both`` (the default).

    entry = await engine.apply("network_loss", "netns:blue",
                               {"percent": 30, "peer": "10.0.0.0/24", "port": 443}, ttl=60)
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, model_validator

from agent.faults.kinds.base import (
    CIDR,
    NFT_GONE,
    QDISC_HANDLE,
    FaultKind,
    Interface,
    Params,
    Port,
    Refused,
    choose_interface,
    table_name,
)
from agent.faults.preflight import Capabilities
from agent.faults.steps import Plan, Run, output
from agent.faults.targets import Target

__all__ = [
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

Direction = Literal["egress", "ingress", "both"]
Protocol = Literal["tcp", "udp", "any"]

#: a revert of a table that is already gone (or whose namespace is gone) has nothing to do
#: ``tc qdisc del ... root handle 5e15:`` when our qdisc is not there: "Invalid handle" (the
#: root is someone else's or the default), "handle of zero", a removed device, a gone netns
_TC_GONE = (
    "Invalid handle",
    "handle of zero",
    "Cannot find device",
    "No such file or directory",
)


# --- parameters ---------------------------------------------------------------------------


class _Match(Params):
    """Which packets a filter fault applies to (see the module docstring)."""

    peer: CIDR | None = None
    port: Port | None = None
    protocol: Protocol = "any"
    direction: Direction = "both"


class LossParams(_Match):
    """``percent`` of the matching packets are dropped, each packet at random."""

    percent: Annotated[float, Field(gt=0, le=100)]

    @model_validator(mode="after")
    def _precision(self) -> LossParams:
        if abs(round(self.percent * 100) - self.percent * 100) > 1e-6:
            raise ValueError(f"percent {self.percent:g} has more than two decimals")
        return self


class BlackholeParams(_Match):
    """All matching packets are dropped. ``all: true`` must be explicit to drop everything."""

    all: bool = False

    @model_validator(mode="after")
    def _scope(self) -> BlackholeParams:
        if self.all and (self.peer is not None or self.port is not None):
            raise ValueError("all: true drops all traffic; it cannot be combined with peer/port")
        if not self.all and self.peer is None and self.port is None:
            raise ValueError(
                "a blackhole needs peer and/or port; to drop ALL traffic of the target, "
                "say all: true explicitly"
            )
        return self


class RejectParams(_Match):
    """Matching packets are refused: a TCP reset (``mode: reset``, tcp only) or an ICMP
    port-unreachable (``mode: icmp``; TCP connects see "connection refused" too)."""

    mode: Literal["reset", "icmp"] = "reset"

    @model_validator(mode="after")
    def _scope(self) -> RejectParams:
        if self.peer is None and self.port is None:
            raise ValueError("a reject needs peer and/or port")
        if self.mode == "reset" and self.protocol == "udp":
            raise ValueError("mode reset is for tcp; use mode icmp for udp")
        return self


_RATE = re.compile(r"^(\d+(?:\.\d+)?)(bit|kbit|mbit|gbit|kibit|mibit|gibit|bps|kbps|mbps|gbps)$")
_RATE_FACTOR = {
    "bit": 1,
    "kbit": 1000,
    "mbit": 1000**2,
    "gbit": 1000**3,
    "kibit": 1024,
    "mibit": 1024**2,
    "gibit": 1024**3,
    # tc's meaning: bytes per second
    "bps": 8,
    "kbps": 8 * 1000,
    "mbps": 8 * 1000**2,
    "gbps": 8 * 1000**3,
}
_MIN_RATE = 8_000  # 8 kbit/s: below this a single MTU takes over a second
_MAX_RATE = 100 * 1000**3

_SIZE = re.compile(r"^(\d+)(b|k|kb|m|mb|kbit|mbit)?$")
_SIZE_FACTOR = {
    "": 1,
    "b": 1,
    "k": 1024,
    "kb": 1024,
    "m": 1024**2,
    "mb": 1024**2,
    "kbit": 1024 // 8,
    "mbit": 1024**2 // 8,
}
_MIN_BURST = 2048  # a full-size packet must fit in the bucket, or tbf drops it
_MAX_BURST = 64 * 1024**2

_LATENCY = re.compile(r"^(\d+)(us|ms|s)$")
_LATENCY_FACTOR = {"us": 1e-6, "ms": 1e-3, "s": 1.0}


def rate_bits(value: str) -> int:
    """Bits per second of a tc rate ("1mbit" → 1000000; "1mbps" is megaBYTES, as in tc)."""
    match = _RATE.match(value)
    assert match is not None, value
    return round(float(match.group(1)) * _RATE_FACTOR[match.group(2)])


def _rate(value: str) -> str:
    value = value.strip().lower()
    if not _RATE.match(value):
        raise ValueError(
            f"{value!r} is not a rate: a number and a unit, bit|kbit|mbit|gbit (bits/s) or "
            "bps|kbps|mbps|gbps (BYTES/s, as tc reads them), e.g. 1mbit or 500kbit"
        )
    bits = rate_bits(value)
    if not _MIN_RATE <= bits <= _MAX_RATE:
        raise ValueError(f"rate {value} must be between 8kbit and 100gbit")
    return value


def burst_bytes(value: str) -> int:
    """Bytes of a tc size ("32kb" → 32768; "kbit" is kilobits, as in tc)."""
    match = _SIZE.match(value)
    assert match is not None, value
    return int(match.group(1)) * _SIZE_FACTOR[match.group(2) or ""]


def _size(value: str | int) -> str:
    value = str(value).strip().lower()
    if not _SIZE.match(value):
        raise ValueError(
            f"{value!r} is not a size: a number of bytes, or with a unit b|kb|mb|kbit|mbit, "
            "e.g. 32kb"
        )
    if not _MIN_BURST <= burst_bytes(value) <= _MAX_BURST:
        raise ValueError(f"burst {value} must be between 2kb and 64mb")
    return value


def _latency(value: str) -> str:
    value = value.strip().lower()
    match = _LATENCY.match(value)
    if not match:
        raise ValueError(
            f"{value!r} is not a queue latency: a whole number with us|ms|s, e.g. 50ms"
        )
    seconds = int(match.group(1)) * _LATENCY_FACTOR[match.group(2)]
    if not 0.001 <= seconds <= 10:
        raise ValueError(f"latency {value} must be between 1ms and 10s")
    return value


Rate = Annotated[str, AfterValidator(_rate)]
BurstSize = Annotated[str | int, AfterValidator(_size)]
QueueLatency = Annotated[str, AfterValidator(_latency)]


class BandwidthParams(Params):
    """A rate limit on what the target sends through ``interface``.

    ``interface`` defaults to the target's only non-loopback interface; with several, name
    one. ``burst`` is the token bucket (bytes the link may send at full speed), ``latency``
    how long a packet may wait in the queue before tbf drops it.
    """

    rate: Rate
    interface: Interface | None = None
    burst: BurstSize = "32kb"
    latency: QueueLatency = "50ms"


# --- nftables ----------------------------------------------------------------------------


def _family(cidr: str) -> str:
    return "ip" if ipaddress.ip_network(cidr).version == 4 else "ip6"


def _selectors(p: _Match, hook: Literal["output", "input"], proto: Protocol) -> list[str]:
    """The match part of each rule (one per port side; '' matches every packet)."""
    parts: list[str] = []
    if p.peer is not None:
        field = "daddr" if hook == "output" else "saddr"
        parts.append(f"{_family(p.peer)} {field} {p.peer}")
    if p.port is None:
        if proto != "any":
            parts.append(f"meta l4proto {proto}")
        return [" ".join(parts)]
    l4 = "meta l4proto { tcp, udp }" if proto == "any" else f"meta l4proto {proto}"
    return [" ".join([*parts, l4, f"th {side} {p.port}"]) for side in ("dport", "sport")]


def nft_script(table: str, p: _Match, verdict: str, proto: Protocol | None = None) -> str:
    """One atomic ``nft -f`` transaction: the fault's table with its chains and rules."""
    hooks: list[Literal["output", "input"]] = []
    if p.direction in ("egress", "both"):
        hooks.append("output")
    if p.direction in ("ingress", "both"):
        hooks.append("input")
    lines = [f"table inet {table} {{"]
    for hook in hooks:
        lo = "oifname" if hook == "output" else "iifname"
        lines += [
            f"  chain {hook} {{",
            f"    type filter hook {hook} priority raw; policy accept;",
            f'    {lo} "lo" accept',
        ]
        lines += [
            "    " + " ".join(x for x in (sel, verdict) if x)
            for sel in _selectors(p, hook, proto or p.protocol)
        ]
        lines.append("  }")
    lines.append("}")
    return "\n".join(lines) + "\n"


def _nft_plan(fault_id: str, target: Target, script: str, facts: dict[str, Any]) -> Plan:
    table = table_name(fault_id)
    return Plan(
        apply=(Run(("nft", "-f", "-"), netns=target.netns, stdin=script),),
        revert=(
            Run(
                ("nft", "delete", "table", "inet", table),
                netns=target.netns,
                ok_stderr=NFT_GONE,
            ),
        ),
        facts={"nft_table": f"inet {table}", **facts},
    )


_NFT_NEEDS = frozenset({"root", "nsenter", "nftables"})


class Loss(FaultKind):
    """Drop ``percent`` % of the matching packets, each at random.

    Kernel: an nftables ``inet`` table ``seismo_<id>`` in the target's netns with the rule
    ``numgen random mod 10000 < percent*100 drop`` (``drop`` at 100 %) in its output and/or
    input chain.
    Needs: root (CAP_NET_ADMIN), nsenter, nftables. Inverse: ``nft delete table inet
    seismo_<id>`` (idempotent: an already-gone table or netns counts as reverted).
    """

    name = "network_loss"
    params = LossParams
    requires = _NFT_NEEDS
    description = "drop a percentage of packets (nftables random match)"

    def plan(self, fault_id: str, params: Any, target: Target, caps: Capabilities) -> Plan:
        p: LossParams = params
        share = round(p.percent * 100)  # in 1/10000: nft compares integers
        # numgen's values are 0..9999: "< 10000" does not parse, and 100 % is a plain drop
        verdict = "drop" if share >= 10_000 else f"numgen random mod 10000 < {share} drop"
        script = nft_script(table_name(fault_id), p, verdict)
        return _nft_plan(fault_id, target, script, {"percent": p.percent})


class Blackhole(FaultKind):
    """Drop every matching packet: a network partition from ``peer`` and/or ``port``.

    Kernel: an nftables ``inet`` table ``seismo_<id>`` with ``drop`` rules in its output
    and/or input chain. With ``all: true`` (explicitly) every non-loopback packet of the
    target is dropped. Needs: root (CAP_NET_ADMIN), nsenter, nftables. Inverse: ``nft
    delete table inet seismo_<id>`` (idempotent).
    """

    name = "network_blackhole"
    params = BlackholeParams
    requires = _NFT_NEEDS
    description = "drop all traffic to and from a CIDR and/or port (a partition)"

    def plan(self, fault_id: str, params: Any, target: Target, caps: Capabilities) -> Plan:
        p: BlackholeParams = params
        script = nft_script(table_name(fault_id), p, "drop")
        return _nft_plan(fault_id, target, script, {})


class Reject(FaultKind):
    """Refuse matching traffic at once, instead of letting it time out.

    Kernel: an nftables ``inet`` table ``seismo_<id>`` with ``reject with tcp reset``
    (``mode: reset``; tcp only: a connect fails with ECONNREFUSED, an open connection is
    reset) or ``reject with icmpx type port-unreachable`` (``mode: icmp``; any protocol) in
    its output and/or input chain. Needs: root (CAP_NET_ADMIN), nsenter, nftables.
    Inverse: ``nft delete table inet seismo_<id>`` (idempotent).
    """

    name = "network_reject"
    params = RejectParams
    requires = _NFT_NEEDS
    description = "refuse connections (tcp reset or icmp port-unreachable) to a CIDR and/or port"

    def plan(self, fault_id: str, params: Any, target: Target, caps: Capabilities) -> Plan:
        p: RejectParams = params
        if p.mode == "reset":
            script = nft_script(table_name(fault_id), p, "reject with tcp reset", "tcp")
        else:
            verdict = "reject with icmpx type port-unreachable"
            script = nft_script(table_name(fault_id), p, verdict)
        return _nft_plan(fault_id, target, script, {"mode": p.mode})


# --- tbf ---------------------------------------------------------------------------------


class Bandwidth(FaultKind):
    """Cap the rate at which the target sends through one interface.

    Kernel: a root ``tbf`` qdisc with handle ``5e15:`` on ``interface`` in the target's
    netns (``tc qdisc add dev IF root handle 5e15: tbf rate R burst B latency L``). tbf
    shapes egress only: to slow a download, target the side that sends it. Before planning
    it checks, in the target, that the interface exists (or picks the only non-loopback one)
    and that its root qdisc is not someone else's, which it never replaces. Needs: root
    (CAP_NET_ADMIN), nsenter, tbf. Inverse: ``tc qdisc del dev IF root handle 5e15:``: it
    only deletes seismo's qdisc, and a qdisc (or device, or netns) already gone counts as
    reverted.
    """

    name = "network_bandwidth"
    params = BandwidthParams
    requires = frozenset({"root", "nsenter", "tbf"})
    description = "limit the rate the target sends at (tbf)"

    async def prepare(self, params: Any, target: Target) -> Any:
        p: BandwidthParams = params
        interface = await choose_interface(self.name, target, p.interface, allow_loopback=True)
        p = p.model_copy(update={"interface": interface})
        assert p.interface is not None
        root = await output(("tc", "qdisc", "show", "dev", p.interface, "root"), target.netns)
        # "qdisc noqueue 0: root refcnt 2": handle 0: is the kernel's default, fine to replace
        # (the engine runs prepare under its lock, so two applies cannot both pass this)
        words = root.split()
        if len(words) > 2 and words[2] == QDISC_HANDLE:
            raise Refused(
                f"{self.name}: {p.interface} in {target.spec} already has a root qdisc "
                f"({words[1]} {words[2]}) of another seismo fault; revert that one first"
            )
        if len(words) > 2 and words[2] != "0:":
            raise Refused(
                f"{self.name}: {p.interface} in {target.spec} already has a root qdisc "
                f"({words[1]} {words[2]}) that seismo will not replace"
            )
        return p

    def plan(self, fault_id: str, params: Any, target: Target, caps: Capabilities) -> Plan:
        p: BandwidthParams = params
        if p.interface is None:  # prepare() always sets it; plan() never guesses
            raise Refused(f"{self.name}: no interface resolved")
        dev = ("dev", p.interface, "root", "handle", QDISC_HANDLE)
        bits = rate_bits(str(p.rate))
        burst = burst_bytes(str(p.burst))
        apply = Run(
            (
                "tc", "qdisc", "add", *dev, "tbf",
                "rate", f"{bits}bit", "burst", str(burst), "latency", str(p.latency),
            ),
            netns=target.netns,
        )  # fmt: skip
        revert = Run(("tc", "qdisc", "del", *dev), netns=target.netns, ok_stderr=_TC_GONE)
        return Plan(
            apply=(apply,),
            revert=(revert,),
            facts={
                "interface": p.interface,
                "rate_bits_per_second": bits,
                "burst_bytes": burst,
                "qdisc": f"tbf {QDISC_HANDLE}",
            },
        )


KINDS: list[FaultKind] = [Loss(), Blackhole(), Reject(), Bandwidth()]
