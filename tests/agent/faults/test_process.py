"""Process faults against real processes in the test hosts' network namespaces.

Every process signalled here is one these tests started inside a namespace (or a cgroup) they
created; the fixtures kill them and delete the namespaces at teardown.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from agent.faults.engine import FaultEngine, FaultInvalid, FaultRefused
from agent.faults.kinds import all_kinds
from agent.faults.kinds.process import match_processes, parse_signal
from agent.faults.ledger import Ledger
from agent.faults.preflight import Capabilities
from agent.faults.settings import FaultSettings
from agent.faults.targets import Target, TargetResolver
from tests.agent.faults.conftest import EngineFactory, Hosts
from tests.waiting import until

WAIT = 5.0


def state(pid: int) -> str:
    """The one-letter state of /proc/PID/stat ('' once gone)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return ""


async def started(proc: subprocess.Popen[bytes], comm: str) -> int:
    """Wait until ``ip netns exec`` has exec'd into the program (its comm is ``comm``)."""

    def ready() -> bool:
        try:
            return Path(f"/proc/{proc.pid}/comm").read_text().strip() == comm
        except OSError:
            return False

    await until(ready, WAIT, what=f"pid {proc.pid} to become {comm}")
    return proc.pid


async def exited(proc: subprocess.Popen[bytes]) -> int:
    await until(lambda: proc.poll() is not None, WAIT, what=f"pid {proc.pid} to exit")
    assert proc.returncode is not None
    return proc.returncode


def nothing_recorded(engine: FaultEngine, ledger: Path) -> None:
    assert engine.active() == []
    assert Ledger(ledger).load() == {}


# --- process_kill ---------------------------------------------------------------------


async def test_kill_hits_the_target_only(hosts: Hosts, make_engine: EngineFactory) -> None:
    inside = hosts.spawn(hosts.server, "sleep", "300")
    outside = hosts.spawn(hosts.client, "sleep", "300")  # same name, other namespace
    await started(inside, "sleep")
    await started(outside, "sleep")
    engine = make_engine([hosts.server_target, hosts.client_target])

    entry = await engine.apply("process_kill", hosts.server_target, {"name": "sleep"}, ttl=30)

    assert await exited(inside) == -signal.SIGKILL
    assert outside.poll() is None and state(outside.pid) in ("S", "R")
    assert entry.facts["killed"] == [inside.pid]
    # instant: nothing to undo, so it is out of the active set at once
    assert entry.state == "reverted" and entry.end_reason == "instant"
    assert engine.active() == []
    assert engine.stats.reverted[("process_kill", "instant")] == 1


async def test_kill_respects_max_processes_and_signal(
    hosts: Hosts, make_engine: EngineFactory
) -> None:
    procs = [hosts.spawn(hosts.server, "sleep", "300") for _ in range(3)]
    for proc in procs:
        await started(proc, "sleep")
    engine = make_engine([hosts.server_target])
    by_pid = {p.pid: p for p in procs}

    first = await engine.apply("process_kill", hosts.server_target, {"name": "sleep"}, ttl=30)
    assert first.facts["matched"] == 3 and len(first.facts["killed"]) == 1  # default: one
    assert await exited(by_pid[first.facts["killed"][0]]) == -signal.SIGKILL

    second = await engine.apply(
        "process_kill",
        hosts.server_target,
        {"name": "sleep", "max_processes": 5, "signal": "term"},
        ttl=30,
    )
    assert second.params["signal"] == "SIGTERM"
    assert sorted(second.facts["killed"]) == sorted(set(by_pid) - set(first.facts["killed"]))
    for pid in second.facts["killed"]:
        assert await exited(by_pid[pid]) == -signal.SIGTERM


