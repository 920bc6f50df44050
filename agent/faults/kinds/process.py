"""Process faults: kill (a signal) or pause (SIGSTOP, later SIGCONT) processes in a target.

    process_kill   {"name": "nginx", "signal": "SIGTERM", "max_processes": 2}
    process_pause  {"name_regex": "worker-[0-9]+"}

Mechanism. At plan time the agent lists the target's processes itself
(:meth:`Target.pids`: the processes in a named network namespace or in a cgroup; callers never
pass pids) and keeps those whose name matches: the kernel's ``comm`` or the basename of
``argv[0]``, equal to ``name``, or fully matching the regular expression ``name_regex``. At
most ``max_processes`` of them are chosen, oldest first. Never chosen: the agent itself and
its ancestors, pid 1, kernel threads, and seismo's own helpers (anything carrying a
``seismo-fault=`` marker). No match at all is refused, never a silent no-op.

The chosen pids go into a :class:`Signal` step together with their start times
(``/proc/PID/stat`` field 22), so a pid the kernel recycled between plan and revert (even
across an agent restart) is never signalled.

Inverses:

- ``process_pause``: SIGSTOP on apply; the inverse is SIGCONT to the same (pid, start time)
  pairs, run on rollback, TTL expiry, the dead man's switch, the kill switch and reconcile.
- ``process_kill``: a kill cannot be undone, so the inverse is empty. The kind is *instant*:
  the engine applies it and at once records it as reverted (reason ``instant``), so its TTL only
  bounds how long it could stay "active" in the ledger. ``facts["killed"]`` lists the pids.
  SIGSTOP, SIGTSTP, SIGTTIN and SIGTTOU are refused here (they would leave processes stopped
  with nothing to resume them): use ``process_pause``.

Needs: root (or CAP_KILL) in the node's pid namespace, to see and signal the target's
processes.
"""

from __future__ import annotations

import os
import re
import signal as signals
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, ClassVar

from pydantic import AfterValidator, BeforeValidator, Field, model_validator

from agent.faults.kinds.base import FaultKind, Params, Refused
from agent.faults.preflight import Capabilities
from agent.faults.steps import MARKER_PREFIX, Plan, Signal, start_time
from agent.faults.targets import Target

__all__ = [
    "KINDS",
    "MAX_PROCESSES",
    "KillParams",
    "PauseParams",
    "ProcessKill",
    "ProcessPause",
    "match_processes",
    "parse_signal",
]

#: the most processes one fault may signal (blast radius)
MAX_PROCESSES = 64
_MAX_REGEX = 256
#: signals that stop a process: with no inverse they would leave it stopped for good
_STOPPING = frozenset({signals.SIGSTOP, signals.SIGTSTP, signals.SIGTTIN, signals.SIGTTOU})
_PF_KTHREAD = 0x00200000


def parse_signal(value: object) -> str:
    """A signal name (``SIGTERM``, ``TERM``, any case) or number, as its canonical name.

    >>> parse_signal("term"), parse_signal(9)
    ('SIGTERM', 'SIGKILL')
    """
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a signal name or number")
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if isinstance(value, int):
        try:
            return signals.Signals(value).name
        except ValueError:
            raise ValueError(f"{value} is not a signal number on this system") from None
    if isinstance(value, str):
        name = value.strip().upper()
        name = name if name.startswith("SIG") else "SIG" + name
        if name in signals.Signals.__members__ and not name.startswith("SIG_"):
            return name
    raise ValueError(
        f"{value!r} is not a signal (a name like SIGTERM or TERM, or a number like 15)"
    )


def _process_name(value: str) -> str:
    if not 1 <= len(value) <= 255 or "/" in value or "\0" in value:
        raise ValueError(
            f"{value!r} is not a process name (1-255 characters, no '/': "
            "the comm or the basename of argv[0])"
        )
    return value


def _regex(value: str) -> str:
    if not 1 <= len(value) <= _MAX_REGEX:
        raise ValueError(f"a regular expression of 1-{_MAX_REGEX} characters is needed")
    try:
        re.compile(value)
    except re.error as exc:
        raise ValueError(f"{value!r} is not a valid regular expression: {exc}") from None
    return value


ProcessName = Annotated[str, AfterValidator(_process_name)]
NameRegex = Annotated[str, AfterValidator(_regex)]
SignalName = Annotated[str, BeforeValidator(parse_signal)]


class _MatchParams(Params):
    #: exact match on the comm or the basename of argv[0]
    name: ProcessName | None = None
    #: full match (re.fullmatch) on the comm or the basename of argv[0]
    name_regex: NameRegex | None = None
    max_processes: int = Field(default=1, ge=1, le=MAX_PROCESSES)

    @model_validator(mode="after")
    def _one_matcher(self) -> _MatchParams:
        if (self.name is None) == (self.name_regex is None):
            raise ValueError("give exactly one of name or name_regex")
        return self


