"""Question 1: ``/probe`` throughput per CPU-second, seismo vs blackbox_exporter.

Both agents run pinned to core 0 (``taskset``), one at a time under load. The targets
(``bench.targets`` for http/https/tcp+tls, dnsmasq for dns) and the load generator
(``bench.loadgen``, closed loop at a fixed concurrency over keep-alive connections) run on
core 1, each in its own process. The figure is successful probes divided by the agent's own
CPU time (utime + stime from ``/proc/<pid>/stat``) over the measured run.

    python -m bench.probe_throughput                 # 3 repetitions, concurrency 50
    python -m bench.probe_throughput --reps 5 --count 8000 --json out.json

Every run is bounded by ``--count`` probes and ``--max-seconds``; every process is killed on exit.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from bench.harness import LOAD_CPU, Certs, Fleet, cpu_seconds, make_certs, pinned, print_machine

KINDS = ("http", "https", "dns", "tcp_tls")
#: issue 5's goals, as a minimum ratio of seismo to blackbox_exporter
GOALS = {"http": 2.5, "https": 1.2, "dns": 2.0, "tcp_tls": 1.2}
MODULES = {"http": "http_2xx", "https": "https_2xx", "dns": "dns_udp", "tcp_tls": "tcp_tls"}


def modules_yaml(certs: Certs) -> str:
    """The modules both agents load: blackbox's schema, valid for both."""
    return f"""
  http_2xx:
    prober: http
    timeout: 5s
    http:
      preferred_ip_protocol: ip4
  https_2xx:
    prober: http
    timeout: 5s
    http:
      preferred_ip_protocol: ip4
      fail_if_not_ssl: true
      tls_config:
        ca_file: {certs.ca}
  dns_udp:
    prober: dns
    timeout: 5s
    dns:
      preferred_ip_protocol: ip4
      query_name: www.bench.test
      query_type: A
      validate_answer_rrs:
        fail_if_none_matches_regexp: ["127\\\\.0\\\\.0\\\\.1"]
  tcp_tls:
    prober: tcp
    timeout: 5s
    tcp:
      preferred_ip_protocol: ip4
      tls: true
      tls_config:
        ca_file: {certs.ca}
"""


def write_configs(directory: Path, certs: Certs) -> tuple[Path, Path]:
    seismo = directory / "seismo.yaml"
    blackbox = directory / "blackbox.yml"
    agent = "agent:\n  node: bench\n  region: bench\n  zone: bench\n  watch_config: false\n"
    seismo.write_text(agent + "modules:" + modules_yaml(certs))
    blackbox.write_text("modules:" + modules_yaml(certs))
    return seismo, blackbox


def probe_urls(agent_port: int, kind: str, ports: dict[str, list[int]], dns_port: int) -> list[str]:
    base = f"http://127.0.0.1:{agent_port}/probe?module={MODULES[kind]}&target="
    if kind == "http":
        return [f"{base}http://127.0.0.1:{p}/" for p in ports["http"]]
    if kind == "https":
        return [f"{base}https://127.0.0.1:{p}/" for p in ports["https"]]
    if kind == "dns":
        return [f"{base}127.0.0.1:{dns_port}"]
    return [f"{base}127.0.0.1:{p}" for p in ports["https"]]


@dataclass
class Run:
    agent: str
    kind: str
    rep: int
    ok: int
    failed: int
    cpu: float
    wall: float
    sample_failure: str

    @property
    def per_cpu(self) -> float:
        return self.ok / self.cpu if self.cpu > 0 else float("nan")


