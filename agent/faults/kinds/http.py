"""HTTP faults: requests arriving at a target port are aborted with a status and/or delayed.

**What it affects.** HTTP/1.x requests that reach the target's TCP ``port`` from outside its
network namespace (inbound: the target is the server; clients elsewhere see the fault). For
``percent`` % of the requests, chosen at random per request (on kept-alive connections too):

- ``delay_ms``: the request is held that long before it goes on (a client sees it in the
  time to the first response byte, the HTTP probe's ``processing`` phase);
- ``status``: the request never reaches the server; the client gets that status (100-599)
  with a short text body and ``Connection: close``.

Both together: the abort comes after the delay. Every other request goes to the server
byte-for-byte, and its response comes back byte-for-byte. Requests the target makes to its own
port (over loopback) are not affected. TLS ports are relayed but cannot be parsed: use this
on plain-HTTP ports (as a sidecar or the service itself listens).

**Mechanism.** A helper (:mod:`agent.faults.proxy` mode ``http``) listens in the target's
netns on port P (fixed by the fault id, 15000-19999); an nftables ``inet`` table
``seismo_<id>`` redirects inbound tcp traffic to ``port`` into it (``nat`` hook
``prerouting``, ``redirect to :P``). The helper finds each connection's real destination
with ``SO_ORIGINAL_DST`` and opens its own connection there.

**Inverse.** ``nft delete table inet seismo_<id>``, then SIGTERM to the helper (connections it
carried are closed; new ones go straight to the server).

**Needs.** root (CAP_NET_ADMIN), nsenter, nftables with NAT (``nft_nat``).

    entry = await engine.apply("http_fault", "netns:checkout",
                               {"port": 8080, "status": 503, "percent": 50}, ttl=300)
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, model_validator

from agent.faults.kinds.base import FaultKind, Params, Port, redirect_proxy_plan, table_name
from agent.faults.preflight import Capabilities
from agent.faults.proxy import helper_argv, listen_port
from agent.faults.steps import MARKER_PREFIX, Plan, Spawn
from agent.faults.targets import Target

__all__ = ["KINDS", "HTTPFault", "HTTPFaultParams"]

MAX_DELAY_MS = 600_000


class HTTPFaultParams(Params):
    port: Port
    status: Annotated[int, Field(ge=100, le=599)] | None = None
    delay_ms: Annotated[int, Field(ge=0, le=MAX_DELAY_MS)] = 0
    percent: Annotated[float, Field(gt=0, le=100)] = 100.0

    @model_validator(mode="after")
    def _something(self) -> HTTPFaultParams:
        if self.status is None and self.delay_ms == 0:
            raise ValueError("an http fault needs a status (abort) and/or a delay_ms")
        return self


def nft_script(table: str, port: int, helper_port: int) -> str:
    """The table redirecting inbound tcp traffic to ``port`` into the helper."""
    return (
        f"table inet {table} {{\n"
        "  chain prerouting {\n"
        "    type nat hook prerouting priority -100; policy accept;\n"
        f"    tcp dport {port} redirect to :{helper_port}\n"
        "  }\n"
        "}\n"
    )


class HTTPFault(FaultKind):
    """Abort (a status) or delay a share of the HTTP requests arriving at a target port."""

    name = "http_fault"
    params = HTTPFaultParams
    requires = frozenset({"root", "nsenter", "nft_nat"})
    description = "abort with a status and/or delay a percentage of requests to a port"

    def plan(self, fault_id: str, params: Any, target: Target, caps: Capabilities) -> Plan:
        p: HTTPFaultParams = params
        table = table_name(fault_id)
        helper = listen_port(fault_id)
        marker = MARKER_PREFIX + fault_id
        argv = helper_argv(
            "http",
            fault_id,
            *("--port", str(helper), "--status", str(p.status or 0)),
            *("--delay-ms", str(p.delay_ms), "--percent", f"{p.percent:g}"),
        )
        return redirect_proxy_plan(
            Spawn(argv, marker, netns=target.netns),
            target.netns,
            table,
            nft_script(table, p.port, helper),
            {
                "helper_port": helper,
                "direction": "inbound",
            },
        )


KINDS: list[FaultKind] = [HTTPFault()]
