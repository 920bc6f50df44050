"""Faults through a real agent, as a user drives them: the CLI, the API, experiments.

The agent runs INSIDE the client test namespace (so its faults and the probes of an
experiment share the path to the server namespace); the test talks to it with
``ip netns exec CLIENT seismo ...``. Covers: apply/list/clear, the allowlist and bad input,
SIGKILL of the agent then a restart (reconcile), ``faults clear --local`` with the agent dead,
an experiment whose guardrail catches the fault and whose rollback reverts it, SIGTERM of a
run (rollback) and SIGKILL of a run (dead man's switch).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.agent.faults.conftest import ENV, Hosts, sh
from tests.waiting import wait_until

ROOT = Path(__file__).parent.parent.parent.parent
TOKEN = "fault-test-token-0123456789"
EXPERIMENT = ROOT / "experiments" / "network-partition-guardrail.yaml"


def _pyenv() -> dict[str, str]:
    return {**ENV, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}


def seismo_tables(netns: str) -> list[str]:
    out = sh("nft", "list", "tables", netns=netns, check=False).stdout
    return [line for line in out.splitlines() if "seismo_" in line]


@dataclass
class NsAgent:
    hosts: Hosts
    config: Path
    data_dir: Path
    proc: subprocess.Popen[str] | None = None
    url: str = ""

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                self.hosts.client,
                sys.executable,
                "-m",
                "agent",
                "agent",
                "--config",
                str(self.config),
                "--listen",
                "127.0.0.1:0",
                "--data-dir",
                str(self.data_dir),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=_pyenv(),
            cwd=ROOT,
        )
        assert self.proc.stdout is not None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            m = re.search(r"metrics\s+(http://\S+)/metrics", line)
            if m:
                self.url = m.group(1)
                return
        raise AssertionError(
            f"agent did not start: {self.proc.stderr.read() if self.proc.stderr else ''}"
        )

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)

    def seismo(self, *args: str, token: bool = True) -> subprocess.CompletedProcess[str]:
        """``seismo ARGS`` inside the client namespace, pointed at this agent."""
        env = {**_pyenv(), "SEISMO_AGENT_URL": self.url}
        if token:
            env["SEISMO_TOKEN"] = TOKEN
        return subprocess.run(
            ["ip", "netns", "exec", self.hosts.client, sys.executable, "-m", "agent", *args],
            capture_output=True,
            text=True,
            env=env,
            cwd=ROOT,
            timeout=60,
            check=False,
        )

    def api(self, path: str) -> Any:
        code = (
            f"import json, urllib.request; print(urllib.request.urlopen("
            f"{self.url + path!r}, timeout=10).read().decode())"
        )
        out = subprocess.run(
            ["ip", "netns", "exec", self.hosts.client, sys.executable, "-c", code],
            capture_output=True,
            text=True,
            env=_pyenv(),
            timeout=30,
            check=True,
        )
        return out.stdout if path == "/metrics" else json.loads(out.stdout)

    def faults(self) -> list[dict[str, Any]]:
        return list(self.api("/api/v1/faults")["faults"])


@pytest.fixture
def ns_agent(hosts: Hosts, tmp_path: Path) -> Iterator[NsAgent]:
    config = tmp_path / "agent.yaml"
    config.write_text(f"""
agent: {{watch_config: false}}
api: {{token: {TOKEN}}}
faults:
  allowed_targets: ["netns:{hosts.client}"]
  max_ttl: 5m
  heartbeat_timeout: 2s
