"""The fault engine's guarantees, on a real kernel, with network faults as the vehicle.

Ledger first, the inverse run after a failed apply, TTL expiry, the dead man's switch, the
kill switch, reconcile after a crash (simulated, and a real SIGKILL of another process),
the orphan sweep, validation that applies nothing, the blast-radius policy, the capability
preflight, and a ledger that survives torn and corrupt lines.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from agent.faults import engine as engine_module
from agent.faults.engine import FaultFailed, FaultInvalid, FaultRefused
from agent.faults.kinds.network import Loss
from agent.faults.ledger import Ledger
from agent.faults.preflight import Capabilities
from agent.faults.steps import Plan, Run
from agent.faults.targets import Target
from tests.agent.faults.conftest import EngineFactory, Hosts, sh
from tests.agent.faults.netcheck import (
    HTTP,
    all_tables,
    assert_clean,
    probe_one,
    pyenv,
    seismo_qdiscs,
    seismo_tables,
)

pytestmark = pytest.mark.netns

PORT = 18090


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


LOSS = {"percent": 100}


# --- ledger first -------------------------------------------------------------------------


class _LedgerWitness(Loss):
    """network_loss whose first apply step only succeeds if the ledger already holds the
    fault's intent: proof, from inside the apply, that the ledger was written first."""

    name = "witnessed_loss"

    def __init__(self, ledger: Path) -> None:
        self.ledger = ledger

    def plan(self, fault_id: str, params: Any, target: Target, caps: Capabilities) -> Plan:
        plan = super().plan(fault_id, params, target, caps)
        witness = Run(("grep", "-q", f'"id":"{fault_id}"', str(self.ledger)))
        return Plan((witness, *plan.apply), plan.revert, plan.facts)


class _FailsHalfway(Loss):
    """network_loss whose second apply step fails, after the nft table is in place."""

    name = "failing_loss"

    def plan(self, fault_id: str, params: Any, target: Target, caps: Capabilities) -> Plan:
        plan = super().plan(fault_id, params, target, caps)
        return Plan((*plan.apply, Run(("false",))), plan.revert, plan.facts)


async def test_the_intent_and_its_inverse_are_durable_before_any_apply_step(
    hosts: Hosts, make_engine: EngineFactory
) -> None:
    engine = make_engine(
        [hosts.client_target], kinds={"witnessed_loss": _LedgerWitness(make_engine.ledger)}
    )
    entry = await engine.apply("witnessed_loss", hosts.client_target, LOSS, ttl=60)
    assert entry.state == "applied"
    intent = json.loads(make_engine.ledger.read_text().splitlines()[0])
    assert intent["event"] == "intent"
    assert intent["entry"]["revert"][0]["argv"][:3] == ["nft", "delete", "table"]
    assert make_engine.events() == [("intent", entry.id), ("applied", entry.id)]
    await engine.revert(entry.id, "rollback")
    assert_clean(hosts.client)


async def test_a_failed_apply_is_recorded_and_its_inverse_runs_at_once(
    hosts: Hosts, make_engine: EngineFactory
) -> None:
    engine = make_engine([hosts.client_target], kinds={"failing_loss": _FailsHalfway()})
    with pytest.raises(FaultFailed, match=r"applying failing_loss to netns:.* failed: false"):
        await engine.apply("failing_loss", hosts.client_target, LOSS, ttl=60)
    (fault_id,) = {fault_id for _, fault_id in make_engine.events()}
    assert make_engine.events() == [
        ("intent", fault_id),
        ("failed", fault_id),
        ("reverted", fault_id),
    ]
    assert_clean(hosts.client)  # the nft table of the first step was taken away
    assert engine.active() == []


# --- TTL, dead man's switch, kill switch ---------------------------------------------------


async def test_ttl_expiry_reverts(hosts: Hosts, make_engine: EngineFactory) -> None:
    clock = Clock()
    engine = make_engine([hosts.client_target], clock=clock)
    entry = await engine.apply("network_loss", hosts.client_target, LOSS, ttl=10)
    clock.now += 9
    await engine.tick()
    assert engine.active() == [entry]
    assert len(seismo_tables(hosts.client)) == 1

    clock.now += 2
    await engine.tick()
    gone = engine.get(entry.id)
    assert gone is not None and (gone.state, gone.end_reason) == ("reverted", "ttl")
    assert_clean(hosts.client)
    assert engine.stats.reverted == {("network_loss", "ttl"): 1}


