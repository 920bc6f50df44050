"""Latency: hold the packets a target sends for ``delay_ms`` (± ``jitter_ms``).

**What it affects.** Packets leaving the target through ``interface`` (egress, as netem on that
interface), optionally only those to ``peer`` (a CIDR) and/or with ``port`` as their source or
destination port (``protocol`` tcp, udp or any). A client target sees every exchange it starts
slowed by one delay per packet it sends: a TCP connect takes ``delay`` longer (the SYN waits),
and an HTTP request's first response byte comes ``delay`` later again (the request waits). So
an HTTP probe from the target sees ``+delay`` in its ``connect`` phase and ``+delay`` in its
``processing`` phase. Jitter is uniform in ``[delay - jitter, delay + jitter]`` per packet.

**Mechanism**, chosen per node and reported in the fault's facts as ``mode``:

``netem`` (the kernel has ``sch_netem``)
    A root qdisc with seismo's handle ``5e15:`` on ``interface``:
    ``tc qdisc add dev IF root handle 5e15: netem delay Dms Jms``. With a ``peer``/``port``
    filter, a ``prio`` root (handle ``5e15:``) with a netem child on band 4 and ``u32``
    filters steering the matching packets to it. netem may reorder packets when jittered.
    Inverse: ``tc qdisc del dev IF root handle 5e15:``.
``proxy`` (no netem, as on this project's CI kernel)
    A userspace delay line (:mod:`agent.faults.proxy` mode ``delay``), started in the target's
    netns, owns a TAP device; an nftables ``netdev`` table ``seismo_<id>`` hooks ``egress`` of
    ``interface`` and ``fwd``\\ s the matching frames to that TAP. The helper holds each frame
    for its delay, in order (jitter never reorders), and sends it on out of ``interface``
    with mark ``0x5e15``, which the rule lets pass. The same packets are delayed by the same
    amount as with netem. It holds at most 1000 frames (netem's default ``limit``); beyond
    that frames are dropped, which caps throughput at about 1000 frames per delay.
    Inverse: ``nft delete table netdev seismo_<id>``, then SIGTERM to the helper, which sends
    the frames it still holds at once; its TAP device goes with it. If the helper died
    first, matching frames are dropped until the fault is reverted (TTL, kill switch or
    reconcile, which also kills an orphaned helper and deletes an orphaned table).

``mode: netem`` or ``mode: proxy`` forces one; ``auto`` (the default) prefers netem.

**Needs.** root (CAP_NET_ADMIN, CAP_NET_RAW), nsenter, and ``netem``, or for the proxy
``nftables`` with the netdev ``egress`` hook and ``fwd`` (Linux 5.16+) and ``/dev/net/tun``.

    entry = await engine.apply("network_latency", "netns:blue",
                               {"delay_ms": 300, "jitter_ms": 20, "peer": "10.0.3.0/24"}, ttl=600)
    entry.facts["mode"]      # "netem" or "proxy"
"""

from __future__ import annotations