""")
    agent = NsAgent(hosts, config, tmp_path / "data")
    agent.start()
    try:
        yield agent
    finally:
        agent.stop()
        # never leave a fault behind, whatever the test did
        subprocess.run(
            [
                sys.executable,
                "-m",
                "agent",
                "faults",
                "clear",
                "--local",
                "--data-dir",
                str(agent.data_dir),
                "--config",
                str(config),
            ],
            capture_output=True,
            env=_pyenv(),
            cwd=ROOT,
            timeout=60,
            check=False,
        )


def probe_ok(agent: NsAgent, url: str) -> bool:
    return agent.seismo("probe", "http", url, "--timeout", "1").returncode == 0


async def test_cli_apply_list_and_kill_switch(ns_agent: NsAgent, hosts: Hosts) -> None:
    await hosts.serve_http(8080)
    url = f"http://{hosts.server_ip}:8080/"
    assert probe_ok(ns_agent, url)
    res = ns_agent.seismo(
        "faults",
        "apply",
        "network_blackhole",
        hosts.client_target,
        "-p",
        f"peer={hosts.server_ip}",
        "--ttl",
        "60s",
    )
    assert res.returncode == 0, res.stderr
    assert "network_blackhole" in res.stdout and "owner=api" in res.stdout
    assert seismo_tables(hosts.client)
    probe = ns_agent.seismo("probe", "http", url, "--timeout", "1")
    assert probe.returncode == 1 and "connect_timeout" in probe.stdout
    listed = ns_agent.seismo("faults", "list", "--json")
    assert len(json.loads(listed.stdout)["faults"]) == 1
    metrics = ns_agent.api("/metrics")
    assert re.search(
        r'seismo_faults_active\{kind="network_blackhole",target="netns:[^"]+"\} 1', metrics
    )
    assert 'seismo_fault_capability{capability="nftables"} 1' in metrics

    res = ns_agent.seismo("faults", "clear")
    assert res.returncode == 0 and "1 faults reverted" in res.stdout
    assert seismo_tables(hosts.client) == []
    assert probe_ok(ns_agent, url)
    assert (
        'seismo_faults_reverted_total{kind="network_blackhole",reason="kill_switch"} 1'
        in ns_agent.api("/metrics")
    )


def test_bad_requests_are_refused_and_apply_nothing(ns_agent: NsAgent, hosts: Hosts) -> None:
    cases = [
        (["network_loss", hosts.client_target, "-p", "percent=150"], "less than or equal to 100"),
        (["network_blackhole", hosts.client_target, "-p", "peer=10.0.0.300"], "not an IP address"),
        (["network_loss", hosts.server_target, "-p", "percent=10"], "is not allowed"),
        (["network_loss", "netns:no-such-ns", "-p", "percent=10"], "is not allowed"),
        (["network_loss", hosts.client_target, "-p", "percent=10", "--ttl", "1h"], "max_ttl"),
        (["network_wobble", hosts.client_target], "unknown fault kind"),
    ]
    for args, message in cases:
        res = ns_agent.seismo("faults", "apply", *args)
        assert res.returncode == 2, (args, res.stdout, res.stderr)
        assert message in res.stderr, (args, res.stderr)
    res = ns_agent.seismo(
        "faults", "apply", "network_loss", hosts.client_target, "-p", "percent=10", token=False
    )
    assert res.returncode == 1 and "401" in res.stderr
    assert ns_agent.faults() == []
    assert seismo_tables(hosts.client) == []


def test_sigkill_of_the_agent_then_restart_reverts(ns_agent: NsAgent, hosts: Hosts) -> None:
    res = ns_agent.seismo(
        "faults",
        "apply",
        "network_loss",
        hosts.client_target,
        "-p",
        "percent=100",
        "-p",
        f"peer={hosts.server_ip}",
        "--ttl",
        "5m",
    )
    assert res.returncode == 0, res.stderr
    ns_agent.kill9()
    assert seismo_tables(hosts.client), "the fault outlives the crash until the agent is back"
    ns_agent.start()  # reconcile on start
    assert seismo_tables(hosts.client) == []
    assert ns_agent.faults() == []


def test_clear_local_reverts_with_the_agent_dead(ns_agent: NsAgent, hosts: Hosts) -> None:
    res = ns_agent.seismo(
        "faults", "apply", "network_reject", hosts.client_target, "-p", f"peer={hosts.server_ip}"
    )
    assert res.returncode == 0, res.stderr
    ns_agent.kill9()
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "agent",
            "faults",
            "clear",
            "--local",
            "--data-dir",
            str(ns_agent.data_dir),
            "--config",
            str(ns_agent.config),
        ],
        capture_output=True,
        text=True,
        env=_pyenv(),
        cwd=ROOT,
        timeout=60,
        check=False,
    )
    assert res.returncode == 0, res.stderr
    assert "1 faults reverted" in res.stdout
    assert seismo_tables(hosts.client) == []


def run_experiment(agent: NsAgent, hosts: Hosts, tmp: Path, peer_ip: str) -> subprocess.Popen[str]:
    env = {
        **_pyenv(),
        "SEISMO_AGENT_URL": agent.url,
        "SEISMO_TOKEN": TOKEN,
        "SEISMO_FAULT_TARGET": hosts.client_target,
        "SEISMO_PEER_IP": peer_ip,
        "SEISMO_PEER_URL": f"http://{hosts.server_ip}:8080/healthz",
    }
    return subprocess.Popen(
        [
            "ip",
            "netns",
            "exec",
            hosts.client,
            sys.executable,
            "-m",
            "agent",
            "run",
            str(EXPERIMENT),
            "--journal",
            str(tmp / "journal.json"),
            "--data-dir",
            str(tmp / "runs"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
        start_new_session=True,
    )


async def test_experiment_guardrail_catches_the_partition_and_rollback_reverts(
    ns_agent: NsAgent, hosts: Hosts, tmp_path: Path
) -> None:
    await hosts.serve_http(8080)
    proc = run_experiment(ns_agent, hosts, tmp_path, hosts.server_ip)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 3, out + err
    journal = json.loads((tmp_path / "journal.json").read_text())
    ext = next(e for e in journal["extensions"] if e["name"] == "seismo")
    assert ext["interruption"]["kind"] == "guardrail"
    assert ext["interruption"]["guardrail"] == "peer-availability"
    assert [f["kind"] for f in ext["faults"]] == ["network_blackhole"]
    fault = ns_agent.api(f"/api/v1/faults/{ext['faults'][0]['id']}")
    assert fault["state"] == "reverted" and fault["end_reason"] == "rollback"
    assert fault["owner"] == f"run:{ext['run_id']}"
    assert seismo_tables(hosts.client) == []


async def test_sigterm_of_a_run_reverts_through_its_rollback(
    ns_agent: NsAgent, hosts: Hosts, tmp_path: Path
) -> None:
    await hosts.serve_http(8080)
    # the partition hits an address nobody uses, so the guardrail stays quiet and the run waits
    proc = run_experiment(ns_agent, hosts, tmp_path, "10.211.250.99")
    wait_until(lambda: ns_agent.faults(), 60, what="the run applied its fault")
    os.kill(proc.pid, signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 3, out + err
    assert ns_agent.faults() == []
    assert seismo_tables(hosts.client) == []
    journal = json.loads((tmp_path / "journal.json").read_text())
    ext = next(e for e in journal["extensions"] if e["name"] == "seismo")
    assert ext["interruption"]["kind"] == "signal"
    fault = ns_agent.api(f"/api/v1/faults/{ext['faults'][0]['id']}")
    assert fault["end_reason"] == "rollback"


async def test_sigkill_of_a_run_trips_the_dead_mans_switch(
    ns_agent: NsAgent, hosts: Hosts, tmp_path: Path
) -> None:
    await hosts.serve_http(8080)
    proc = run_experiment(ns_agent, hosts, tmp_path, "10.211.250.99")
    wait_until(lambda: ns_agent.faults(), 60, what="the run applied its fault")
    fault_id = ns_agent.faults()[0]["id"]
    os.killpg(proc.pid, signal.SIGKILL)  # the supervisor and its runner: no rollback at all
    proc.communicate(timeout=30)
    wait_until(lambda: not ns_agent.faults(), 30, what="the dead man's switch reverted the fault")
    fault = ns_agent.api(f"/api/v1/faults/{fault_id}")
    assert fault["end_reason"] == "dead_man"
    assert seismo_tables(hosts.client) == []