class KillParams(_MatchParams):
    signal: SignalName = "SIGKILL"

    @model_validator(mode="after")
    def _not_stopping(self) -> KillParams:
        if signals.Signals[self.signal] in _STOPPING:
            raise ValueError(
                f"signal {self.signal} would leave processes stopped with nothing to resume "
                "them: use the process_pause fault"
            )
        return self


class PauseParams(_MatchParams):
    pass


@dataclass(frozen=True, slots=True)
class _Process:
    pid: int
    start: int
    names: tuple[str, ...]


def _read_process(pid: int, proc_root: Path) -> _Process | None:
    base = proc_root / str(pid)
    try:
        stat = (base / "stat").read_text()
        cmdline = (base / "cmdline").read_bytes()
    except OSError:
        return None
    head, _, rest = stat.rpartition(")")
    fields = rest.split()
    try:
        flags, start = int(fields[6]), int(fields[19])
    except (IndexError, ValueError):
        return None
    args = cmdline.split(b"\0")
    if (
        flags & _PF_KTHREAD
        or not cmdline
        or any(a.startswith(MARKER_PREFIX.encode()) for a in args)
    ):
        return None  # kernel threads and seismo's own helpers are never targets
    comm = head.partition("(")[2]
    argv0 = os.path.basename(args[0].decode(errors="replace"))
    return _Process(pid, start, tuple(dict.fromkeys(n for n in (comm, argv0) if n)))


def _protected(proc_root: Path) -> set[int]:
    """pid 1, the agent and its ancestors: never signalled."""
    out = {1}
    pid = os.getpid()
    for _ in range(64):  # bounded: a process tree is never this deep
        if pid <= 1 or pid in out:
            break
        out.add(pid)
        try:
            rest = (proc_root / str(pid) / "stat").read_text().rpartition(")")[2]
            pid = int(rest.split()[1])
        except (OSError, IndexError, ValueError):
            break
    return out


def match_processes(
    target: Target,
    *,
    name: str | None = None,
    name_regex: str | None = None,
    proc_root: Path = Path("/proc"),
) -> list[tuple[int, int]]:
    """(pid, start time) of the target's processes whose name matches, oldest first.

    match_processes(target, name="nginx")
    """
    pattern = re.compile(name_regex) if name_regex is not None else None
    protected = _protected(proc_root)
    found: list[_Process] = []
    for pid in target.pids():
        if pid in protected:
            continue
        proc = _read_process(pid, proc_root)
        if proc is None:
            continue
        if any(
            (n == name) if pattern is None else pattern.fullmatch(n) is not None for n in proc.names
        ):
            found.append(proc)
    found.sort(key=lambda p: (p.start, p.pid))
    return [(p.pid, p.start) for p in found]


class _ProcessKind(FaultKind):
    requires: ClassVar[frozenset[str]] = frozenset({"root"})

    def _choose(self, params: _MatchParams, target: Target) -> tuple[list[tuple[int, int]], int]:
        matched = match_processes(target, name=params.name, name_regex=params.name_regex)
        if not matched:
            what = f"named {params.name!r}" if params.name else f"matching {params.name_regex!r}"
            raise Refused(f"{self.name}: no process {what} in target {target.spec}")
        chosen = matched[: params.max_processes]
        # re-read the start time: a process that exited since the scan is dropped, not guessed
        chosen = [(pid, st) for pid, st in chosen if start_time(pid) == st]
        if not chosen:
            raise Refused(f"{self.name}: the matching processes in {target.spec} just exited")
        return chosen, len(matched)


class ProcessKill(_ProcessKind):
    name: ClassVar[str] = "process_kill"
    params: ClassVar[type[Params]] = KillParams
    instant: ClassVar[bool] = True
    description: ClassVar[str] = (
        "send a signal (default SIGKILL) to at most max_processes processes matching a name "
        "in the target; instant, no inverse"
    )

    def plan(self, fault_id: str, params: Any, target: Target, caps: Capabilities) -> Plan:
        assert isinstance(params, KillParams)
        chosen, matched = self._choose(params, target)
        pids = tuple(p for p, _ in chosen)
        number = int(signals.Signals[params.signal])
        return Plan(
            apply=(Signal(pids, number, tuple(s for _, s in chosen)),),
            revert=(),
            facts={"killed": list(pids), "signal": params.signal, "matched": matched},
        )


class ProcessPause(_ProcessKind):
    name: ClassVar[str] = "process_pause"
    params: ClassVar[type[Params]] = PauseParams
    description: ClassVar[str] = (
        "stop (SIGSTOP) at most max_processes processes matching a name in the target; "
        "SIGCONT on revert"
    )

    def plan(self, fault_id: str, params: Any, target: Target, caps: Capabilities) -> Plan:
        assert isinstance(params, PauseParams)
        chosen, matched = self._choose(params, target)
        pids = tuple(p for p, _ in chosen)
        starts = tuple(s for _, s in chosen)
        return Plan(
            apply=(Signal(pids, int(signals.SIGSTOP), starts),),
            revert=(Signal(pids, int(signals.SIGCONT), starts),),
            facts={"paused": list(pids), "matched": matched},
        )


KINDS: list[FaultKind] = [ProcessKill(), ProcessPause()]