async def test_kill_matches_argv0_and_regex(hosts: Hosts, make_engine: EngineFactory) -> None:
    # comm stays "sleep"; argv[0] becomes "seismo-worker-7" (bash's exec -a)
    renamed = hosts.spawn(hosts.server, "bash", "-c", "exec -a seismo-worker-7 sleep 300")
    plain = hosts.spawn(hosts.server, "tail", "-f", "/dev/null")
    await started(renamed, "sleep")
    await started(plain, "tail")
    engine = make_engine([hosts.server_target])

    entry = await engine.apply(
        "process_kill", hosts.server_target, {"name_regex": r"seismo-worker-\d+"}, ttl=30
    )

    assert entry.facts["killed"] == [renamed.pid]
    assert await exited(renamed) == -signal.SIGKILL
    assert plain.poll() is None
    with pytest.raises(FaultRefused, match="no process named 'seismo-worker'"):
        # exact names are exact: a prefix does not match
        await engine.apply("process_kill", hosts.server_target, {"name": "seismo-worker"})
    assert plain.poll() is None


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"name": "sleep", "signal": "SIGFOO"}, "signal: 'SIGFOO' is not a signal"),
        ({"name": "sleep", "signal": 999}, "signal: 999 is not a signal number"),
        ({"name": "sleep", "signal": "STOP"}, "SIGSTOP would leave processes stopped"),
        ({"name_regex": "(unclosed"}, "name_regex: '(unclosed' is not a valid regular"),
        ({"name": "sleep", "max_processes": 0}, "max_processes: Input should be greater"),
        ({"name": "sleep", "max_processes": 1000}, "max_processes: Input should be less"),
        ({"name": "sleep", "name_regex": "s.*"}, "exactly one of name or name_regex"),
        ({}, "exactly one of name or name_regex"),
        ({"name": "/bin/sleep"}, "name: '/bin/sleep' is not a process name"),
        ({"name": "sleep", "pid": 1}, "pid: unknown parameter"),
    ],
)
async def test_bad_parameters_are_refused_and_nothing_applied(
    hosts: Hosts,
    make_engine: EngineFactory,
    tmp_path: Path,
    params: dict[str, object],
    message: str,
) -> None:
    victim = hosts.spawn(hosts.server, "sleep", "300")
    await started(victim, "sleep")
    engine = make_engine([hosts.server_target])
    with pytest.raises(FaultInvalid) as caught:
        await engine.apply("process_kill", hosts.server_target, params)
    assert message in str(caught.value)
    assert str(caught.value).startswith("process_kill: ")
    assert state(victim.pid) in ("S", "R")
    nothing_recorded(engine, tmp_path / "ledger.jsonl")


async def test_no_matching_process_is_refused_not_a_silent_no_op(
    hosts: Hosts, make_engine: EngineFactory, tmp_path: Path
) -> None:
    engine = make_engine([hosts.server_target])
    with pytest.raises(FaultRefused, match="no process matching 'nothing-here' in target"):
        await engine.apply("process_pause", hosts.server_target, {"name_regex": "nothing-here"})
    nothing_recorded(engine, tmp_path / "ledger.jsonl")


def test_signal_names_and_numbers() -> None:
    assert parse_signal("SIGTERM") == parse_signal("term") == parse_signal(15) == "SIGTERM"
    assert parse_signal("9") == "SIGKILL"
    for bad in ("SIG_DFL", "", True, 0):
        with pytest.raises(ValueError):
            parse_signal(bad)


def test_never_the_agent_its_ancestors_pid_1_or_a_helper(tmp_path: Path) -> None:
    """Even a target that lists them (a cgroup the agent shares) never yields them."""
    child = subprocess.Popen(("sleep", "300"))
    helper = subprocess.Popen(("sleep", "300", "seismo-fault=test-helper"))
    try:
        procs = tmp_path / "cgroup.procs"
        listed = [1, os.getpid(), os.getppid(), child.pid, helper.pid]
        procs.write_text("".join(f"{p}\n" for p in listed))
        target = Target("cgroup:/t", "cgroup", "/t", "/proc/self/ns/net", str(procs))
        assert [pid for pid, _ in match_processes(target, name_regex=".*")] == [child.pid]
    finally:
        for proc in (child, helper):
            proc.kill()
            proc.wait(timeout=5)


# --- process_pause --------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def clocked_engine(
    hosts: Hosts, tmp_path: Path, caps: Capabilities, clock: Clock, ledger: str = "ledger.jsonl"
) -> FaultEngine:
    allowed = [hosts.server_target]
    return FaultEngine(
        Ledger(tmp_path / ledger),
        TargetResolver(allowed),
        FaultSettings(allowed_targets=allowed, heartbeat_timeout=10),
        caps,
        all_kinds(),
        clock=clock,
    )


@pytest.fixture
async def paused_engines(
    hosts: Hosts, tmp_path: Path, capabilities: Capabilities
) -> AsyncIterator[tuple[FaultEngine, Clock]]:
    clock = Clock()
    engine = clocked_engine(hosts, tmp_path, capabilities, clock)
    try:
        yield engine, clock
    finally:
        await engine.clear("test_teardown")


