"""The ``seismo`` command as a user runs it: real subprocesses, real loopback targets."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.agent.conftest import Target
from tests.waiting import wait_until

ROOT = Path(__file__).parent.parent.parent
SEISMO = [sys.executable, "-m", "agent"]


def seismo(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*SEISMO, *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT, check=False
    )


def test_check_config_ok_and_bad(tmp_path: Path) -> None:
    ok = seismo("check-config", str(ROOT / "examples" / "agent.yaml"))
    assert ok.returncode == 0, ok.stderr
    assert "OK (6 modules, 6 checks)" in ok.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text("modules:\n  web:\n    prober: http\n    htp: {}\n")
    res = seismo("check-config", str(bad))
    assert res.returncode == 2
    assert res.stderr.strip() == (
        f"{bad}:4: modules.web.htp: unknown key 'htp' (not in the schema; check the spelling)"
    )
    missing = seismo("check-config", str(tmp_path / "nope.yaml"))
    assert missing.returncode == 2 and "cannot read config" in missing.stderr


async def test_probe_command_human_and_json(http_target: Target) -> None:
    import asyncio

    res = await asyncio.to_thread(seismo, "probe", "http", http_target.url)
    assert res.returncode == 0, res.stdout + res.stderr
    out = res.stdout
    assert "result   OK" in out
    for phase in ("resolve", "connect", "processing", "transfer"):
        assert re.search(rf"^\s+{phase}\s+\d+\.\d+ ms$", out, re.M), out
    assert re.search(r"status\s+200", out)

    res = await asyncio.to_thread(seismo, "probe", "http", http_target.url + "status/503", "--json")
    assert res.returncode == 1
    doc = json.loads(res.stdout)
    assert doc["success"] is False and doc["reason"] == "http_status"
    assert doc["metrics"]["probe_http_status_code"] == 503


def test_probe_command_refused_port_and_bad_kind() -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    res = seismo("probe", "tcp", f"127.0.0.1:{port}")
    assert res.returncode == 1
    assert "reason=connect_refused" in res.stdout
    res = seismo("probe", "icmpx", "127.0.0.1")
    assert res.returncode == 2 and "neither a module" in res.stderr


class Agent:
    """An agent subprocess; reads the URLs it prints."""

    def __init__(self, args: list[str], env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(
            [*SEISMO, "agent", "--listen", "127.0.0.1:0", *args],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **(env or {})},
        )
        self.lines: list[str] = []
        self.base = ""
        deadline = time.monotonic() + 30
        assert self.proc.stdout is not None
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            self.lines.append(line.rstrip())
            m = re.search(r"metrics\s+(http://\S+)/metrics", line)
            if m:
                self.base = m.group(1)
            last = "dns://" if "--config" not in args else "checks "
            if last in line and self.base:
                break
        assert self.base, f"agent did not start: {self.lines} {self.proc.stderr}"

    def get(self, path: str) -> str:
        with urllib.request.urlopen(self.base + path, timeout=10) as resp:
            return str(resp.read().decode())

    def success_by_check(self) -> dict[str, float]:
        out = {}
        for fam in text_string_to_metric_families(self.get("/metrics")):
            if fam.name == "probe_success":
                for s in fam.samples:
                    out[s.labels["check"]] = s.value
        return out

    def wait_for(self, predicate: Callable[[], object], limit: float = 30) -> None:
        wait_until(predicate, limit, what=f"agent output: {self.lines}")

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=15)


@pytest.fixture
def agents() -> Iterator[list[Agent]]:
    started: list[Agent] = []
    yield started
    for a in started:
        if a.proc.poll() is None:
            a.proc.kill()
            a.proc.wait(timeout=10)


def test_embedded_default_serves_passing_metrics_offline(
    tmp_path: Path, agents: list[Agent]
) -> None:
    """README command 1: `seismo agent` with no config probes its own demo targets."""
    a = Agent(["--data-dir", str(tmp_path / "data")])
    agents.append(a)
    assert any("demo targets" in line for line in a.lines)
    expected = {"demo-http", "demo-https", "demo-tls", "demo-dns", "demo-dns-tcp", "demo-tcp"}
    a.wait_for(lambda: set(a.success_by_check()) == expected)
    a.wait_for(lambda: all(v == 1 for v in a.success_by_check().values()))
    assert (tmp_path / "data" / "demo" / "ca.pem").exists()
    assert a.get("/readyz").strip() == "ready"
    assert a.stop() == 0


def test_sighup_reloads_and_sigterm_stops(
    tmp_path: Path, agents: list[Agent], http_target_sync: Target
) -> None:
    cfg = tmp_path / "agent.yaml"
    body = f"""
agent: {{watch_config: false}}
modules:
  web: {{prober: http, http: {{preferred_ip_protocol: ip4}}}}
checks:
  - {{name: one, module: web, target: "{http_target_sync.url}", interval: 200ms}}
"""
    cfg.write_text(body)
    a = Agent(["--config", str(cfg), "--data-dir", str(tmp_path / "data")])
    agents.append(a)
    a.wait_for(lambda: a.success_by_check().get("one") == 1)
    cfg.write_text(body.replace("name: one", "name: two"))
    a.proc.send_signal(signal.SIGHUP)
    a.wait_for(lambda: set(a.success_by_check()) == {"two"})
    cfg.write_text("modules: [broken")
    a.proc.send_signal(signal.SIGHUP)
    a.wait_for(lambda: "seismo_config_last_reload_successful 0.0" in a.get("/metrics"))
    assert set(a.success_by_check()) == {"two"}  # the last good config keeps running
    assert a.stop() == 0
    assert a.proc.stderr is not None
    assert "YAML syntax error" in a.proc.stderr.read()


def test_agent_exits_2_on_a_bad_config(tmp_path: Path) -> None:
    cfg = tmp_path / "agent.yaml"
    cfg.write_text("checks:\n  - name: x\n    module: missing\n    target: t\n")
    res = seismo(
        "agent", "--config", str(cfg), "--listen", "127.0.0.1:0", "--data-dir", str(tmp_path / "d")
    )
    assert res.returncode == 2
    assert f"{cfg}:3: checks[0].module: unknown module 'missing'" in res.stderr
