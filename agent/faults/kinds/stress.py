"""Stress faults: burn CPU or hold memory inside a target, for the fault's TTL.

    stress_cpu     {"workers": 2, "load": 60}          2 workers, each ~60 % of one CPU
    stress_memory  {"bytes": "256Mi"}                   256 MiB resident
                   {"bytes": 268435456, "max_available_percent": 25}

Mechanism. Both kinds start the stress helper :mod:`agent.faults.stressor` (pure Python, no
stress-ng) as a :class:`Spawn` step, tagged with the fault's ``seismo-fault=<id>`` marker and
run with ``nsenter --net`` in the target's network namespace. For a ``cgroup:`` target the
stressor first writes its own pid into the target's ``cgroup.procs`` (``--cgroup``), so it and
its workers are charged to that cgroup and its CPU and memory limits apply, like a process
of the pod would be. On a cgroup v1 node it also joins the same path under the ``cpu``
(stress_cpu) or ``memory`` (stress_memory) controller where that path exists; on cgroup v2 the
one unified cgroup carries every controller. A ``netns:`` target has no resource boundary: its
stressor competes for the whole node's CPU and memory (including the agent's own probes).

The stressor prints ``ready`` only once its workers run and every page of its memory is
resident, so when ``apply`` returns the stress is real.

Duration and inverse. The inverse is a ``Kill`` of the marker (SIGTERM, then SIGKILL), which
ends the stressor and its workers; the engine runs it on rollback, at TTL expiry, on the dead
man's switch, on the kill switch and at reconcile, which also kills any marked stressor
missing from the ledger. As a last line of defence the stressor gets
``--max-seconds = TTL + MARGIN`` and exits by itself even if the agent is gone for good, and
its workers die with it even on SIGKILL (``PR_SET_PDEATHSIG``). It sets its own
``oom_score_adj`` to 1000, so under memory pressure the kernel's OOM killer takes the
stressor before the target's real processes or the agent.

Limits. ``workers`` is 1 to the number of CPUs of the node; ``load`` is 1-100 % per worker.
``bytes`` (a number, or a quantity like ``512Mi``, ``1Gi``, ``300M``) is at least 1 MiB and at
most ``max_available_percent`` (default 50, at most 90) % of ``MemAvailable`` in
``/proc/meminfo``. The two node-dependent rules (CPUs, MemAvailable) are checked by
``prepare`` on the node that applies the fault, at that moment, not when a file is validated.

Needs: root and ``nsenter`` (to enter the namespace); for cgroup targets, a writable cgroup
filesystem (capability ``cgroups``).
"""

from __future__ import annotations

import math
import os
import re
import sys
from pathlib import Path
from typing import Annotated, Any, ClassVar

from pydantic import BeforeValidator, Field

from agent.faults.kinds.base import FaultKind, Invalid, Params, Refused
from agent.faults.preflight import Capabilities
from agent.faults.steps import COMMAND_TIMEOUT, MARKER_PREFIX, Kill, Plan, Spawn
from agent.faults.targets import Target

__all__ = [
    "KINDS",
    "MARGIN",
    "CpuParams",
    "MemoryParams",
    "StressCpu",
    "StressMemory",
    "mem_available",
    "parse_bytes",
]

#: seconds the stressor may outlive its fault's TTL before it exits by itself
MARGIN = 15
MIN_BYTES = 1 << 20
_UNITS = {
    "": 1,
    "b": 1,
    "k": 10**3,
    "kb": 10**3,
    "m": 10**6,
    "mb": 10**6,
    "g": 10**9,
    "gb": 10**9,
    "ki": 1 << 10,
    "kib": 1 << 10,
    "mi": 1 << 20,
    "mib": 1 << 20,
    "gi": 1 << 30,
    "gib": 1 << 30,
}
_QUANTITY = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*$")


def parse_bytes(value: object) -> int:
    """A byte count: an integer, or a quantity with a unit (k/M/G decimal, Ki/Mi/Gi binary).

    >>> parse_bytes("256Mi"), parse_bytes("1G"), parse_bytes(4096)
    (268435456, 1000000000, 4096)
    """
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a byte count")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        match = _QUANTITY.match(value)
        if match and match.group(2).lower() in _UNITS:
            return int(float(match.group(1)) * _UNITS[match.group(2).lower()])
    raise ValueError(
        f"{value!r} is not a byte count (an integer, or a number with one of the units "
        "k, M, G, Ki, Mi, Gi, e.g. 256Mi)"
    )


def mem_available(meminfo: Path = Path("/proc/meminfo")) -> int:
    """``MemAvailable`` of the node, in bytes."""
    for line in meminfo.read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    raise OSError(f"{meminfo} has no MemAvailable line")


def _cpus() -> int:
    return os.cpu_count() or 1


def _human(n: float) -> str:
    return f"{n / (1 << 30):.2f} GiB" if n >= 1 << 30 else f"{n / (1 << 20):.1f} MiB"