async def test_dead_mans_switch_reverts_a_silent_run_and_keeps_a_live_one(
    hosts: Hosts, make_engine: EngineFactory
) -> None:
    clock = Clock()
    engine = make_engine(
        [hosts.client_target, hosts.server_target], clock=clock, heartbeat_timeout="30s"
    )
    silent = await engine.apply("network_loss", hosts.client_target, LOSS, ttl=600, owner="run:x")
    alive = await engine.apply("network_loss", hosts.server_target, LOSS, ttl=600, owner="run:y")
    for _ in range(3):  # run:y beats every 20 s; run:x never does
        clock.now += 20
        assert engine.heartbeat("run:y") == 1
        await engine.tick()

    dead = engine.get(silent.id)
    assert dead is not None and (dead.state, dead.end_reason) == ("reverted", "dead_man")
    assert_clean(hosts.client)
    assert engine.active() == [alive]
    assert len(seismo_tables(hosts.server)) == 1


async def test_kill_switch_reverts_everything_now(hosts: Hosts, make_engine: EngineFactory) -> None:
    engine = make_engine([hosts.client_target, hosts.server_target])
    await engine.apply("network_loss", hosts.client_target, {"percent": 5}, ttl=600)
    await engine.apply("network_blackhole", hosts.client_target, {"port": 9}, ttl=600)
    await engine.apply("network_bandwidth", hosts.server_target, {"rate": "10mbit"}, ttl=600)
    assert len(seismo_tables(hosts.client)) == 2 and len(seismo_qdiscs(hosts.server)) == 1

    cleared = await engine.clear()
    assert sorted(e.end_reason or "" for e in cleared) == ["kill_switch"] * 3
    assert engine.active() == []
    assert_clean(hosts.client, hosts.server)


# --- reconcile ---------------------------------------------------------------------------


async def test_reconcile_after_a_crash_reverts_what_the_ledger_holds(
    hosts: Hosts, make_engine: EngineFactory
) -> None:
    await hosts.serve_http(PORT)
    url = f"http://{hosts.server_ip}:{PORT}/"
    crashed = make_engine([hosts.client_target, hosts.server_target])
    loss = await crashed.apply("network_loss", hosts.client_target, LOSS, ttl=600)
    cap = await crashed.apply("network_bandwidth", hosts.server_target, {"rate": "1mbit"}, ttl=600)
    make_engine.made.remove(crashed)  # gone without reverting: a kill -9 of the agent
    del crashed
    assert await probe_one(hosts.client, HTTP, url, 1) == "connect_timeout"

    restarted = make_engine([hosts.client_target, hosts.server_target])
    reverted = await restarted.reconcile()
    assert {(e.id, e.end_reason) for e in reverted} == {
        (loss.id, "reconcile"),
        (cap.id, "reconcile"),
    }
    assert_clean(hosts.client, hosts.server)
    assert await probe_one(hosts.client, HTTP, url, 2) == "success"
    # compacted: nothing active is left in the file
    assert make_engine.ledger.read_text() == ""


async def test_orphan_sweep_removes_only_what_is_seismos(
    hosts: Hosts, make_engine: EngineFactory
) -> None:
    # left behind with no ledger entry (e.g. a crash between apply and the ledger's fsync)
    sh("nft", "add", "table", "inet", "seismo_orphan", netns=hosts.client)
    sh("nft", "add", "table", "inet", "not_ours", netns=hosts.client)
    sh(
        "tc", "qdisc", "add", "dev", hosts.server_if, "root", "handle", "5e15:",
        "tbf", "rate", "1mbit", "burst", "32kb", "latency", "50ms",
        netns=hosts.server,
    )  # fmt: skip
    helper = hosts.spawn(
        hosts.client, sys.executable, "-c", "import time; time.sleep(60)", "seismo-fault=orphan-1"
    )

    engine = make_engine([hosts.client_target, hosts.server_target])
    assert await engine.reconcile() == []
    assert_clean(hosts.client, hosts.server)
    assert all_tables(hosts.client) == ["table inet not_ours"]
    assert await asyncio.to_thread(helper.wait, 10) is not None


