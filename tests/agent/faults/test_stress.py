"""Stress faults: the real stressor, inside the test hosts' namespaces (or a test cgroup).

CPU use is read from /proc/PID/stat (utime + stime of the stressor and its workers) over a
short interval; memory from VmRSS. The bands are wide on purpose: other work on the machine
shares its CPUs. The figures are printed (``pytest -s``) for docs and reports.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agent.faults.engine import FaultEngine, FaultInvalid
from agent.faults.kinds import all_kinds
from agent.faults.kinds.stress import MARGIN, mem_available, parse_bytes
from agent.faults.ledger import Ledger
from agent.faults.preflight import Capabilities
from agent.faults.settings import FaultSettings
from agent.faults.steps import find_marked
from agent.faults.targets import TargetResolver
from tests.agent.faults.conftest import EngineFactory, Hosts
from tests.waiting import until

WAIT = 10.0
TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / TICK


def runqueue_seconds(pids: list[int]) -> float:
    """Time spent runnable but waiting for a CPU (/proc/PID/schedstat; 0 without it)."""
    total = 0
    for pid in pids:
        with contextlib.suppress(FileNotFoundError):
            total += int(Path(f"/proc/{pid}/schedstat").read_text().split()[1])
    return total / 1e9


async def cpu_load(pids: list[int], seconds: float = 1.5) -> tuple[float, float]:
    """(CPUs used, CPUs wanted) by ``pids`` over ``seconds``; 1.0 = one CPU.

    "Wanted" adds the time they waited on a run queue: on a machine whose CPUs are busy
    with other work, a worker gets less than its load, but it must still ask for it.
    """
    try:
        used, waited, start = cpu_seconds(pids), runqueue_seconds(pids), time.monotonic()
        await asyncio.sleep(seconds)
        used, waited = cpu_seconds(pids) - used, runqueue_seconds(pids) - waited
    except OSError:
        pytest.fail("a stressor process vanished while measuring (killed by someone else?)")
    elapsed = time.monotonic() - start
    return used / elapsed, (used + waited) / elapsed


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def ppid(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def in_netns(pid: int, netns: str) -> bool:
    return os.stat(f"/proc/{pid}/ns/net").st_ino == os.stat(f"/run/netns/{netns}").st_ino


def marker(fault_id: str) -> str:
    return f"seismo-fault={fault_id}"


def split(pids: list[int]) -> tuple[int, list[int]]:
    """(the stressor, its workers) among the marked pids of one fault."""
    (parent,) = [p for p in pids if ppid(p) not in pids]
    return parent, [p for p in pids if p != parent]


@pytest.fixture
def engine(hosts: Hosts, make_engine: EngineFactory) -> FaultEngine:
    return make_engine([hosts.server_target, hosts.client_target])


# --- CPU ------------------------------------------------------------------------------


@pytest.mark.parametrize("load", [25, 60])
async def test_cpu_stress_reaches_the_load_and_is_gone_after(
    hosts: Hosts, engine: FaultEngine, load: int
) -> None:
    entry = await engine.apply(
        "stress_cpu", hosts.server_target, {"workers": 1, "load": load}, ttl=60
    )
    pids = find_marked(marker(entry.id))
    _, workers = split(pids)
    assert len(workers) == 1
    assert all(in_netns(p, hosts.server) for p in pids)
    assert entry.facts["max_seconds"] == 60 + MARGIN

    used, wanted = await cpu_load(pids)
    print(
        f"\nstress_cpu workers=1 load={load}%: used {used * 100:.0f}% of one CPU "
        f"(with run-queue waits: {wanted * 100:.0f}%)"
    )
    assert used <= load / 100 * 1.25 + 0.05  # never much more than asked
    assert used >= load / 100 * 0.25  # it really burns
    assert wanted >= load / 100 * 0.8  # and asks for all of it (contention takes the rest)

    await engine.revert(entry.id, "rollback")
    assert find_marked(marker(entry.id)) == []
    assert engine.active() == []


async def test_cpu_workers_die_with_a_killed_stressor(hosts: Hosts, engine: FaultEngine) -> None:
    entry = await engine.apply(
        "stress_cpu", hosts.server_target, {"workers": 2, "load": 20}, ttl=60
    )
    stressor, workers = split(find_marked(marker(entry.id)))
    assert len(workers) == 2

    os.kill(stressor, signal.SIGKILL)  # no SIGTERM handler runs: only the kernel can help

    await until(
        lambda: find_marked(marker(entry.id)) == [], WAIT, what="the orphaned workers to die"
    )
    reverted = await engine.revert(entry.id, "rollback")  # nothing left to kill: still fine
    assert reverted is not None and reverted.state == "reverted"


async def test_stressor_in_a_cgroup_is_held_to_its_cpu_quota(
    hosts: Hosts,
    cgroups: tuple[str, Path, Path | None],
    make_engine: EngineFactory,
) -> None:
    name, procs_dir, cpu_dir = cgroups
    if cpu_dir is None:
        pytest.skip("no cgroup v1 cpu hierarchy to set a quota in")
    (cpu_dir / "cpu.cfs_period_us").write_text("100000")
    (cpu_dir / "cpu.cfs_quota_us").write_text("20000")  # 20 % of one CPU
    member = hosts.spawn(hosts.server, "sleep", "300")
    await until(
        lambda: Path(f"/proc/{member.pid}/comm").read_text() == "sleep\n", WAIT, what="sleep"
    )
    (procs_dir / "cgroup.procs").write_text(str(member.pid))
    engine = make_engine([f"cgroup:/{name}"])

    entry = await engine.apply("stress_cpu", f"cgroup:/{name}", {"workers": 1, "load": 100}, ttl=60)
    pids = find_marked(marker(entry.id))
    members = set((procs_dir / "cgroup.procs").read_text().split())
    assert {str(p) for p in pids} <= members
    assert {str(p) for p in pids} <= set((cpu_dir / "cgroup.procs").read_text().split())
    assert all(in_netns(p, hosts.server) for p in pids)  # the netns of the cgroup's process

    used, _ = await cpu_load(pids)
    print(f"\nstress_cpu load=100% in a cgroup with a 20% quota: used {used * 100:.0f}%")
    assert 0.05 <= used <= 0.3

    await engine.revert(entry.id, "rollback")
    assert find_marked(marker(entry.id)) == []


# --- memory ---------------------------------------------------------------------------


async def test_memory_stress_holds_the_bytes_and_frees_them(
    hosts: Hosts, engine: FaultEngine
) -> None:
    want = 64 << 20
    entry = await engine.apply("stress_memory", hosts.server_target, {"bytes": "64Mi"}, ttl=60)
    assert entry.params["bytes"] == want
    (stressor,) = find_marked(marker(entry.id))  # no CPU workers

    held = rss(stressor)
    print(f"\nstress_memory 64 MiB: stressor RSS {held / (1 << 20):.1f} MiB")
    assert want <= held <= want + (48 << 20)  # plus the interpreter

    await engine.revert(entry.id, "rollback")
    assert find_marked(marker(entry.id)) == []
    assert not Path(f"/proc/{stressor}/status").exists() or rss(stressor) == 0


# --- TTL, kill switch, reconcile -------------------------------------------------------


def fresh_engine(
    hosts: Hosts,
    tmp_path: Path,
    caps: Capabilities,
    ledger: str,
    clock: Callable[[], float] = time.time,
) -> FaultEngine:
    allowed = [hosts.server_target]
    return FaultEngine(
        Ledger(tmp_path / ledger),
        TargetResolver(allowed),
        FaultSettings(allowed_targets=allowed),
        caps,
        all_kinds(),
        clock=clock,
    )


async def test_ttl_and_kill_switch_stop_the_stressor(
    hosts: Hosts, tmp_path: Path, capabilities: Capabilities
) -> None:
    now = [1_000_000.0]
    engine = fresh_engine(hosts, tmp_path, capabilities, "ledger.jsonl", lambda: now[0])
    try:
        entry = await engine.apply("stress_memory", hosts.server_target, {"bytes": "8Mi"}, ttl=5)
        assert entry.facts["max_seconds"] == 5 + MARGIN  # its own bound if the agent dies
        assert find_marked(marker(entry.id))
        now[0] += 6
        await engine.tick()
        assert find_marked(marker(entry.id)) == []
        assert (after := engine.get(entry.id)) is not None and after.end_reason == "ttl"

        entry = await engine.apply("stress_cpu", hosts.server_target, {"load": 5}, ttl=60)
        assert find_marked(marker(entry.id))
        await engine.clear()
        assert find_marked(marker(entry.id)) == []
    finally:
        await engine.clear("test_teardown")


@pytest.mark.parametrize("ledger_kept", [True, False], ids=["from-ledger", "orphan"])
async def test_reconcile_stops_the_stressor_of_a_crashed_agent(
    hosts: Hosts,
    tmp_path: Path,
    capabilities: Capabilities,
    ledger_kept: bool,
) -> None:
    crashed = fresh_engine(hosts, tmp_path, capabilities, "ledger.jsonl")
    try:
        entry = await crashed.apply(
            "stress_cpu", hosts.server_target, {"workers": 1, "load": 10}, ttl=60
        )
        assert find_marked(marker(entry.id))
        # the agent "dies" without reverting; its successor has the ledger, or (an orphan)
        # a ledger without this fault
        restarted = fresh_engine(
            hosts, tmp_path, capabilities, "ledger.jsonl" if ledger_kept else "other.jsonl"
        )
        await restarted.reconcile()
        assert find_marked(marker(entry.id)) == []
        if ledger_kept:
            after = restarted.get(entry.id)
            assert after is not None and after.end_reason == "reconcile"
    finally:
        await crashed.clear("test_teardown")


# --- bad parameters -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "params", "message"),
    [
        ("stress_cpu", {"load": 150}, "stress_cpu: load: Input should be less than or equal"),
        ("stress_cpu", {"load": 0}, "stress_cpu: load: Input should be greater than or equal"),
        ("stress_cpu", {"workers": 0}, "stress_cpu: workers: Input should be greater"),
        ("stress_cpu", {"workers": 1000}, "stress_cpu: workers: must be 1-"),
        ("stress_cpu", {"threads": 2}, "stress_cpu: threads: unknown parameter"),
        ("stress_memory", {}, "stress_memory: bytes: Field required"),
        ("stress_memory", {"bytes": "12 parsecs"}, "'12 parsecs' is not a byte count"),
        ("stress_memory", {"bytes": 1000}, "bytes: Input should be greater than or equal"),
        ("stress_memory", {"bytes": "1000Gi"}, "of MemAvailable"),
        (
            "stress_memory",
            {"bytes": "64Mi", "max_available_percent": 95},
            "max_available_percent: Input should be less than or equal to 90",
        ),
    ],
)
async def test_bad_parameters_are_refused_and_nothing_applied(
    hosts: Hosts,
    engine: FaultEngine,
    tmp_path: Path,
    kind: str,
    params: dict[str, object],
    message: str,
) -> None:
    with pytest.raises(FaultInvalid) as caught:
        await engine.apply(kind, hosts.server_target, params)
    assert message in str(caught.value)
    assert engine.active() == []
    assert Ledger(tmp_path / "ledger.jsonl").load() == {}


def test_byte_quantities_and_mem_available() -> None:
    assert mem_available() > 0
    assert parse_bytes("1Gi") == 1 << 30 and parse_bytes("1G") == 10**9
    assert parse_bytes("1.5Mi") == 3 << 19


# --- the stressor on its own ----------------------------------------------------------


def stressor(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        (sys.executable, "-m", "agent.faults.stressor", *args),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)},
    )


@pytest.fixture
def stressors() -> Iterator[list[subprocess.Popen[str]]]:
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for proc in procs:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait(timeout=5)


async def test_stressor_exits_by_itself_at_max_seconds(
    stressors: list[subprocess.Popen[str]],
) -> None:
    mark = f"seismo-fault=stressor-test-{uuid.uuid4().hex[:6]}"
    proc = stressor("--cpu-workers", "1", "--cpu-load", "5", "--max-seconds", "1", mark)
    stressors.append(proc)
    assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
    assert len(find_marked(mark)) == 2
    await until(lambda: proc.poll() is not None, WAIT, what="the stressor to exit")
    assert proc.returncode == 0
    await until(lambda: find_marked(mark) == [], WAIT, what="its worker to exit")


async def test_stressor_stops_on_sigterm(stressors: list[subprocess.Popen[str]]) -> None:
    mark = f"seismo-fault=stressor-test-{uuid.uuid4().hex[:6]}"
    proc = stressor("--cpu-workers", "2", "--cpu-load", "5", "--max-seconds", "60", mark)
    stressors.append(proc)
    assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
    proc.send_signal(signal.SIGTERM)
    await until(lambda: proc.poll() is not None, WAIT, what="the stressor to exit")
    assert proc.returncode == 0
    assert find_marked(mark) == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--max-seconds", "5", "no-marker"), "the marker must start with seismo-fault="),
        (("--cpu-load", "0", "--max-seconds", "5", "seismo-fault=x"), "--cpu-load must be"),
        (("--cgroup", "/etc/passwd", "--max-seconds", "5", "seismo-fault=x"), "cgroup.procs"),
    ],
)
def test_stressor_rejects_bad_arguments(args: tuple[str, ...], message: str) -> None:
    proc = stressor(*args)
    _, err = proc.communicate(timeout=10)
    assert proc.returncode == 2
    assert message in err


# --- fixtures for cgroup targets ------------------------------------------------------


@pytest.fixture
def cgroups() -> Iterator[tuple[str, Path, Path | None]]:
    """A fresh cgroup NAME in the pids (v1) hierarchy, and in the cpu one if there is one."""
    root = Path("/sys/fs/cgroup")
    if not (root / "pids" / "cgroup.procs").is_file():
        pytest.skip("not a cgroup v1 node (this test sets a v1 CPU quota)")
    name = f"seismo-test-{uuid.uuid4().hex[:6]}"
    made: list[Path] = []
    try:
        for hierarchy in ("pids", "cpu"):
            if (root / hierarchy / "cgroup.procs").is_file():
                (root / hierarchy / name).mkdir()
                made.append(root / hierarchy / name)
        yield name, made[0], made[1] if len(made) > 1 else None
    finally:
        for path in made:
            for _ in range(100):  # bounded: its processes are being killed
                with contextlib.suppress(OSError):
                    path.rmdir()
                    break
                for pid in (path / "cgroup.procs").read_text().split():
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(int(pid), signal.SIGKILL)
                time.sleep(0.05)
