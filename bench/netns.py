"""Two network namespaces joined by a veth pair, for the benches that apply faults.

A fault is only ever applied inside a namespace this module creates, never in the machine's
root namespace. :func:`veth_pair` creates ``client`` (10.212.N.1) and ``server`` (10.212.N.2)
and, on exit (failure and SIGTERM too), first lets the caller's ``on_teardown`` run (the
ledger kill switch, ``seismo faults clear --local``), then kills every process still inside
either namespace by its pid (``ip netns pids``), then deletes both namespaces.

    with veth_pair() as pair:
        rows = pair.run_inside([sys.executable, "-m", "bench.fault_onset", "--inside", ...])

``python -m bench.netns target --listen 10.212.1.2:8080`` is that server: the same protocol as
:mod:`bench.targets` (one small answer, ``Connection: close``, ``/delay/<ms>``), bound to a
namespace address instead of loopback. Run with ``ip netns exec``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.harness import REPO

ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C"}
#: the second octet of every address a bench namespace uses (the fault tests use 10.211)
NET = "10.212"


def _ip(*argv: str, netns: str | None = None, check: bool = True) -> str:
    full = ("ip", "netns", "exec", netns, *argv) if netns else argv
    out = subprocess.run(full, capture_output=True, text=True, env=ENV, timeout=20, check=check)
    return out.stdout


def in_netns(netns: str, argv: Sequence[str]) -> list[str]:
    """``argv`` run inside ``netns`` (``ip netns exec`` execs it: the pid stays the same)."""
    return ["ip", "netns", "exec", netns, *argv]


def pyenv() -> dict[str, str]:
    """The environment for a Python child: the fixed PATH plus this interpreter's sys.path."""
    return {**ENV, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}


@dataclass
class Pair:
    """``client`` (.1) and ``server`` (.2) on 10.212.N.0/24, joined by veth."""

    client: str
    server: str
    client_ip: str
    server_ip: str
    client_if: str
    server_if: str

    @property
    def client_target(self) -> str:
        return f"netns:{self.client}"

    def run_inside(self, argv: Sequence[str], *, timeout: float) -> list[dict[str, Any]]:
        """Run ``argv`` inside the client netns; its stdout JSON lines, parsed.

        Lines that are not JSON objects are echoed (progress). The child is in its own
        process group, killed on timeout or when this process is interrupted.
        """
        proc = subprocess.Popen(
            in_netns(self.client, argv),
            stdout=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
            env=pyenv(),
            cwd=REPO,
            start_new_session=True,
        )
        rows: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                if line.startswith("{"):
                    rows.append(json.loads(line))
                print(line, end="", flush=True)
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{argv!r} ran over {timeout:g}s")
            proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        finally:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(timeout=10)
        if proc.returncode != 0:
            raise RuntimeError(f"{argv!r} exited with {proc.returncode}")
        return rows


def _kill_netns_pids(netns: str) -> None:
    """SIGKILL every process left inside ``netns`` (all of them ours: we made the netns)."""
    for _ in range(5):
        pids = [int(p) for p in _ip("ip", "netns", "pids", netns, check=False).split()]
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.2)


@contextlib.contextmanager
def veth_pair(on_teardown: Callable[[Pair], None] | None = None) -> Iterator[Pair]:
    """Create the two namespaces; always remove them, and everything in them, on exit."""
    if os.geteuid() != 0:
        raise SystemExit("this bench needs root (network namespaces)")
    tag = uuid.uuid4().hex[:6]
    n = int(tag, 16) % 250 + 1
    pair = Pair(
        client=f"sb-c-{tag}",
        server=f"sb-s-{tag}",
        client_ip=f"{NET}.{n}.1",
        server_ip=f"{NET}.{n}.2",
        client_if=f"sbc{tag}",
        server_if=f"sbs{tag}",
    )
    old = signal.signal(signal.SIGTERM, _raise_exit)
    try:
        _ip("ip", "netns", "add", pair.client)
        _ip("ip", "netns", "add", pair.server)
        _ip("ip", "link", "add", pair.client_if, "type", "veth", "peer", "name", pair.server_if)
        _ip("ip", "link", "set", pair.client_if, "netns", pair.client)
        _ip("ip", "link", "set", pair.server_if, "netns", pair.server)
        for ns, dev, ip in (
            (pair.client, pair.client_if, pair.client_ip),
            (pair.server, pair.server_if, pair.server_ip),
        ):
            _ip("ip", "addr", "add", f"{ip}/24", "dev", dev, netns=ns)
            _ip("ip", "link", "set", dev, "up", netns=ns)
            _ip("ip", "link", "set", "lo", "up", netns=ns)
        yield pair
    finally:
        try:
            if on_teardown is not None:
                on_teardown(pair)
        finally:
            for ns in (pair.client, pair.server):
                if Path(f"/run/netns/{ns}").exists():
                    _kill_netns_pids(ns)
                    _ip("ip", "netns", "del", ns, check=False)
            signal.signal(signal.SIGTERM, old)


def clear_faults_local(pair: Pair, config: Path, data_dir: Path) -> None:
    """The kill switch from the ledger (agent up or down): no fault outlives the bench."""
    if not config.exists():
        return
    argv = [sys.executable, "-m", "agent", "faults", "clear", "--local"]
    argv += ["--data-dir", str(data_dir), "--config", str(config)]
    subprocess.run(
        in_netns(pair.client, argv),
        capture_output=True,
        env=pyenv(),
        cwd=REPO,
        timeout=60,
        check=False,
    )


def _raise_exit(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


# --- the agent's JSON API, from inside the client netns --------------------------------------


def api(
    base: str, method: str, path: str, body: object = None, token: str = "", timeout: float = 30
) -> tuple[int, Any]:
    """One call to seismo's API; (status, parsed JSON or None)."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(base + path, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw = resp.read()
            status = resp.status
    except urllib.error.HTTPError as err:
        raw, status = err.read(), err.code
    return status, (json.loads(raw) if raw else None)


# --- the target server -----------------------------------------------------------------------


async def _serve(host: str, port: int) -> None:
    from bench.targets import _HTTP

    loop = asyncio.get_running_loop()
    srv = await loop.create_server(_HTTP, host, port, backlog=4096)
    print("ready", flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    srv.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("target", help="serve bench.targets' HTTP answer on HOST:PORT")
    t.add_argument("--listen", required=True, help="HOST:PORT")
    args = p.parse_args(argv)
    host, _, port = args.listen.rpartition(":")
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    asyncio.run(_serve(host, int(port)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