async def test_reconcile_after_a_real_sigkill_of_the_process_holding_the_engine(
    hosts: Hosts, make_engine: EngineFactory, capabilities: Capabilities
) -> None:
    await hosts.serve_http(PORT)
    url = f"http://{hosts.server_ip}:{PORT}/"
    code = (
        "import asyncio, json, sys\n"
        "from pathlib import Path\n"
        "from agent.faults.engine import FaultEngine\n"
        "from agent.faults.kinds import all_kinds\n"
        "from agent.faults.ledger import Ledger\n"
        "from agent.faults.preflight import Capabilities\n"
        "from agent.faults.settings import FaultSettings\n"
        "from agent.faults.targets import TargetResolver\n"
        "async def main():\n"
        "    path, target, caps, port = sys.argv[1:5]\n"
        "    engine = FaultEngine(Ledger(Path(path)), TargetResolver([target]),\n"
        "        FaultSettings(allowed_targets=[target]),\n"
        "        Capabilities(frozenset(json.loads(caps))), all_kinds())\n"
        "    entry = await engine.apply('network_blackhole', target, {'port': int(port)},\n"
        "        ttl=600, owner='run:doomed')\n"
        "    print(entry.id, flush=True)\n"
        "    await asyncio.Event().wait()\n"
        "asyncio.run(main())\n"
    )
    agent = subprocess.Popen(
        (
            sys.executable, "-c", code, str(make_engine.ledger), hosts.client_target,
            json.dumps(sorted(capabilities.present)), str(PORT),
        ),
        stdout=subprocess.PIPE,
        env=pyenv(),
    )  # fmt: skip
    try:
        assert agent.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(agent.stdout.readline), 20)
        fault_id = line.decode().strip()
        assert fault_id.startswith("network-blackhole-")
        agent.send_signal(signal.SIGKILL)
        assert await asyncio.to_thread(agent.wait, 10) == -signal.SIGKILL
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait(10)
    # the fault outlived its agent: this is what reconcile is for
    assert len(seismo_tables(hosts.client)) == 1
    assert await probe_one(hosts.client, HTTP, url, 1) == "connect_timeout"

    restarted = make_engine([hosts.client_target])
    reverted = await restarted.reconcile()
    assert [(e.id, e.end_reason) for e in reverted] == [(fault_id, "reconcile")]
    assert_clean(hosts.client)
    assert await probe_one(hosts.client, HTTP, url, 2) == "success"


# --- validation and policy: nothing is applied ---------------------------------------------


@pytest.mark.parametrize(
    ("kind", "target", "params", "ttl", "message"),
    [
        ("network_loss", "client", {"percent": 10, "peer": "10.211.0.0/33"}, 60, "peer: '10.211"),
        ("network_loss", "client", {"percent": 150}, 60, "percent: Input should be less"),
        ("network_loss", "client", {"percent": 10}, 7200, "ttl 7200s must be > 0 and <= faults"),
        ("network_loss", "client", {"percent": 10}, 0, "ttl 0s must be > 0"),
        ("network_loss", "missing", {"percent": 10}, 60, "no network namespace named"),
        ("network_loss", "server", {"percent": 10}, 60, "is not allowed (allowed targets:"),
        ("network_loss", "bogus", {"percent": 10}, 60, "must be netns:NAME or cgroup:/PATH"),
        ("network_latency_x", "client", {}, 60, "unknown fault kind 'network_latency_x'"),
    ],
)
async def test_bad_input_is_refused_and_nothing_is_applied(
    kind: str,
    target: str,
    params: dict[str, Any],
    ttl: float,
    message: str,
    hosts: Hosts,
    make_engine: EngineFactory,
) -> None:
    spec = {
        "client": hosts.client_target,
        "server": hosts.server_target,
        "missing": "netns:st-missing-1",
        "bogus": "/proc/1/ns/net",
    }[target]
    engine = make_engine([hosts.client_target, "netns:st-missing-*"], max_ttl="1h")
    with pytest.raises(FaultInvalid) as caught:
        await engine.apply(kind, spec, params, ttl=ttl)
    assert message in str(caught.value), str(caught.value)
    assert not make_engine.ledger.exists()  # the ledger is untouched
    assert engine.active() == []
    assert all_tables(hosts.client) == [] and all_tables(hosts.server) == []


async def test_max_concurrent_refuses_one_more(hosts: Hosts, make_engine: EngineFactory) -> None:
    engine = make_engine([hosts.client_target], max_concurrent=1)
    await engine.apply("network_loss", hosts.client_target, {"percent": 1}, ttl=60)
    with pytest.raises(FaultRefused, match=r"faults.max_concurrent \(1\)"):
        await engine.apply("network_blackhole", hosts.client_target, {"port": 9}, ttl=60)
    assert len(seismo_tables(hosts.client)) == 1
    assert engine.stats.refused == {"network_blackhole": 1}


