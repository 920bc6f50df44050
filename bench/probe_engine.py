"""Where the ``/probe`` CPU goes, by layer: the probe library alone, plus rendering.

Runs ``probes.run_probe`` in a closed loop (concurrency 50) inside this process, pinned to
core 0, against the same loopback targets as probe_throughput.py (core 1), and counts
probes per CPU-second of this process. Compared with probe_throughput's figure for the whole
agent, it splits the cost into the probe itself, ``/probe`` rendering
(``AgentMetrics.render_probe``), and the HTTP server.

    python -m bench.probe_engine                       # http, https, dns, tcp_tls
    python -m bench.probe_engine --kinds http --render
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import sys
import time
from collections.abc import Callable, Hashable
from typing import TypeVar

from bench.harness import AGENT_CPU, Fleet, make_certs, print_machine
from bench.probe_throughput import KINDS, write_configs
from probes import dnsmessage
from probes.connection import Memo

_R = TypeVar("_R")


def targets_for(kind: str, ports: dict[str, list[int]], dns_port: int) -> list[str]:
    if kind == "http":
        return [f"http://127.0.0.1:{p}/" for p in ports["http"]]
    if kind == "https":
        return [f"https://127.0.0.1:{p}/" for p in ports["https"]]
    if kind == "dns":
        return [f"127.0.0.1:{dns_port}"]
    return [f"127.0.0.1:{p}" for p in ports["https"]]


class _FreshAnswers(Memo):
    """The Connector's memo, except that no DNS answer is kept: each one is read anew.

    What a probe of a caching resolver costs: its TTLs count down once a second, so a check
    at a 10 s interval (or a scrape every few seconds) never sees the same answer twice.
    """

    def __call__(self, fn: Callable[..., _R], *args: Hashable) -> _R:
        if fn is dnsmessage._read:
            return fn(*args)
        return super().__call__(fn, *args)


async def loop_probes(
    module: object,
    targets: list[str],
    count: int,
    concurrency: int,
    render: bool,
    fresh_answers: bool = False,
) -> tuple[int, int]:
    from prometheus_client import CollectorRegistry

    from agent.config import Identity
    from agent.metrics import AgentMetrics
    from probes import Connector, run_probe

    connector = Connector()
    metrics = AgentMetrics(CollectorRegistry(), Identity())  # as the agent makes it, once
    if fresh_answers:
        connector.memo = _FreshAnswers()
    issued = ok = 0

    async def worker() -> None:
        nonlocal issued, ok
        while issued < count:
            target = targets[issued % len(targets)]
            issued += 1
            result = await run_probe(module, target, 5.0, connector=connector)  # type: ignore[arg-type]
            if render:
                metrics.render_probe(result).encode()
            ok += result.success

    async with asyncio.TaskGroup() as tg:
        for _ in range(concurrency):
            tg.create_task(worker())
    return issued, ok


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kinds", default=",".join(KINDS))
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--count", type=int, default=5000)
    p.add_argument("--concurrency", type=int, default=50)
    p.add_argument("--render", action="store_true", help="also render the /probe page")
    p.add_argument("--no-uvloop", action="store_true")
    p.add_argument(
        "--fresh-answers", action="store_true", help="read every DNS answer anew (no memo)"
    )
    args = p.parse_args(argv)
    print_machine()
    from agent.config import load_config
    from bench.probe_throughput import MODULES

    if not args.no_uvloop:
        with contextlib.suppress(ImportError):
            import uvloop

            asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    with Fleet() as fleet:
        certs = make_certs(fleet.dir)
        ports = fleet.targets(http=4, https=4, certs=certs)
        dns_port = fleet.dnsmasq()
        seismo_cfg, _ = write_configs(fleet.dir, certs)
        config, _ = load_config(seismo_cfg)
        os.sched_setaffinity(0, {AGENT_CPU})
        for kind in args.kinds.split(","):
            module = config.modules[MODULES[kind]]
            targets = targets_for(kind, ports, dns_port)
            rates = []
            for _ in range(args.reps):
                asyncio.run(
                    loop_probes(
                        module, targets, 300, args.concurrency, args.render, args.fresh_answers
                    )
                )
                c0 = time.process_time()
                done, ok = asyncio.run(
                    loop_probes(
                        module,
                        targets,
                        args.count,
                        args.concurrency,
                        args.render,
                        args.fresh_answers,
                    )
                )
                cpu = time.process_time() - c0
                if ok != done:
                    print(f"  {kind}: {done - ok} of {done} probes failed", file=sys.stderr)
                rates.append(ok / cpu)
            print(
                f"{kind:8} {statistics.median(rates):6.0f} probes/CPU-s "
                f"[{min(rates):.0f}-{max(rates):.0f}] render={args.render}"
                f" fresh_answers={args.fresh_answers}",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
