"""Steps: what applying or reverting a fault does to the node, as data.

A fault kind never touches the node itself. It returns a :class:`Plan`: the steps that apply
the fault and the steps that revert it. The engine writes both to the ledger *before* running
any apply step, so the exact inverse is durable before the node changes. Steps are plain,
JSON-serialisable values:

    Run(argv, netns)             a command, e.g. ("nft", "-f", "-") with ``stdin``
    Spawn(argv, netns, marker)   a helper process (delay proxy, stressor) tagged with ``marker``
    Kill(marker, signal)         signal every process whose command line carries ``marker``
    Signal(pids, signal, ...)    signal processes the agent resolved itself (pause/resume/kill)

Revert steps must be idempotent: reverting twice, or reverting a fault whose apply stopped
half-way, is safe (e.g. ``nft delete table`` of a missing table is tolerated via ``ok_codes``
and ``ok_stderr``).

External commands always run as argv lists with a fixed environment and a timeout; never a
shell. Inside a target's network namespace they run as ``nsenter --net=PATH -- argv...``.

    plan = Plan(apply=(Run(("nft", "-f", "-"), netns=target.netns, stdin=script),),
                revert=(Run(("nft", "delete", "table", "inet", "seismo_x"), netns=target.netns,
                            ok_stderr=("No such file",)),))
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal as signals
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "COMMAND_ENV",
    "Kill",
    "Plan",
    "Run",
    "Signal",
    "Spawn",
    "Step",
    "StepFailed",
    "execute",
    "find_marked",
    "marked_processes",
    "output",
    "step_from_json",
    "step_to_json",
]

log = logging.getLogger(__name__)

#: the only environment external commands get
COMMAND_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C", "LC_ALL": "C"}
COMMAND_TIMEOUT = 15.0
#: the prefix of every marker; reconcile finds orphaned helper processes by it
MARKER_PREFIX = "seismo-fault="


class StepFailed(Exception):
    """A step could not be carried out. ``detail`` says which command and why."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Run:
    argv: tuple[str, ...]
    netns: str | None = None
    stdin: str | None = None
    ok_codes: tuple[int, ...] = (0,)
    #: a non-zero exit whose stderr contains one of these counts as success (idempotent revert)
    ok_stderr: tuple[str, ...] = ()
    timeout: float = COMMAND_TIMEOUT


@dataclass(frozen=True, slots=True)
class Spawn:
    """Start a long-running helper. ``marker`` must appear in ``argv`` (see MARKER_PREFIX).

    The helper prints ``ready_line`` on stdout once it works, and nothing on stdout after.
    """

    argv: tuple[str, ...]
    marker: str
    netns: str | None = None
    #: wait until this line appears on the helper's stdout before the step counts as done
    ready_line: str = "ready"
    timeout: float = COMMAND_TIMEOUT


@dataclass(frozen=True, slots=True)
class Kill:
    marker: str
    signal: int = signals.SIGTERM
    timeout: float = 5.0


@dataclass(frozen=True, slots=True)
class Signal:
    """Signal processes by pid; each pid is checked against its start time to avoid reuse."""

    pids: tuple[int, ...]
    signal: int
    #: /proc/<pid>/stat field 22 (start time) per pid, to refuse a recycled pid
    start_times: tuple[int, ...] = ()


Step = Run | Spawn | Kill | Signal


@dataclass(frozen=True, slots=True)
class Plan:
    apply: tuple[Step, ...]
    revert: tuple[Step, ...]
    #: facts for the user (e.g. {"mode": "proxy"} for latency without netem)
    facts: dict[str, Any] = field(default_factory=dict)


_STEP_TYPES: dict[str, type[Run] | type[Spawn] | type[Kill] | type[Signal]] = {
    "run": Run,
    "spawn": Spawn,
    "kill": Kill,
    "signal": Signal,
}
_STEP_NAMES = {cls: name for name, cls in _STEP_TYPES.items()}


def step_to_json(step: Step) -> dict[str, Any]:
    return {"type": _STEP_NAMES[type(step)], **asdict(step)}


def step_from_json(data: dict[str, Any]) -> Step:
    kind = data.get("type")
    cls = _STEP_TYPES.get(str(kind))
    if cls is None:
        raise ValueError(f"unknown step type {kind!r}")
    fields: dict[str, Any] = {
        k: tuple(v) if isinstance(v, list) else v for k, v in data.items() if k != "type"
    }
    return cls(**fields)


def _in_netns(argv: tuple[str, ...], netns: str | None) -> tuple[str, ...]:
    # ``netns`` is the path of a network namespace file (/run/netns/NAME, /proc/PID/ns/net),
    # always resolved by the agent's target resolver, never taken from a caller
    return ("nsenter", f"--net={netns}", "--", *argv) if netns else argv


