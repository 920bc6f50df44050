"""Fault targets, resolved by the agent itself. Callers name a target; they never pass paths
or pids.

    netns:NAME      a named network namespace (``ip netns``), /run/netns/NAME
    cgroup:/PATH    the processes of a cgroup (v2, or v1's pids hierarchy), and their netns

A target must match one of the config's ``faults.allowed_targets`` patterns and must exist.
Kubernetes pods will be one more kind here: a pod resolves to its network namespace and
processes exactly like a cgroup does.

    resolver = TargetResolver(settings.allowed_targets)
    target = resolver.resolve("netns:blue")
    target.netns          # "/run/netns/blue": where network faults apply
    target.pids()         # the processes in it, for process faults
"""

from __future__ import annotations

import fnmatch
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

__all__ = ["Target", "TargetError", "TargetResolver"]

_NETNS_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_CGROUP_PATH = re.compile(r"^/[A-Za-z0-9_./-]{0,255}$")


class TargetError(ValueError):
    """A target that is malformed, not allowed, or does not exist."""


@dataclass(frozen=True, slots=True)
class Target:
    spec: str
    kind: Literal["netns", "cgroup"]
    name: str
    #: path of the network namespace file network faults enter (nsenter --net=...)
    netns: str
    procs_file: str | None = None
    proc_root: str = "/proc"

    def pids(self) -> list[int]:
        """The processes in the target right now (never the agent itself)."""
        me = os.getpid()
        if self.procs_file is not None:
            try:
                text = Path(self.procs_file).read_text()
            except OSError:
                return []
            return [int(p) for p in text.split() if p.isdigit() and int(p) != me]
        return [p for p in _pids_in_netns(self.netns, Path(self.proc_root)) if p != me]


def _pids_in_netns(netns: str, proc_root: Path) -> list[int]:
    try:
        want = os.stat(netns)
    except OSError:
        return []
    found = []
    for entry in proc_root.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            st = os.stat(entry / "ns" / "net")
        except OSError:
            continue
        if (st.st_ino, st.st_dev) == (want.st_ino, want.st_dev):
            found.append(int(entry.name))
    return sorted(found)


class TargetResolver:
    """Turns ``netns:NAME`` / ``cgroup:/PATH`` into a :class:`Target`, enforcing the allowlist."""

    def __init__(
        self,
        allowed: list[str],
        *,
        netns_dir: Path = Path("/run/netns"),
        cgroup_root: Path = Path("/sys/fs/cgroup"),
    ) -> None:
        self._allowed = list(allowed)
        self._netns_dir = netns_dir
        self._cgroup_root = cgroup_root

    def with_allowed(self, allowed: list[str]) -> TargetResolver:
        """The same resolver with a new allowlist (a config reload)."""
        return TargetResolver(allowed, netns_dir=self._netns_dir, cgroup_root=self._cgroup_root)

    def allowed(self, spec: str) -> bool:
        return any(fnmatch.fnmatchcase(spec, pattern) for pattern in self._allowed)

    def resolve(self, spec: str) -> Target:
        kind, sep, name = spec.partition(":")
        if not sep or kind not in ("netns", "cgroup"):
            raise TargetError(f"target {spec!r}: must be netns:NAME or cgroup:/PATH")
        if kind == "netns" and not _NETNS_NAME.match(name):
            raise TargetError(f"target {spec!r}: a netns name is 1-64 of A-Z a-z 0-9 _ . -")
        if kind == "cgroup" and (not _CGROUP_PATH.match(name) or ".." in name.split("/")):
            raise TargetError(f"target {spec!r}: a cgroup path is absolute, without '..'")
        if not self.allowed(spec):
            allowed = ", ".join(self._allowed) or "none: set faults.allowed_targets"
            raise TargetError(f"target {spec!r} is not allowed (allowed targets: {allowed})")
        if kind == "netns":
            path = self._netns_dir / name
            if not path.exists():
                raise TargetError(f"target {spec!r}: no network namespace named {name!r}")
            return Target(spec, "netns", name, str(path))
        return self._cgroup(spec, name)

    def _cgroup(self, spec: str, name: str) -> Target:
        for base in (self._cgroup_root, self._cgroup_root / "pids", self._cgroup_root / "unified"):
            procs = base / name.lstrip("/") / "cgroup.procs"
            if procs.exists():
                pids = [int(p) for p in procs.read_text().split() if p.isdigit()]
                if not pids:
                    raise TargetError(f"target {spec!r}: the cgroup has no processes")
                return Target(spec, "cgroup", name, f"/proc/{pids[0]}/ns/net", str(procs))
        raise TargetError(f"target {spec!r}: no cgroup {name!r}")

    def allowed_netns(self) -> list[Target]:
        """Every existing named netns the policy allows (for the orphan sweep)."""
        out = []
        if self._netns_dir.is_dir():
            for path in sorted(self._netns_dir.iterdir()):
                spec = f"netns:{path.name}"
                if _NETNS_NAME.match(path.name) and self.allowed(spec):
                    out.append(Target(spec, "netns", path.name, str(path)))
        return out
