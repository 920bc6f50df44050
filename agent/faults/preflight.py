"""Kernel capability preflight: what faults this node can really apply.

Run once at agent start, in a scratch network namespace (never the node's own), by trying
the real thing: create an nftables table, a NAT redirect, a ``tbf`` and a ``netem`` qdisc.
The result is exported as ``seismo_fault_capability{capability}`` and checked before every
fault: a fault the node cannot apply is refused with a clear error, never a silent no-op.

    caps = await detect()
    caps.has("netem")       # False on this kernel: latency uses the userspace proxy
"""

from __future__ import annotations

import asyncio
import os
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from agent.faults.steps import Run, StepFailed, execute

__all__ = ["ALL_CAPABILITIES", "Capabilities", "detect"]

ALL_CAPABILITIES = (
    "root",
    "netns",
    "nsenter",
    "nftables",
    "nft_nat",
    "tbf",
    "netem",
    "tun",
    "cgroups",
)


@dataclass(frozen=True, slots=True)
class Capabilities:
    present: frozenset[str]
    details: dict[str, str] = field(default_factory=dict)

    def has(self, name: str) -> bool:
        return name in self.present

    def missing(self, needed: frozenset[str]) -> list[str]:
        return sorted(needed - self.present)


async def _works(argv: tuple[str, ...], netns: str | None = None, stdin: str | None = None) -> str:
    """'' when the command works, else its error."""
    try:
        await execute(Run(argv, netns=netns, stdin=stdin, timeout=10))
    except StepFailed as exc:
        return exc.detail
    except OSError as exc:
        return str(exc)
    return ""


async def detect() -> Capabilities:
    present: set[str] = set()
    details: dict[str, str] = {}
    if os.geteuid() == 0:
        present.add("root")
    else:
        details["root"] = (
            "the agent is not root: node faults need root (or CAP_NET_ADMIN, CAP_KILL)"
        )
    if shutil.which("nsenter", path="/usr/sbin:/usr/bin:/sbin:/bin"):
        present.add("nsenter")
    if await asyncio.to_thread(Path("/sys/fs/cgroup").is_dir):
        present.add("cgroups")
    if await asyncio.to_thread(Path("/dev/net/tun").exists):
        present.add("tun")  # the latency delay line without netem
    else:
        details["tun"] = "/dev/net/tun is missing"
    if "root" not in present or shutil.which("ip", path="/usr/sbin:/usr/bin:/sbin:/bin") is None:
        details.setdefault("netns", "needs root and iproute2")
        return Capabilities(frozenset(present), details)
    name = f"seismo-preflight-{uuid.uuid4().hex[:8]}"
    error = await _works(("ip", "netns", "add", name))
    if error:
        details["netns"] = error
        return Capabilities(frozenset(present), details)
    present.add("netns")
    path = f"/run/netns/{name}"
    try:
        await _works(("ip", "link", "set", "lo", "up"), path)
        checks = {
            "nftables": (("nft", "-f", "-"), "add table inet seismo_preflight\n"),
            "nft_nat": (
                ("nft", "-f", "-"),
                "add table ip seismo_preflight_nat\n"
                "add chain ip seismo_preflight_nat out "
                "{ type nat hook output priority -100 ; }\n"
                "add rule ip seismo_preflight_nat out tcp dport 9 redirect to :10\n",
            ),
            "tbf": (
                (
                    "tc",
                    "qdisc",
                    "add",
                    "dev",
                    "lo",
                    "root",
                    "handle",
                    "5e15:",
                    "tbf",
                    "rate",
                    "1mbit",
                    "burst",
                    "32kbit",
                    "latency",
                    "50ms",
                ),
                None,
            ),
        }
        for cap, (argv, stdin) in checks.items():
            error = await _works(argv, path, stdin)
            if error:
                details[cap] = error
            else:
                present.add(cap)
        await _works(("tc", "qdisc", "del", "dev", "lo", "root"), path)
        error = await _works(
            ("tc", "qdisc", "add", "dev", "lo", "root", "handle", "5e15:", "netem", "delay", "1ms"),
            path,
        )
        if error:
            details["netem"] = error
        else:
            present.add("netem")
    finally:
        await _works(("ip", "netns", "del", name))
    return Capabilities(frozenset(present), details)