async def test_pause_and_every_way_of_resuming(
    hosts: Hosts,
    paused_engines: tuple[FaultEngine, Clock],
    tmp_path: Path,
    capabilities: Capabilities,
) -> None:
    engine, clock = paused_engines
    proc = hosts.spawn(hosts.server, "sleep", "300")
    pid = await started(proc, "sleep")
    target = hosts.server_target

    async def pause(**kw: object) -> str:
        entry = await engine.apply("process_pause", target, {"name_regex": "sl(ee)?p"}, **kw)  # type: ignore[arg-type]
        assert entry.facts["paused"] == [pid]
        await until(lambda: state(pid) == "T", WAIT, what="the process to stop")
        return entry.id

    async def resumed() -> None:
        await until(lambda: state(pid) in ("S", "R"), WAIT, what="the process to run again")

    # rollback
    fault = await pause(ttl=60)
    await engine.revert(fault, "rollback")
    await resumed()

    # TTL expiry, on the engine's clock
    fault = await pause(ttl=10)
    clock.now += 9
    await engine.tick()
    assert state(pid) == "T"
    clock.now += 2
    await engine.tick()
    await resumed()
    assert (entry := engine.get(fault)) is not None and entry.end_reason == "ttl"

    # dead man's switch: the owning run stops sending heartbeats
    fault = await pause(ttl=60, owner="run:r1")
    clock.now += 11
    await engine.tick()
    await resumed()
    assert (entry := engine.get(fault)) is not None and entry.end_reason == "dead_man"

    # kill switch
    await pause(ttl=60)
    assert [e.end_reason for e in await engine.clear()] == ["kill_switch"]
    await resumed()

    # a crashed agent: a new engine on the same ledger resumes it at reconcile
    fault = await pause(ttl=60)
    restarted = clocked_engine(hosts, tmp_path, capabilities, clock)
    await restarted.reconcile()
    await resumed()
    assert (entry := restarted.get(fault)) is not None and entry.end_reason == "reconcile"
    assert proc.poll() is None


async def test_resume_never_signals_a_recycled_pid(
    hosts: Hosts, paused_engines: tuple[FaultEngine, Clock]
) -> None:
    """If the paused process is gone, its revert must not touch whoever has its pid now."""
    engine, _ = paused_engines
    proc = hosts.spawn(hosts.server, "sleep", "300")
    pid = await started(proc, "sleep")
    entry = await engine.apply("process_pause", hosts.server_target, {"name": "sleep"}, ttl=60)
    await until(lambda: state(pid) == "T", WAIT, what="the process to stop")
    proc.kill()
    await exited(proc)
    reverted = await engine.revert(entry.id, "rollback")  # the pid is gone: skipped, not an error
    assert reverted is not None and reverted.state == "reverted"


# --- cgroup targets -------------------------------------------------------------------


@pytest.fixture
def pids_cgroup() -> Iterator[str]:
    """A fresh cgroup in the pids hierarchy (v1) or the unified one; removed at teardown."""
    name = f"seismo-test-{uuid.uuid4().hex[:6]}"
    for base in (Path("/sys/fs/cgroup/pids"), Path("/sys/fs/cgroup")):
        if (base / "cgroup.procs").is_file() and os.access(base, os.W_OK):
            break
    else:
        pytest.skip("no writable cgroup hierarchy")
    path = base / name
    try:
        path.mkdir()
    except OSError as exc:
        pytest.skip(f"cannot create a cgroup: {exc}")
    try:
        yield name
    finally:
        for _ in range(100):  # its processes are killed by the hosts fixture first
            with contextlib.suppress(OSError):
                path.rmdir()
                break
            for pid in (path / "cgroup.procs").read_text().split():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)
            time.sleep(0.05)


async def test_kill_in_a_cgroup_target(
    hosts: Hosts,
    pids_cgroup: str,
    make_engine: EngineFactory,
) -> None:
    inside = hosts.spawn(hosts.server, "sleep", "300")
    outside = hosts.spawn(hosts.server, "sleep", "300")  # same netns, other cgroup
    await started(inside, "sleep")
    await started(outside, "sleep")
    base = Path("/sys/fs/cgroup/pids")
    base = base if base.is_dir() else Path("/sys/fs/cgroup")
    (base / pids_cgroup / "cgroup.procs").write_text(str(inside.pid))
    engine = make_engine([f"cgroup:/{pids_cgroup}"])

    entry = await engine.apply("process_kill", f"cgroup:/{pids_cgroup}", {"name": "sleep"})

    assert entry.facts["killed"] == [inside.pid]
    assert await exited(inside) == -signal.SIGKILL
    assert outside.poll() is None
