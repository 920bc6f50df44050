"""What every fault kind provides, and the parameter types they share.

    class Loss(FaultKind):
        name = "network_loss"
        params = LossParams                    # pydantic, extra="forbid"
        requires = frozenset({"nftables"})
        def plan(self, fault_id, params, target, caps) -> Plan: ...

Parameter validation lives in the pydantic models (CIDRs, ports, percentages, durations,
interface names), so a bad parameter is refused before anything reaches the ledger.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Any, ClassVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from agent.faults.preflight import Capabilities
from agent.faults.steps import Kill, Plan, Run, Spawn, output
from agent.faults.targets import Target

__all__ = [
    "CIDR",
    "NFT_GONE",
    "QDISC_HANDLE",
    "FaultKind",
    "Interface",
    "Invalid",
    "Params",
    "Percent",
    "Port",
    "Refused",
    "choose_interface",
    "link_names",
    "redirect_proxy_plan",
    "table_name",
]


class Refused(Exception):
    """The node cannot apply this fault (missing capability, unsupported combination)."""


class Invalid(Exception):
    """Parameters that only the target can show to be wrong (e.g. an interface it lacks).

    ``problems`` are messages naming the parameter and the rule, like a validation error's.
    """

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


class Params(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _cidr(value: str) -> str:
    try:
        return str(ipaddress.ip_network(value, strict=False))
    except ValueError:
        raise ValueError(f"{value!r} is not an IP address or CIDR (e.g. 10.0.0.0/24)") from None


def _interface(value: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_.:-]{1,15}", value) or value in (".", ".."):
        raise ValueError(f"{value!r} is not an interface name (1-15 of A-Z a-z 0-9 _ . : -)")
    return value


CIDR = Annotated[str, AfterValidator(_cidr)]
Interface = Annotated[str, AfterValidator(_interface)]
Port = Annotated[int, Field(ge=1, le=65535)]
Percent = Annotated[float, Field(ge=0, le=100)]


#: the handle of every root qdisc seismo adds, so reconcile can find orphans ("5e15" ~ "seis")
QDISC_HANDLE = "5e15:"


def table_name(fault_id: str) -> str:
    """The nftables table of a fault: tagged as seismo's so reconcile can find orphans."""
    return "seismo_" + re.sub(r"[^A-Za-z0-9_]", "_", fault_id)


class FaultKind:
    """Base of fault kinds. Subclasses set ``name``, ``params``, ``requires``, ``plan``,
    and may override the async ``prepare`` to check params against the live target."""

    name: ClassVar[str]
    params: ClassVar[type[Params]]
    #: capabilities the node must have (see agent.faults.preflight)
    requires: ClassVar[frozenset[str]] = frozenset()
    #: the target kinds it applies to
    targets: ClassVar[frozenset[str]] = frozenset({"netns", "cgroup"})
    description: ClassVar[str] = ""
    #: acts once and cannot be undone (a kill): the engine applies it and at once records it
    #: as reverted (reason "instant"); its TTL only bounds its life in the ledger
    instant: ClassVar[bool] = False

    def parse(self, raw: dict[str, Any]) -> Params:
        return self.params.model_validate(raw)

    async def prepare(self, params: Any, target: Target) -> Any:
        """Check parameters against the live target, or fill in defaults only it knows.

        Runs after the target is resolved and the capabilities are checked, before the
        ledger: it may only *read* the node (e.g. ``ip -o link`` in the target's netns),
        never change it. Returns the (possibly completed) params, which go to the ledger
        and to ``plan``. Raises :class:`Invalid` for a bad parameter, :class:`Refused` when
        the target cannot take the fault. The default returns ``params`` unchanged.
        """
        return params

    def plan(self, fault_id: str, params: Any, target: Target, caps: Capabilities) -> Plan:
        raise NotImplementedError

    def plan_for(
        self, fault_id: str, params: Any, target: Target, caps: Capabilities, *, ttl: float
    ) -> Plan:
        """The plan of a fault that lives ``ttl`` seconds; what the engine calls.

        Kinds whose helpers must bound their own life by the TTL (a stressor that exits by
        itself if the agent is gone) override this; the others implement ``plan``.
        """
        return self.plan(fault_id, params, target, caps)


#: stderr of ``nft delete table`` when the table (or the netns) is already gone: reverted
NFT_GONE = ("No such file or directory",)


def link_names(text: str) -> list[str]:
    """Interface names from ``ip -o link show``: "2: veth0@if3: <...> ..." -> "veth0"."""
    names = []
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) == 3:
            names.append(parts[1].strip().split("@", 1)[0])
    return names


async def choose_interface(
    kind: str, target: Target, wanted: str | None, *, allow_loopback: bool = False
) -> str:
    """The interface a fault applies to: ``wanted`` if the target has it, else the target's
    only non-loopback interface. Raises Invalid naming what the target has."""
    links = link_names(await output(("ip", "-o", "link", "show"), target.netns))
    candidates = [name for name in links if name != "lo" or (allow_loopback and wanted == "lo")]
    if wanted is None:
        if len(candidates) != 1:
            found = ", ".join(candidates) or "none"
            raise Invalid(
                [
                    f"{kind}: interface: {target.spec} has {len(candidates)} non-loopback "
                    f"interfaces ({found}); name one"
                ]
            )
        return candidates[0]
    if wanted not in links:
        raise Invalid(
            [
                f"{kind}: interface: {wanted!r} does not exist in {target.spec} "
                f"(it has: {', '.join(links) or 'none'})"
            ]
        )
    if wanted not in candidates:
        raise Invalid([f"{kind}: interface: {wanted!r} is loopback; name a real interface"])
    return wanted


def redirect_proxy_plan(
    helper: Spawn, netns: str, table: str, nft_script: str, facts: dict[str, Any]
) -> Plan:
    """A helper process plus an nftables table that redirects traffic into it; reverted by
    deleting the table first (traffic flows again at once), then stopping the helper."""
    return Plan(
        apply=(helper, Run(("nft", "-f", "-"), netns=netns, stdin=nft_script)),
        revert=(
            Run(("nft", "delete", "table", "inet", table), netns=netns, ok_stderr=NFT_GONE),
            Kill(helper.marker),
        ),
        facts={"mode": "proxy", "nft_table": f"inet {table}", **facts},
    )
