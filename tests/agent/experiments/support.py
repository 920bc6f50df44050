"""Helpers for experiment tests: a loopback demo target that records what it receives,
and helpers to run ``seismo`` in a subprocess. Every wait is bounded and event-driven."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[3]
CALL_TIMEOUT = 60.0


@dataclass
class DemoTarget:
    """The agent's demo HTTP app plus a request log and a ``/hang`` endpoint."""

    base_url: str = ""
    requests: list[tuple[str, str]] = field(default_factory=list)
    arrived: asyncio.Condition = field(default_factory=asyncio.Condition)
    release: asyncio.Event = field(default_factory=asyncio.Event)

    def count(self, method: str, path: str) -> int:
        return self.requests.count((method, path))

    async def wait_for(self, method: str, path: str, count: int = 1, timeout: float = 30) -> None:
        async with asyncio.timeout(timeout), self.arrived:
            await self.arrived.wait_for(lambda: self.count(method, path) >= count)


@dataclass
class Proc:
    process: asyncio.subprocess.Process
    data_dir: Path

    async def finish(self, timeout: float = CALL_TIMEOUT) -> tuple[int, str, str]:
        async with asyncio.timeout(timeout):
            out, err = await self.process.communicate()
        assert self.process.returncode is not None
        return self.process.returncode, out.decode(), err.decode()

    def run_dirs(self) -> list[Path]:
        runs = self.data_dir / "runs"
        return sorted(runs.iterdir()) if runs.is_dir() else []

    def journal(self) -> dict[str, Any]:
        (run_dir,) = self.run_dirs()
        data = json.loads((run_dir / "journal.json").read_text())
        assert isinstance(data, dict)
        return data

    async def wait_event(self, event: str, timeout: float = 30, **match: Any) -> dict[str, Any]:
        """Wait for an event in the run's fsynced log (bounded polling of a file we do not own
        the writer of; the condition is the event itself, never elapsed time)."""
        async with asyncio.timeout(timeout):
            while True:
                for run_dir in self.run_dirs():
                    path = run_dir / "events.jsonl"
                    if path.is_file():
                        for line in path.read_text().splitlines():
                            try:
                                ev = json.loads(line)
                            except json.JSONDecodeError:
                                continue
                            if ev.get("event") == event and all(
                                ev.get(k) == v for k, v in match.items()
                            ):
                                return dict(ev)
                await asyncio.sleep(0.05)


def seismo_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("SEISMO_DATA_DIR", None)
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parent), str(REPO)])
    env.update(extra)
    return env


async def start_seismo(args: list[str], data_dir: Path, env: dict[str, str] | None = None) -> Proc:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "agent",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        stdin=asyncio.subprocess.DEVNULL,
        env=env or seismo_env(),
        cwd=str(data_dir.parent),
    )
    return Proc(process, data_dir)


async def run_seismo(
    args: list[str], data_dir: Path, env: dict[str, str] | None = None
) -> tuple[Proc, int, str, str]:
    proc = await start_seismo(args, data_dir, env)
    code, out, err = await proc.finish()
    return proc, code, out, err


def write_experiment(path: Path, experiment: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(experiment, sort_keys=False))
    return path


def base_experiment(base_url: str, method: list[dict[str, Any]]) -> dict[str, Any]:
    """A hypothesis on /healthz (seismo's provider), the given method, and a rollback that
    restores the demo target (recorded by the server: the proof that rollbacks ran)."""
    return {
        "title": "kill matrix",
        "description": "an experiment interrupted in various ways",
        "configuration": {"base_url": base_url},
        "steady-state-hypothesis": {
            "title": "healthz answers",
            "probes": [
                {
                    "type": "probe",
                    "name": "healthz-ok",
                    "tolerance": True,
                    "provider": {
                        "type": "python",
                        "module": "agent.experiments.providers",
                        "func": "http_ok",
                        "arguments": {"target": "${base_url}/healthz", "timeout": "5s"},
                    },
                }
            ],
        },
        "method": method,
        "rollbacks": [
            {
                "type": "action",
                "name": "restore",
                "provider": {
                    "type": "http",
                    "url": "${base_url}/admin/restore",
                    "method": "POST",
                    "timeout": 10,
                },
            }
        ],
    }


def degrade_action(status: int = 503, delay_ms: int = 0) -> dict[str, Any]:
    return {
        "type": "action",
        "name": "degrade",
        "provider": {
            "type": "http",
            "url": "${base_url}/admin/degrade",
            "method": "POST",
            "headers": {"Content-Type": "application/json"},
            "arguments": {"status": status, "delay_ms": delay_ms, "seconds": 60},
            "timeout": 10,
        },
    }


def hang_action() -> dict[str, Any]:
    return {
        "type": "action",
        "name": "hang",
        "provider": {"type": "http", "url": "${base_url}/hang", "timeout": 120},
    }


def seismo_ext(journal: dict[str, Any]) -> dict[str, Any]:
    (ext,) = [e for e in journal["extensions"] if e.get("name") == "seismo"]
    assert isinstance(ext, dict)
    return ext