def drive(
    fleet: Fleet, urls: list[str], concurrency: int, count: int, max_seconds: float
) -> dict[str, object]:
    path = fleet.dir / "urls.json"
    path.write_text(json.dumps(urls))
    argv = [sys.executable, "-m", "bench.loadgen", "--urls", str(path)]
    argv += ["--concurrency", str(concurrency), "--count", str(count)]
    argv += ["--max-seconds", str(max_seconds)]
    out = subprocess.run(
        pinned(LOAD_CPU, argv), capture_output=True, text=True, timeout=max_seconds + 60
    )
    if out.returncode != 0:
        raise RuntimeError(f"loadgen failed: {out.stderr[-2000:]}")
    result: dict[str, object] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def measure(
    fleet: Fleet,
    pid: int,
    urls: list[str],
    args: argparse.Namespace,
    agent: str,
    kind: str,
    rep: int,
) -> Run:
    drive(fleet, urls, args.concurrency, args.warmup, 30)  # warm caches, JIT-free but still
    before = cpu_seconds(pid)
    res = drive(fleet, urls, args.concurrency, args.count, args.max_seconds)
    cpu = cpu_seconds(pid) - before
    return Run(
        agent, kind, rep, int(res["ok"]), int(res["failed"]), cpu, float(res["elapsed"]),  # type: ignore[call-overload]
        str(res["sample_failure"]),
    )  # fmt: skip


def report(runs: list[Run], kinds: list[str]) -> list[dict[str, object]]:
    rows = []
    print()
    print(f"{'kind':8} {'seismo/CPU-s':>22} {'blackbox/CPU-s':>22} {'ratio':>18}  goal")
    for kind in kinds:
        s = [r.per_cpu for r in runs if r.agent == "seismo" and r.kind == kind]
        b = [r.per_cpu for r in runs if r.agent == "blackbox" and r.kind == kind]
        ratios = [x / y for x, y in zip(s, b, strict=True)]
        med = statistics.median(ratios)
        goal = GOALS[kind]
        verdict = "met" if med >= goal else "NOT met"

        def f(v: list[float], fmt: str = "{:.0f}") -> str:
            return f"{fmt.format(statistics.median(v))} [{fmt.format(min(v))}-{fmt.format(max(v))}]"

        print(f"{kind:8} {f(s):>22} {f(b):>22} {f(ratios, '{:.2f}'):>18}  >={goal}x {verdict}")
        rows.append({"kind": kind, "seismo": s, "blackbox": b, "ratio": ratios, "goal": goal})
    failures = [r for r in runs if r.failed]
    for r in failures:
        print(f"  {r.agent} {r.kind} rep{r.rep}: {r.failed} failed probes; e.g. {r.sample_failure}")
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--concurrency", type=int, default=50)
    p.add_argument("--count", type=int, default=6000, help="probes per measured run")
    p.add_argument("--warmup", type=int, default=500, help="probes before each measured run")
    p.add_argument("--max-seconds", type=float, default=20.0, help="bound of one measured run")
    p.add_argument("--kinds", default=",".join(KINDS))
    p.add_argument("--only", choices=("seismo", "blackbox"), help="measure one agent only")
    p.add_argument("--json", type=Path, help="write the raw runs here")
    args = p.parse_args(argv)
    kinds = args.kinds.split(",")
    print_machine()
    runs: list[Run] = []
    with Fleet() as fleet:
        certs = make_certs(fleet.dir)
        ports = fleet.targets(http=4, https=4, certs=certs)
        dns_port = fleet.dnsmasq()
        seismo_cfg, blackbox_cfg = write_configs(fleet.dir, certs)
        agents = {}
        if args.only != "blackbox":
            agents["seismo"] = fleet.seismo(seismo_cfg)
        if args.only != "seismo":
            agents["blackbox"] = fleet.blackbox(blackbox_cfg)
        for rep in range(args.reps):
            for kind in kinds:
                for name, (proc, port) in agents.items():
                    urls = probe_urls(port, kind, ports, dns_port)
                    run = measure(fleet, proc.pid, urls, args, name, kind, rep)
                    runs.append(run)
                    print(
                        f"rep {rep} {kind:8} {name:8} {run.per_cpu:8.0f} probes/CPU-s "
                        f"({run.ok} ok, {run.failed} failed, {run.cpu:.2f} CPU-s, "
                        f"{run.ok / run.wall:.0f}/s wall)",
                        flush=True,
                    )
    rows = report(runs, kinds) if args.only is None else []
    if args.json:
        args.json.write_text(json.dumps({"runs": [asdict(r) for r in runs], "rows": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