async def test_a_missing_capability_is_refused_by_name(
    hosts: Hosts, make_engine: EngineFactory
) -> None:
    caps = Capabilities(
        frozenset({"root", "nsenter", "netns"}), {"nftables": "nft: command not found"}
    )
    engine = make_engine([hosts.client_target], caps=caps)
    with pytest.raises(FaultRefused, match="cannot apply network_loss: missing nftables: nft: co"):
        await engine.apply("network_loss", hosts.client_target, LOSS, ttl=60)
    with pytest.raises(FaultRefused, match="missing tbf: not available"):
        await engine.apply("network_bandwidth", hosts.client_target, {"rate": "1mbit"}, ttl=60)
    assert not make_engine.ledger.exists()
    assert_clean(hosts.client)


# --- the ledger file -----------------------------------------------------------------------


async def test_a_torn_last_line_is_tolerated_and_repaired(
    hosts: Hosts, make_engine: EngineFactory
) -> None:
    crashed = make_engine([hosts.client_target])
    entry = await crashed.apply("network_loss", hosts.client_target, LOSS, ttl=600)
    make_engine.made.remove(crashed)
    with make_engine.ledger.open("a") as f:
        f.write('{"event":"reverted","id":"' + entry.id)  # the crash hit mid-write

    ledger = Ledger(make_engine.ledger)
    assert ledger.load()[entry.id].state == "applied"  # the torn line is ignored
    # the next append starts on a fresh line: the torn bytes never swallow a real record
    ledger.reverted(entry.id, "rollback")
    assert ledger.load()[entry.id].state == "reverted"
    assert all(json.loads(line) for line in make_engine.ledger.read_text().splitlines())
    sh("nft", "delete", "table", "inet", f"seismo_{entry.id.replace('-', '_')}", netns=hosts.client)


async def test_a_torn_last_line_does_not_stop_reconcile(
    hosts: Hosts, make_engine: EngineFactory
) -> None:
    crashed = make_engine([hosts.client_target])
    entry = await crashed.apply("network_loss", hosts.client_target, LOSS, ttl=600)
    make_engine.made.remove(crashed)
    with make_engine.ledger.open("a") as f:
        f.write('{"event":"reve')

    restarted = make_engine([hosts.client_target])
    assert [e.id for e in await restarted.reconcile()] == [entry.id]
    assert restarted.ledger_problems == []
    assert_clean(hosts.client)


async def test_a_corrupt_middle_line_is_kept_reported_and_does_not_hide_faults(
    hosts: Hosts, make_engine: EngineFactory
) -> None:
    crashed = make_engine([hosts.client_target])
    first = await crashed.apply("network_loss", hosts.client_target, {"percent": 5}, ttl=600)
    with make_engine.ledger.open("a") as f:
        f.write("this line is not JSON\n")
    second = await crashed.apply("network_blackhole", hosts.client_target, {"port": 9}, ttl=600)
    make_engine.made.remove(crashed)

    restarted = make_engine([hosts.client_target])
    reverted = await restarted.reconcile()
    # both faults around the bad line are reverted, not forgotten
    assert sorted(e.id for e in reverted) == sorted([first.id, second.id])
    assert_clean(hosts.client)
    assert len(restarted.ledger_problems) == 1
    assert f"{make_engine.ledger}:3:" in restarted.ledger_problems[0]
    # the bad line stays in the file for a person to look at
    assert "this line is not JSON\n" in make_engine.ledger.read_text()


async def test_a_long_running_engine_bounds_its_history_and_ledger(
    hosts: Hosts, make_engine: EngineFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(engine_module, "HISTORY", 2)
    monkeypatch.setattr(engine_module, "LEDGER_COMPACT_BYTES", 0)
    engine = make_engine([hosts.client_target])
    ids = []
    for _ in range(3):
        entry = await engine.apply("network_loss", hosts.client_target, LOSS, ttl=60)
        await engine.revert(entry.id, "rollback")
        ids.append(entry.id)
    assert engine.get(ids[0]) is None  # the oldest history is dropped
    assert [engine.get(i).state for i in ids[1:]] == ["reverted", "reverted"]  # type: ignore[union-attr]
    assert make_engine.events() == []  # compacted once nothing was active
    assert_clean(hosts.client)