async def _run(step: Run) -> None:
    argv = _in_netns(step.argv, step.netns)
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.PIPE if step.stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=COMMAND_ENV,
    )
    try:
        async with asyncio.timeout(step.timeout):
            out, err = await proc.communicate(step.stdin.encode() if step.stdin else None)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        raise StepFailed(f"{' '.join(argv)}: timed out after {step.timeout:g}s") from None
    code = proc.returncode or 0
    text = err.decode(errors="replace").strip()
    if code in step.ok_codes or (code and any(s in text for s in step.ok_stderr)):
        return
    raise StepFailed(f"{' '.join(argv)}: exit {code}: {text or out.decode(errors='replace')}")


async def _spawn(step: Spawn) -> asyncio.subprocess.Process:
    if step.marker not in step.argv:
        raise StepFailed(f"spawn {step.argv[0]}: the marker must be in its argv")
    argv = _in_netns(step.argv, step.netns)
    env = dict(COMMAND_ENV)
    if step.argv[0] == sys.executable:
        # a seismo helper module: it needs the agent's import path
        env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        # the helper's log goes to the agent's own stderr: a pipe nobody drains after
        # "ready" would fill up and stall the traffic the helper carries
        stderr=None,
        env=env,
        start_new_session=True,
    )
    assert proc.stdout is not None
    try:
        async with asyncio.timeout(step.timeout):
            while True:
                line = await proc.stdout.readline()
                if not line:
                    code = await proc.wait()
                    raise StepFailed(
                        f"{' '.join(argv)}: exited with {code} before ready (its error is in "
                        "the agent's log)"
                    )
                if line.decode(errors="replace").strip() == step.ready_line:
                    break
    except (TimeoutError, StepFailed) as exc:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        if isinstance(exc, StepFailed):
            raise
        raise StepFailed(f"{' '.join(argv)}: not ready after {step.timeout:g}s") from None
    # the helper outlives this call. By contract it writes nothing to stdout after "ready";
    # the caller keeps ``proc`` so the helper is reaped when a Kill step ends it.
    return proc


def marked_processes(proc_root: Path = Path("/proc")) -> list[tuple[int, str]]:
    """(pid, marker) of every process carrying a ``seismo-fault=...`` argument."""
    prefix = MARKER_PREFIX.encode()
    found: list[tuple[int, str]] = []
    for entry in proc_root.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            args = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        found.extend(
            (int(entry.name), a.decode(errors="replace")) for a in args if a.startswith(prefix)
        )
    return found


def find_marked(marker: str, proc_root: Path = Path("/proc")) -> list[int]:
    """Pids whose command line carries ``marker`` as a whole argument."""
    return [pid for pid, m in marked_processes(proc_root) if m == marker]


async def output(argv: tuple[str, ...], netns: str | None = None) -> str:
    """Run a read-only command (e.g. ``nft list tables``) and return its stdout; '' on failure."""
    proc = await asyncio.create_subprocess_exec(
        *_in_netns(argv, netns),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
        env=COMMAND_ENV,
    )
    try:
        async with asyncio.timeout(COMMAND_TIMEOUT):
            out, _ = await proc.communicate()
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        return ""
    return out.decode(errors="replace") if proc.returncode == 0 else ""


async def _kill(step: Kill) -> None:
    pids = await asyncio.to_thread(find_marked, step.marker)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, step.signal)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + step.timeout
    while pids and loop.time() < deadline:
        await asyncio.sleep(0.02)
        pids = [p for p in pids if _alive(p)]
    for pid in pids:  # did not go on SIGTERM: make sure
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signals.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def start_time(pid: int) -> int | None:
    """Field 22 of /proc/<pid>/stat: the process's start time, to detect pid reuse."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


async def _signal(step: Signal) -> None:
    for i, pid in enumerate(step.pids):
        expected = step.start_times[i] if i < len(step.start_times) else None
        if expected is not None and start_time(pid) != expected:
            continue  # gone, or the pid was reused: never signal a stranger
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, step.signal)


async def execute(step: Step) -> asyncio.subprocess.Process | None:
    """Carry out one step. Raises StepFailed with the command and its error.

    Returns the helper process of a Spawn step (keep it, so it is reaped), else None.
    """
    if isinstance(step, Run):
        await _run(step)
    elif isinstance(step, Spawn):
        return await _spawn(step)
    elif isinstance(step, Kill):
        await _kill(step)
    else:
        await _signal(step)
    return None