class CpuParams(Params):
    #: CPU-burning worker processes, 1 to the CPUs of the node (checked by ``prepare``)
    workers: int = Field(default=1, ge=1, le=1024)
    #: percent of one CPU each worker uses
    load: float = Field(default=100, ge=1, le=100)


class MemoryParams(Params):
    #: bytes to hold resident
    bytes: Annotated[int, BeforeValidator(parse_bytes), Field(ge=MIN_BYTES)]
    #: the most ``bytes`` may be, as a percentage of MemAvailable when the fault is applied
    max_available_percent: float = Field(default=50, ge=1, le=90)


#: the cgroup v1 hierarchies (mounted side by side) a stressor joins besides the target's own
_V1_HIERARCHIES = {"cpu": ("cpu", "cpu,cpuacct"), "memory": ("memory",)}


def _cgroup_files(target: Target, controller: str) -> list[str]:
    """The cgroup.procs files a stressor in ``target`` joins (see the module docstring)."""
    if target.procs_file is None:
        return []
    files = [target.procs_file]
    rel = Path(target.name.strip("/"))
    hierarchy = Path(target.procs_file).parent  # the target's cgroup, up to its hierarchy
    for _ in rel.parts:
        hierarchy = hierarchy.parent
    for name in _V1_HIERARCHIES[controller]:
        extra = hierarchy.parent / name / rel / "cgroup.procs"
        if extra.is_file() and not extra.samefile(target.procs_file):
            files.append(str(extra))
            break
    return files


class _StressKind(FaultKind):
    requires: ClassVar[frozenset[str]] = frozenset({"root", "nsenter"})
    controller: ClassVar[str]

    def _spawn(
        self,
        fault_id: str,
        target: Target,
        caps: Capabilities,
        ttl: float,
        *,
        workers: int = 0,
        load: float = 100,
        memory: int = 0,
    ) -> Plan:
        if target.kind == "cgroup" and not caps.has("cgroups"):
            raise Refused(f"{self.name}: this node has no cgroup filesystem to join")
        marker = f"{MARKER_PREFIX}{fault_id}"
        cgroups = _cgroup_files(target, self.controller)
        max_seconds = math.ceil(ttl) + MARGIN
        argv = (
            sys.executable,
            "-m",
            "agent.faults.stressor",
            "--cpu-workers",
            str(workers),
            "--cpu-load",
            f"{load:g}",
            "--memory",
            str(memory),
            "--max-seconds",
            str(max_seconds),
            *(a for f in cgroups for a in ("--cgroup", f)),
            marker,
        )
        # writing every page takes time: allow ~256 MiB/s on a slow node on top of the default
        timeout = COMMAND_TIMEOUT + memory / (256 << 20)
        return Plan(
            apply=(Spawn(argv, marker, netns=target.netns, timeout=timeout),),
            revert=(Kill(marker),),
            facts={"max_seconds": max_seconds, "cgroups": cgroups},
        )


class StressCpu(_StressKind):
    name: ClassVar[str] = "stress_cpu"
    params: ClassVar[type[Params]] = CpuParams
    controller: ClassVar[str] = "cpu"
    description: ClassVar[str] = "burn CPU: workers processes at load % of one CPU each"

    async def prepare(self, params: Any, target: Target) -> Any:
        # the node's own limit, checked where the fault runs (not when a file is validated)
        assert isinstance(params, CpuParams)
        if params.workers > _cpus():
            raise Invalid(
                [
                    f"{self.name}: workers: must be 1-{_cpus()} (the CPUs of this node), "
                    f"not {params.workers}"
                ]
            )
        return params

    def plan_for(
        self, fault_id: str, params: Any, target: Target, caps: Capabilities, *, ttl: float
    ) -> Plan:
        assert isinstance(params, CpuParams)
        return self._spawn(fault_id, target, caps, ttl, workers=params.workers, load=params.load)


class StressMemory(_StressKind):
    name: ClassVar[str] = "stress_memory"
    params: ClassVar[type[Params]] = MemoryParams
    controller: ClassVar[str] = "memory"
    description: ClassVar[str] = "hold bytes of memory resident"

    async def prepare(self, params: Any, target: Target) -> Any:
        # the node's memory right now, checked where the fault runs
        assert isinstance(params, MemoryParams)
        available = mem_available()
        cap = available * params.max_available_percent / 100
        if params.bytes > cap:
            raise Invalid(
                [
                    f"{self.name}: bytes: {_human(params.bytes)} is above "
                    f"max_available_percent {params.max_available_percent:g}% of MemAvailable "
                    f"({_human(available)} now): at most {_human(cap)}"
                ]
            )
        return params

    def plan_for(
        self, fault_id: str, params: Any, target: Target, caps: Capabilities, *, ttl: float
    ) -> Plan:
        assert isinstance(params, MemoryParams)
        return self._spawn(fault_id, target, caps, ttl, memory=params.bytes)


KINDS: list[FaultKind] = [StressCpu(), StressMemory()]
