"""Test hosts for fault tests: network namespaces joined by a veth pair.

Faults are applied ONLY inside namespaces these fixtures create, never in the machine's root
namespace, and everything created is deleted at teardown, even when the test fails.

    async def test_x(hosts: Hosts): ...
        hosts.client  -> netns name, address 10.211.N.1
        hosts.server  -> netns name, address 10.211.N.2
        await hosts.serve_http(port)   # an HTTP server inside the server netns
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from agent.faults.engine import FaultEngine
from agent.faults.kinds import FaultKind, all_kinds
from agent.faults.ledger import Ledger
from agent.faults.preflight import Capabilities, detect
from agent.faults.settings import FaultSettings
from agent.faults.targets import TargetResolver

ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C"}
_subnets = itertools.count(1)


def _need_netns() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root for network namespaces")
    if shutil.which("ip") is None or shutil.which("nft") is None:
        pytest.skip("needs iproute2 and nftables (scripts/test.sh installs them)")


def sh(
    *argv: str, netns: str | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    full = ("ip", "netns", "exec", netns, *argv) if netns else argv
    return subprocess.run(full, capture_output=True, text=True, env=ENV, timeout=20, check=check)


@dataclass
class Hosts:
    """Two namespaces joined by veth: ``client`` (.1) and ``server`` (.2) on 10.211.N.0/24."""

    client: str
    server: str
    client_ip: str
    server_ip: str
    client_if: str
    server_if: str
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def client_target(self) -> str:
        return f"netns:{self.client}"

    @property
    def server_target(self) -> str:
        return f"netns:{self.server}"

    def spawn(self, netns: str, *argv: str) -> subprocess.Popen[bytes]:
        """A process inside ``netns``, killed at teardown."""
        proc = subprocess.Popen(
            ("ip", "netns", "exec", netns, *argv),
            env={**ENV, **_pyenv()},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self.procs.append(proc)
        return proc

    async def serve_http(self, port: int, netns: str | None = None) -> subprocess.Popen[bytes]:
        """The demo HTTP app (agent.demo) inside the server netns on ``port``; waits for ready."""
        code = (
            "import asyncio, sys\n"
            "from aiohttp import web\n"
            "from agent.demo import demo_app\n"
            "async def main():\n"
            "    r = web.AppRunner(demo_app(), access_log=None); await r.setup()\n"
            f"    await web.TCPSite(r, '0.0.0.0', {port}).start()\n"
            "    print('ready', flush=True); await asyncio.Event().wait()\n"
            "asyncio.run(main())\n"
        )
        proc = self.spawn(netns or self.server, sys.executable, "-c", code)
        assert proc.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 15)
        assert line.strip() == b"ready", line
        return proc


def _pyenv() -> dict[str, str]:
    return {"PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}


@pytest.fixture
def hosts() -> Iterator[Hosts]:
    _need_netns()
    tag = uuid.uuid4().hex[:6]
    n = next(_subnets) % 250 + 1
    h = Hosts(
        client=f"st-c-{tag}",
        server=f"st-s-{tag}",
        client_ip=f"10.211.{n}.1",
        server_ip=f"10.211.{n}.2",
        client_if=f"stc{tag}",
        server_if=f"sts{tag}",
    )
    try:
        sh("ip", "netns", "add", h.client)
        sh("ip", "netns", "add", h.server)
        sh("ip", "link", "add", h.client_if, "type", "veth", "peer", "name", h.server_if)
        sh("ip", "link", "set", h.client_if, "netns", h.client)
        sh("ip", "link", "set", h.server_if, "netns", h.server)
        for ns, dev, ip in (
            (h.client, h.client_if, h.client_ip),
            (h.server, h.server_if, h.server_ip),
        ):
            sh("ip", "addr", "add", f"{ip}/24", "dev", dev, netns=ns)
            sh("ip", "link", "set", dev, "up", netns=ns)
            sh("ip", "link", "set", "lo", "up", netns=ns)
        yield h
    finally:
        for proc in h.procs:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
        for ns in (h.client, h.server):
            sh("ip", "netns", "del", ns, check=False)


@pytest.fixture(scope="session")
def capabilities() -> Capabilities:
    if os.geteuid() != 0:
        return Capabilities(frozenset())
    return asyncio.run(detect())


@dataclass
class EngineFactory:
    """Builds FaultEngines over one ledger; every engine it built is cleared at teardown."""

    ledger: Path
    caps: Capabilities
    made: list[FaultEngine] = field(default_factory=list)

    def __call__(
        self,
        allowed: list[str],
        *,
        clock: Callable[[], float] | None = None,
        kinds: Mapping[str, FaultKind] | None = None,
        caps: Capabilities | None = None,
        **settings: Any,
    ) -> FaultEngine:
        engine = FaultEngine(
            Ledger(self.ledger),
            TargetResolver(allowed),
            FaultSettings(allowed_targets=allowed, **settings),
            self.caps if caps is None else caps,
            all_kinds() if kinds is None else kinds,
            **({"clock": clock} if clock is not None else {}),
        )
        self.made.append(engine)
        return engine

    def events(self) -> list[tuple[str, str]]:
        """(event, fault id) of every ledger line, in order."""
        out = []
        for line in self.ledger.read_text().splitlines():
            record = json.loads(line)
            fault_id = record["entry"]["id"] if record["event"] == "intent" else record["id"]
            out.append((record["event"], fault_id))
        return out


@pytest.fixture
async def make_engine(tmp_path: Path, capabilities: Capabilities) -> AsyncIterator[EngineFactory]:
    """Build a FaultEngine over a ledger in tmp_path; call it with the allowed targets.

    Faults never outlive a test: every engine built is cleared at teardown."""
    factory = EngineFactory(tmp_path / "faults" / "ledger.jsonl", capabilities)
    yield factory
    for engine in factory.made:
        await engine.clear("test_teardown")
