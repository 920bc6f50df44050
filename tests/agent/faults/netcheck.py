"""Helpers for network fault tests: seismo's own probes run from inside a test namespace, and
what seismo left in a namespace (nftables tables, qdiscs).

Probes run in a child process inside the client netns (``ip netns exec``), many at once in
one process so a test pays one interpreter start for a whole batch. Every wait is bounded.

    results = await probe(hosts.client, {"prober": "http"}, url, timeout=1, count=10)
    assert {r["reason"] for r in results} == {"connect_timeout"}
    assert seismo_tables(hosts.client) == []
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
from typing import Any

from tests.agent.faults.conftest import ENV, Hosts, sh

_PROBE_BATCH = r"""
import asyncio, json, sys
from probes import Module, run_probe

async def main():
    spec = json.loads(sys.argv[1])
    module = Module.model_validate(spec["module"])
    gate = asyncio.Semaphore(spec["concurrency"])

    async def one():
        async with gate:
            return (await run_probe(module, spec["target"], spec["timeout"])).to_json()

    print(json.dumps(await asyncio.gather(*(one() for _ in range(spec["count"])))))

asyncio.run(main())
"""

#: a tiny HTTP server for bandwidth tests: GET /bytes/N answers N bytes
_BLOB_SERVER = r"""
import asyncio, sys
from aiohttp import web

async def blob(request):
    return web.Response(body=b"x" * min(int(request.match_info["n"]), 16 << 20))

async def main():
    app = web.Application()
    app.router.add_get("/bytes/{n:\\d+}", blob)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "0.0.0.0", int(sys.argv[1])).start()
    print("ready", flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


def pyenv() -> dict[str, str]:
    return {**ENV, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}


async def probe(
    netns: str,
    module: dict[str, Any],
    target: str,
    *,
    timeout: float,
    count: int = 1,
    concurrency: int = 1,
) -> list[dict[str, Any]]:
    """Run ``count`` probes (``concurrency`` at a time) from inside ``netns``; their JSON."""
    assert count <= 500 and concurrency <= 100, "keep load loops small"
    spec = {
        "module": module,
        "target": target,
        "timeout": timeout,
        "count": count,
        "concurrency": concurrency,
    }
    proc = await asyncio.create_subprocess_exec(
        "ip", "netns", "exec", netns, sys.executable, "-c", _PROBE_BATCH, json.dumps(spec),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=pyenv(),
    )  # fmt: skip
    # the batch's own bound: every round of probes ends within its timeout
    limit = 20 + timeout * (count / concurrency + 1)
    try:
        async with asyncio.timeout(limit):
            out, err = await proc.communicate()
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
    assert proc.returncode == 0, err.decode()
    results: list[dict[str, Any]] = json.loads(out)
    return results


async def probe_one(netns: str, module: dict[str, Any], target: str, timeout: float) -> str:
    """The reason of one probe from inside ``netns``."""
    (result,) = await probe(netns, module, target, timeout=timeout)
    return str(result["reason"])


HTTP = {"prober": "http"}
TCP = {"prober": "tcp"}


async def serve_blob(hosts: Hosts, port: int) -> subprocess.Popen[bytes]:
    """A ``/bytes/N`` HTTP server inside the server netns; waits for it to be ready."""
    proc = hosts.spawn(hosts.server, sys.executable, "-c", _BLOB_SERVER, str(port))
    assert proc.stdout is not None
    line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 15)
    assert line.strip() == b"ready", line
    return proc


def seismo_tables(netns: str) -> list[str]:
    """Every nftables table in ``netns`` whose name says it is seismo's."""
    out = sh("nft", "list", "tables", netns=netns).stdout
    return [line for line in out.splitlines() if " seismo_" in line]


def all_tables(netns: str) -> list[str]:
    return [line for line in sh("nft", "list", "tables", netns=netns).stdout.splitlines() if line]


def seismo_qdiscs(netns: str) -> list[str]:
    """Every qdisc in ``netns`` with seismo's handle (5e15:)."""
    out = sh("tc", "qdisc", "show", netns=netns).stdout
    return [line for line in out.splitlines() if " 5e15: " in line]


def assert_clean(*namespaces: str) -> None:
    """Nothing of seismo's is left: no seismo_* table, no 5e15: qdisc."""
    for netns in namespaces:
        assert seismo_tables(netns) == [], netns
        assert seismo_qdiscs(netns) == [], netns
