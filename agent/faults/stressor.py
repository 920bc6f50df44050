"""The stress helper: burns CPU and holds memory until it is told to stop, or its time is up.

    python -m agent.faults.stressor --cpu-workers 2 --cpu-load 60 --memory 268435456 \\
        --max-seconds 75 [--cgroup /sys/fs/cgroup/pids/x/cgroup.procs ...] seismo-fault=<id>

Started by the ``stress_cpu`` / ``stress_memory`` fault kinds as a :class:`Spawn` step (inside
the target's network namespace); the engine ends it with the fault's revert (a ``Kill`` of its
marker). Pure Python, no stress-ng.

Mechanism, in this order:

1. ``--cgroup FILE``: write its own pid to each ``cgroup.procs`` file, so it and its workers
   are charged to the target's cgroup (CPU quota, memory limit) before they use anything.
   It also sets its ``oom_score_adj`` to 1000 (inherited by the workers): under memory
   pressure the OOM killer takes the stressor before the target's real processes.
2. CPU: ``--cpu-workers`` child processes (``os.fork``). Each runs a duty cycle of
   ``PERIOD`` seconds: it spins until it has used ``load`` % of the period in CPU time (so a
   worker that shares a busy CPU spins longer, up to the whole period, and still gets its
   load), then sleeps for the rest, so one worker uses about ``load`` % of one CPU. Workers
   inherit the command line, so they carry the marker too: the revert's ``Kill`` and the
   reconcile sweep find them by it.
3. Memory: one ``bytearray`` of ``--memory`` bytes, written page by page (a non-zero
   pattern) so every page is resident, not just reserved. Allocated after the fork, so the
   workers share none of it.
4. Prints ``ready`` once, then nothing more on stdout.

It never outlives its purpose:

- SIGTERM / SIGINT: stops its workers (SIGTERM, then SIGKILL), frees everything, exits 0;
- ``--max-seconds``: exits by itself after that long, even if the agent died (the kind passes
  the fault's TTL plus a margin);
- if the stressor itself is SIGKILLed, every worker gets SIGKILL from the kernel
  (``prctl(PR_SET_PDEATHSIG)``), and also checks once per period that its parent is still the
  stressor (``getppid``), which covers the race between ``fork`` and ``prctl``.

Exit status: 0 on a stop or at ``--max-seconds``; 2 on bad arguments or a failure before
``ready`` (the reason on stderr).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

__all__ = ["PERIOD", "main"]

#: one duty cycle of a CPU worker, seconds: short enough that the load looks smooth to a
#: scheduler and to monitoring, long enough that the sleep/wake overhead is negligible
PERIOD = 0.1
PAGE = 4096
CHUNK = 1 << 20
MARKER_PREFIX = "seismo-fault="
_PR_SET_PDEATHSIG = 1


class _Stop(Exception):
    """Raised by the signal handler in the stressor (never in a worker)."""


def _parse(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m agent.faults.stressor")
    parser.add_argument("--cpu-workers", type=int, default=0)
    parser.add_argument("--cpu-load", type=float, default=100.0)
    parser.add_argument("--memory", type=int, default=0, help="bytes to hold resident")
    parser.add_argument("--max-seconds", type=float, required=True)
    parser.add_argument("--cgroup", action="append", default=[], help="a cgroup.procs to join")
    parser.add_argument("marker")
    args = parser.parse_args(argv)
    problems = []
    if not 0 <= args.cpu_workers <= 1024:
        problems.append("--cpu-workers must be 0-1024")
    if not 0 < args.cpu_load <= 100:
        problems.append("--cpu-load must be > 0 and <= 100")
    if args.memory < 0:
        problems.append("--memory must be >= 0")
    if not args.max_seconds > 0:
        problems.append("--max-seconds must be > 0")
    if not args.marker.startswith(MARKER_PREFIX):
        problems.append(f"the marker must start with {MARKER_PREFIX}")
    for path in args.cgroup:
        if Path(path).name != "cgroup.procs":
            problems.append(f"--cgroup {path!r} must be a cgroup.procs file")
    if problems:
        parser.error("; ".join(problems))
    return args


def _die_with_parent() -> None:
    """Ask the kernel to SIGKILL this process when its parent dies (Linux; best effort)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _worker(parent: int, load: float) -> None:
    """Burn ``load`` % of one CPU until the parent is gone. Never returns normally."""
    _die_with_parent()
    budget = PERIOD * load / 100
    while os.getppid() == parent:  # the parent died between fork and prctl: stop
        start, used = time.monotonic(), time.process_time()
        end = start + PERIOD
        # spin until this period's CPU time is used, counted in CPU time (not wall time) so
        # that a worker sharing a busy CPU still gets its load, up to the whole period
        while time.process_time() - used < budget and time.monotonic() < end:
            pass
        rest = end - time.monotonic()
        if rest > 0:
            time.sleep(rest)


def _start_workers(count: int, load: float) -> list[int]:
    parent = os.getpid()
    pids: list[int] = []
    for _ in range(count):
        pid = os.fork()
        if pid == 0:  # the worker: default signals, no stdio of the agent's
            code = 0
            try:
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                _worker(parent, load)
            except BaseException:  # a worker must never return into the parent's code
                code = 1
            finally:
                os._exit(code)
        pids.append(pid)
    return pids


def _stop_workers(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 2.0
    left = list(pids)
    while left and time.monotonic() < deadline:
        for pid in list(left):
            with contextlib.suppress(ChildProcessError):
                done, _ = os.waitpid(pid, os.WNOHANG)
                if not done:
                    continue
            left.remove(pid)
        if left:
            time.sleep(0.01)
    for pid in left:  # did not go on SIGTERM
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)


def _hold_memory(size: int) -> bytearray:
    """``size`` bytes, every page written so that it is resident."""
    buf = bytearray(size)
    view = memoryview(buf)
    pattern = bytes([0x5E]) * CHUNK
    for offset in range(0, size, CHUNK):
        end = min(offset + CHUNK, size)
        view[offset:end] = pattern[: end - offset]
    view.release()
    return buf


def _join_cgroups(files: list[str]) -> None:
    me = str(os.getpid())
    for path in files:
        with open(path, "w", encoding="ascii") as fh:
            fh.write(me)


def _oom_first() -> None:
    """Be the OOM killer's first choice, before the target's real processes (best effort)."""
    with contextlib.suppress(OSError), open("/proc/self/oom_score_adj", "w") as fh:
        fh.write("1000")


def _on_signal(signum: int, frame: FrameType | None) -> None:
    raise _Stop


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(sys.argv[1:] if argv is None else argv)
    deadline = time.monotonic() + args.max_seconds
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    workers: list[int] = []
    memory: bytearray | None = None
    try:
        try:
            _join_cgroups(args.cgroup)
            _oom_first()
            workers = _start_workers(args.cpu_workers, args.cpu_load)
            memory = _hold_memory(args.memory) if args.memory else None
        except (OSError, MemoryError) as exc:
            print(f"stressor: {exc!r}", file=sys.stderr, flush=True)
            return 2
        print("ready", flush=True)
        while (left := deadline - time.monotonic()) > 0:
            time.sleep(min(left, 1.0))
    except _Stop:
        pass
    finally:
        # block the handler while cleaning up, so a second SIGTERM cannot cut it short
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
        _stop_workers(workers)
        del memory
    return 0


if __name__ == "__main__":
    sys.exit(main())