import ipaddress
from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from agent.faults.kinds.base import (
    CIDR,
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
from agent.faults.proxy import DELAY_MARK, helper_argv, tap_name
from agent.faults.steps import MARKER_PREFIX, Kill, Plan, Run, Spawn, Step
from agent.faults.targets import Target

__all__ = ["KINDS", "Latency", "LatencyParams"]

#: a revert of a table, qdisc, device or netns that is already gone has nothing to do
_GONE = (
    "No such file or directory",
    "Invalid handle",
    "handle of zero",
    "Cannot find device",
)
MAX_DELAY_MS = 60_000


class LatencyParams(Params):
    """``delay_ms`` ± ``jitter_ms`` on packets the target sends (see the module docstring)."""

    delay_ms: Annotated[int, Field(ge=1, le=MAX_DELAY_MS)]
    jitter_ms: Annotated[int, Field(ge=0, le=MAX_DELAY_MS)] = 0
    peer: CIDR | None = None
    port: Port | None = None
    protocol: Literal["tcp", "udp", "any"] = "any"
    #: None: the target's only non-loopback interface
    interface: Interface | None = None
    mode: Literal["auto", "netem", "proxy"] = "auto"

    @model_validator(mode="after")
    def _check(self) -> LatencyParams:
        if self.jitter_ms > self.delay_ms:
            raise ValueError(f"jitter_ms {self.jitter_ms} must not exceed delay_ms {self.delay_ms}")
        if self.protocol != "any" and self.port is None:
            raise ValueError("protocol needs a port (without one, all IP traffic is delayed)")
        return self


class Latency(FaultKind):
    """Delay the packets a target sends: netem where the kernel has it, else a delay line."""

    name = "network_latency"
    params = LatencyParams
    requires = frozenset({"root", "nsenter"})
    targets = frozenset({"netns", "cgroup"})
    description = "add latency (with jitter) to packets the target sends (netem, or a proxy)"

    async def prepare(self, params: Any, target: Target) -> Any:
        p: LatencyParams = params
        interface = await choose_interface(self.name, target, p.interface)
        p = p.model_copy(update={"interface": interface})
        return p

    def plan(self, fault_id: str, params: Any, target: Target, caps: Capabilities) -> Plan:
        p: LatencyParams = params
        if p.interface is None:  # prepare() always sets it; plan() never guesses
            raise Refused(f"{self.name}: no interface resolved")
        mode = p.mode
        if mode == "auto":
            mode = "netem" if caps.has("netem") else "proxy"
        if mode == "netem":
            if not caps.has("netem"):
                raise Refused(
                    f"{self.name}: mode netem: this node has no netem qdisc "
                    f"({caps.details.get('netem', 'not available')}); use mode proxy or auto"
                )
            return _netem_plan(p, p.interface, target)
        if not (caps.has("nftables") and caps.has("tun")):
            raise Refused(
                f"{self.name}: this node has no netem, and the userspace delay line needs "
                "nftables and /dev/net/tun"
            )
        return _proxy_plan(fault_id, p, p.interface, target)


# --- netem ---------------------------------------------------------------------------------


def _netem_plan(p: LatencyParams, dev: str, target: Target) -> Plan:
    root = ("tc", "qdisc", "add", "dev", dev, "root", "handle", QDISC_HANDLE)
    netem = ("netem", "delay", f"{p.delay_ms}ms", *((f"{p.jitter_ms}ms",) if p.jitter_ms else ()))
    steps: list[Step]
    if p.peer is None and p.port is None:
        steps = [Run((*root, *netem), netns=target.netns)]
    else:
        # prio's bands 1-3 keep the default priomap; band 4 (class 5e15:4) is the delayed one
        steps = [
            Run((*root, "prio", "bands", "4"), netns=target.netns),
            Run(
                ("tc", "qdisc", "add", "dev", dev, "parent", "5e15:4", "handle", "5e16:", *netem),
                netns=target.netns,
            ),
        ]
        steps += [
            Run(("tc", "filter", "add", "dev", dev, "parent", QDISC_HANDLE, *f), netns=target.netns)
            for f in _u32_filters(p)
        ]
    revert = Run(
        ("tc", "qdisc", "del", "dev", dev, "root", "handle", QDISC_HANDLE),
        netns=target.netns,
        ok_stderr=_GONE,
    )
    return Plan(
        apply=tuple(steps),
        revert=(revert,),
        facts={"mode": "netem", "interface": dev, "qdisc": f"netem under {QDISC_HANDLE}"},
    )


def _u32_filters(p: LatencyParams) -> list[tuple[str, ...]]:
    v6 = p.peer is not None and ipaddress.ip_network(p.peer).version == 6
    family, ip = ("ipv6", "ip6") if v6 else ("ip", "ip")
    peer = ("match", ip, "dst", p.peer) if p.peer else ()
    protos = {"tcp": ("6",), "udp": ("17",), "any": ("6", "17")}[p.protocol]
    ports: list[tuple[str, ...]] = [()]
    if p.port is not None:
        ports = [
            ("match", ip, "protocol", proto, "0xff", "match", ip, side, str(p.port), "0xffff")
            for proto in protos
            for side in ("dport", "sport")
        ]
    return [
        ("protocol", family, "prio", "1", "u32", *peer, *port, "flowid", "5e15:4") for port in ports
    ]


# --- the userspace delay line ----------------------------------------------------------------


def _selectors(p: LatencyParams) -> list[str]:
    if p.peer is None:
        peer = "meta protocol { ip, ip6 }"
    else:
        v6 = ipaddress.ip_network(p.peer).version == 6
        peer = f"{'ip6' if v6 else 'ip'} daddr {p.peer}"
    if p.port is None:
        return [peer]
    proto = "{ tcp, udp }" if p.protocol == "any" else p.protocol
    return [f"{peer} meta l4proto {proto} th {side} {p.port}" for side in ("dport", "sport")]


def nft_script(table: str, p: LatencyParams, dev: str, tap: str) -> str:
    """The netdev table that steers the matching frames leaving ``dev`` into ``tap``."""
    lines = [
        f"table netdev {table} {{",
        "  chain egress {",
        f'    type filter hook egress device "{dev}" priority 0; policy accept;',
        f"    meta mark {DELAY_MARK:#x} accept",
        *(f'    {sel} fwd to "{tap}"' for sel in _selectors(p)),
        "  }",
        "}",
    ]
    return "\n".join(lines) + "\n"


def _proxy_plan(fault_id: str, p: LatencyParams, dev: str, target: Target) -> Plan:
    table = table_name(fault_id)
    tap = tap_name(fault_id)
    marker = MARKER_PREFIX + fault_id
    argv = helper_argv(
        "delay",
        fault_id,
        *("--tap", tap, "--interface", dev),
        *("--delay-ms", str(p.delay_ms), "--jitter-ms", str(p.jitter_ms)),
    )
    return Plan(
        # the helper (and its TAP device) first: the rule names the device
        apply=(
            Spawn(argv, marker, netns=target.netns),
            Run(("nft", "-f", "-"), netns=target.netns, stdin=nft_script(table, p, dev, tap)),
        ),
        # the rule first, so no new frame goes to a helper that is stopping
        revert=(
            Run(("nft", "delete", "table", "netdev", table), netns=target.netns, ok_stderr=_GONE),
            Kill(marker),
        ),
        facts={
            "mode": "proxy",
            "interface": dev,
            "nft_table": f"netdev {table}",
            "tap": tap,
            "delayed": "packets the target sends out of the interface (egress), as netem",
        },
    )


KINDS: list[FaultKind] = [Latency()]
