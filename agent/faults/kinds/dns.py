"""DNS faults: chosen names fail, time out or resolve wrong, for DNS traffic FROM the target.

**What it affects.** Queries the target sends to ``upstream`` (its resolver, ``ip[:port]``,
port 53 by default), over UDP and TCP. For the ``names`` (exact, like ``api.example.com``, or
a subtree, like ``*.example.com``, which matches ``example.com`` and every name below it, as
:class:`agent.dnsserver.DNSServer` reads it) the answer becomes:

``nxdomain``  NXDOMAIN (without an SOA, so resolvers do not cache it negatively)
``servfail``  SERVFAIL
``timeout``   no answer at all: the client times out
``answer``    the address ``answer`` (an A record for an IPv4 ``answer``, AAAA for IPv6;
              TTL 0, so no cache keeps it after the fault) and an empty NOERROR answer
              for every other type, so the real address cannot leak through AAAA

Every other query is forwarded to ``upstream`` unchanged, and its answer relayed.

**Mechanism.** A helper (:mod:`agent.faults.proxy` mode ``dns``: seismo's
:class:`agent.dnsserver.DNSServer` in FORWARD mode with the faulted names as behaviours) runs
in the target's netns on ``127.0.0.1:P`` (``::1`` for an IPv6 upstream), P fixed by the fault
id (15000-19999). An nftables ``inet`` table ``seismo_<id>`` in the target's netns redirects
the target's outgoing udp and tcp traffic to ``upstream`` into it (``nat`` hook ``output``,
``redirect to :P``); the helper's own forwarded queries are exempt by its group
(``meta skgid 0x5e15``).

**Inverse.** ``nft delete table inet seismo_<id>``, then SIGTERM to the helper. A UDP socket
that keeps one source port across the revert (rare: stub resolvers pick a new port per query)
keeps its conntrack redirect until it idles out (30 s), and gets no answer meanwhile.

**Needs.** root (CAP_NET_ADMIN), nsenter, nftables with NAT (``nft_nat``).

    entry = await engine.apply("dns_fault", "netns:blue",
        {"upstream": "10.96.0.10", "names": ["payments.svc.cluster.local"],
         "action": "nxdomain"}, ttl=300)
"""

from __future__ import annotations

import ipaddress
from typing import Annotated, Any, Literal

import dns.exception
import dns.name
from pydantic import AfterValidator, Field, model_validator

from agent.faults.kinds.base import FaultKind, Params, Refused, redirect_proxy_plan, table_name
from agent.faults.preflight import Capabilities
from agent.faults.proxy import HELPER_GID, helper_argv, listen_port
from agent.faults.steps import MARKER_PREFIX, Plan, Spawn
from agent.faults.targets import Target

__all__ = ["KINDS", "DNSFault", "DNSFaultParams"]

MAX_NAMES = 64


def _upstream(value: str) -> str:
    host, port = value, "53"
    if value.startswith("["):  # [v6]:port
        host, sep, rest = value[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(f"{value!r} is not ip[:port] (IPv6 as [ip]:port)")
        port = rest[1:] or "53"
    elif value.count(":") == 1:
        host, port = value.split(":")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"{value!r} is not ip[:port]: {host!r} is not an IP address") from None
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"{value!r}: port {port!r} is not 1-65535")
    return f"[{ip}]:{int(port)}" if ip.version == 6 else f"{ip}:{int(port)}"


def _name(value: str) -> str:
    text = value.strip().lower()
    wildcard = text.startswith("*.")
    body = text[2:] if wildcard else text
    if not body or "*" in body:
        raise ValueError(f"{value!r}: a name is exact (a.example.com) or *.suffix")
    try:
        name = dns.name.from_text(body)
    except dns.exception.DNSException as exc:
        raise ValueError(f"{value!r} is not a domain name ({exc})") from None
    if len(name) < 2:
        raise ValueError(f"{value!r}: the root cannot be faulted")
    return ("*." if wildcard else "") + name.to_text()


DNSName = Annotated[str, AfterValidator(_name)]


class DNSFaultParams(Params):
    upstream: Annotated[str, AfterValidator(_upstream)]
    names: Annotated[list[DNSName], Field(min_length=1, max_length=MAX_NAMES)]
    action: Literal["nxdomain", "servfail", "timeout", "answer"]
    answer: str | None = None

    @model_validator(mode="after")
    def _answer(self) -> DNSFaultParams:
        if self.action == "answer":
            if self.answer is None:
                raise ValueError("action answer needs answer: the (wrong) IP address to return")
            try:
                ipaddress.ip_address(self.answer)
            except ValueError:
                raise ValueError(f"answer {self.answer!r} is not an IP address") from None
        elif self.answer is not None:
            raise ValueError(f"answer is only for action answer, not {self.action}")
        return self


def _split(upstream: str) -> tuple[str, int]:
    host, _, port = upstream.rpartition(":")
    return host.strip("[]"), int(port)


def nft_script(table: str, upstream: str, port: int) -> str:
    """The table redirecting the target's queries to ``upstream`` into the helper's ``port``."""
    ip, up_port = _split(upstream)
    family = "ip6" if ipaddress.ip_address(ip).version == 6 else "ip"
    lines = [
        f"table inet {table} {{",
        "  chain output {",
        "    type nat hook output priority -100; policy accept;",
        # the helper's own queries to the upstream must reach it
        f"    meta skgid {HELPER_GID} accept",
        *(
            f"    {family} daddr {ip} {proto} dport {up_port} redirect to :{port}"
            for proto in ("udp", "tcp")
        ),
        "  }",
        "}",
    ]
    return "\n".join(lines) + "\n"


class DNSFault(FaultKind):
    """NXDOMAIN, SERVFAIL, timeouts or wrong answers for chosen names the target looks up."""

    name = "dns_fault"
    params = DNSFaultParams
    requires = frozenset({"root", "nsenter", "nft_nat"})
    description = "NXDOMAIN, SERVFAIL, timeouts or wrong answers for chosen names"

    def plan(self, fault_id: str, params: Any, target: Target, caps: Capabilities) -> Plan:
        p: DNSFaultParams = params
        if not p.names:
            raise Refused(f"{self.name}: no names")
        table = table_name(fault_id)
        port = listen_port(fault_id)
        marker = MARKER_PREFIX + fault_id
        options = ["--port", str(port), "--upstream", p.upstream, "--action", p.action]
        for name in p.names:
            options += ["--name", name]
        if p.answer is not None:
            options += ["--answer", p.answer]
        return redirect_proxy_plan(
            Spawn(helper_argv("dns", fault_id, *options), marker, netns=target.netns),
            target.netns,
            table,
            nft_script(table, p.upstream, port),
            {
                "helper_port": port,
                "upstream": p.upstream,
            },
        )


KINDS: list[FaultKind] = [DNSFault()]
