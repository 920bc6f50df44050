"""Question 4: how long from "apply" until the probes see a fault, and from "revert" until
they see recovery? seismo and blackbox_exporter side by side.

Two network namespaces joined by veth (:mod:`bench.netns`): the target (``bench.targets``'
HTTP answer) listens in the server namespace; seismo's agent, blackbox_exporter and this
bench's driver all run **inside the client namespace**, and the faults are applied there,
through seismo's API (``POST``/``DELETE /api/v1/faults``), on the path to the server
(``peer`` = the server's address). Nothing is ever applied in the root namespace.

Four observers each start one probe of the target every ``--cadence`` (100 ms), side by side:

- ``seismo-check``: the agent's own continuous checks: 10 checks of the target at a 1 s
  interval whose names are chosen so that the scheduler's per-check slot offsets fall 100 ms
  apart (one run starts every ~100 ms; runs of one check never overlap, so a single 100 ms
  check could not take a probe longer than 100 ms). Their results are read by polling
  ``/api/v1/checks`` every 25 ms; a run counts at the moment it ended (``started_at`` +
  ``duration_seconds``), not when the poll saw it;
- ``seismo-probe`` and ``blackbox``: a scraper sends ``/probe`` to each agent every 100 ms
  (what Prometheus does, at a 100 ms scrape interval); a probe counts when its answer arrives;
- ``seismo-lib``: this driver runs seismo's probe library (``probes.run_probe``) every 100 ms.

Faults and what counts as "shows the fault" / "shows recovery":

- ``network_blackhole`` (``peer`` = server): onset = a failed probe; recovery = a successful
  one. Module timeout 200 ms, so a blackholed probe reports about 200 ms after it started;
- ``network_latency`` +200 ms (``peer`` = server; this kernel has no netem, so the userspace
  delay line): onset = a probe slower than 150 ms (or failed); recovery = a successful probe
  under 50 ms. Module timeout 1 s (a probe under the fault takes ~400 ms: +200 ms connect,
  +200 ms processing).

Per repetition and fault: a 1 s baseline, apply, hold 2 s, revert, 1.5 s after. Onset = the
end of the first probe showing the fault among those ending after apply was sent, minus the
moment apply **returned**; recovery likewise from the moment revert returned. Negative
values mean a probe saw the change before the API call returned. The resolution of each
figure is bounded by the probe cadence: a probe starts every 100 ms, so onset is up to one
cadence plus the probe's own time to report (its timeout for a blackhole, the delay itself
for latency).

    python -m bench.fault_onset                      # 5 reps, both faults
    python -m bench.fault_onset --reps 3 --kinds latency
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.harness import AGENT_CPU, LOAD_CPU, Fleet, pinned, print_machine, wait_http
from bench.netns import Pair, clear_faults_local, in_netns, veth_pair

TOKEN = "bench-fault-onset-token-0123456789"
PORT = 8080
AGENT_PORT = 9115
OBSERVERS = ("seismo-check", "seismo-probe", "seismo-lib", "blackbox")
#: checks per fault kind, spread evenly over one interval
N_CHECKS = 10
CHECK_INTERVAL = 1.0
NODE = "bench"


@dataclass(frozen=True)
class Kind:
    name: str
    fault: str
    params: dict[str, Any]
    #: module timeout, seconds
    timeout: float
    faulty: Callable[[bool, float], bool]
    healthy: Callable[[bool, float], bool]


KINDS = {
    "blackhole": Kind(
        "blackhole",
        "network_blackhole",
        {},
        0.2,
        faulty=lambda ok, d: not ok,
        healthy=lambda ok, d: ok,
    ),
    "latency": Kind(
        "latency",
        "network_latency",
        {"delay_ms": 200},
        1.0,
        faulty=lambda ok, d: not ok or d > 0.150,
        healthy=lambda ok, d: ok and d < 0.050,
    ),
}


@dataclass
class Sample:
    observer: str
    kind: str
    start: float
    end: float
    success: bool
    duration: float


def spread_names(prefix: str, n: int, interval: float) -> list[str]:
    """``n`` check names whose scheduler slot offsets are ~interval/n apart."""
    from agent.scheduler import slot_offset

    names: list[str] = []
    used: set[str] = set()
    for k in range(n):
        want = (k + 0.5) * interval / n
        best = min(
            (f"{prefix}{i}" for i in range(4000) if f"{prefix}{i}" not in used),
            key=lambda name: abs(slot_offset(name, NODE, interval) - want),
        )
        used.add(best)
        names.append(best)
    return names


def seismo_config(client_ns: str, target: str) -> str:
    lines = [
        f"agent: {{node: {NODE}, region: bench, zone: bench, watch_config: false}}",
        f"api: {{token: {TOKEN}}}",
        f'faults: {{allowed_targets: ["netns:{client_ns}"], max_ttl: 10m, default_ttl: 2m}}',
        "modules:",
    ]
    for kind in KINDS.values():
        lines.append(
            f"  http_{kind.name}: {{prober: http, timeout: {kind.timeout}s, "
            "http: {preferred_ip_protocol: ip4}}"
        )
    lines.append("checks:")
    for kind in KINDS.values():
        for name in spread_names(f"{kind.name}-", N_CHECKS, CHECK_INTERVAL):
            lines.append(
                f"  - {{name: {name}, module: http_{kind.name}, target: '{target}', "
                f"interval: {CHECK_INTERVAL}s, timeout: {kind.timeout}s}}"
            )
    return "\n".join(lines) + "\n"


def blackbox_config() -> str:
    lines = ["modules:"]
    for kind in KINDS.values():
        lines.append(
            f"  http_{kind.name}: {{prober: http, timeout: {kind.timeout}s, "
            "http: {preferred_ip_protocol: ip4}}"
        )
    return "\n".join(lines) + "\n"


# --- inside the client namespace: the driver -------------------------------------------------


def _page_value(page: str, name: str) -> float:
    for line in page.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return float("nan")


class Driver:
    """Runs the observers and the faults; every loop is bounded by ``self.stop_at``."""

    def __init__(self, seismo: str, blackbox: str, target: str, cadence: float) -> None:
        self.seismo = seismo
        self.blackbox = blackbox
        self.target = target
        self.cadence = cadence
        self.samples: list[Sample] = []
        self.stop_at = 0.0

    async def scrape(self, session: Any, base: str, observer: str, kind: Kind) -> None:
        import aiohttp

        url = f"{base}/probe"
        params = {"module": f"http_{kind.name}", "target": self.target}
        headers = {"X-Prometheus-Scrape-Timeout-Seconds": "10"}
        start = time.time()
        try:
            async with session.get(
                url, params=params, headers=headers, timeout=aiohttp.ClientTimeout(total=10)
            ) as resp:
                page = await resp.text()
        except (aiohttp.ClientError, TimeoutError):
            return
        end = time.time()
        ok = _page_value(page, "probe_success") == 1.0
        duration = _page_value(page, "probe_duration_seconds")
        self.samples.append(Sample(observer, kind.name, start, end, ok, duration))

    async def lib_probe(self, module: Any, connector: Any, kind: Kind) -> None:
        from probes import run_probe

        start = time.time()
        result = await run_probe(module, self.target, kind.timeout, connector=connector)
        end = time.time()
        self.samples.append(
            Sample("seismo-lib", kind.name, start, end, result.success, result.duration_seconds)
        )

    async def observe(self, session: Any, kind: Kind) -> None:
        """Start one probe per observer every ``cadence`` until ``stop_at``."""
        from probes import Connector, Module

        module = Module.model_validate(
            {"prober": "http", "timeout": kind.timeout, "http": {"preferred_ip_protocol": "ip4"}}
        )
        connector = Connector()
        t0 = time.monotonic()
        async with asyncio.TaskGroup() as tg:
            for i in range(100_000):
                at = t0 + i * self.cadence
                if at > self.stop_at:
                    break
                await asyncio.sleep(max(0.0, at - time.monotonic()))
                tg.create_task(self.scrape(session, self.seismo, "seismo-probe", kind))
                tg.create_task(self.scrape(session, self.blackbox, "blackbox", kind))
                tg.create_task(self.lib_probe(module, connector, kind))

    async def poll_checks(self, session: Any, kind: Kind) -> None:
        """Collect every run of the kind's checks (``last`` of each, deduplicated)."""
        seen: set[tuple[str, float]] = set()
        prefix = f"{kind.name}-"
        for _ in range(1_000_000):
            if time.monotonic() > self.stop_at:
                break
            async with session.get(f"{self.seismo}/api/v1/checks") as resp:
                doc = await resp.json()
            for check in doc["checks"]:
                last = check.get("last")
                if not check["name"].startswith(prefix) or not last:
                    continue
                key = (check["name"], last["started_at"])
                if key in seen:
                    continue
                seen.add(key)
                start, dur = last["started_at"], last["duration_seconds"]
                self.samples.append(
                    Sample("seismo-check", kind.name, start, start + dur, last["success"], dur)
                )
            await asyncio.sleep(0.025)

    async def fault_call(self, session: Any, method: str, path: str, body: object = None) -> Any:
        headers = {"Authorization": f"Bearer {TOKEN}"}
        async with session.request(method, f"{self.seismo}{path}", json=body, headers=headers) as r:
            doc = await r.json()
            if r.status >= 300:
                raise RuntimeError(f"{method} {path}: {r.status} {doc}")
            return doc

    async def run(self, kind: Kind, client_ns: str, server_ip: str, reps: int) -> list[dict]:
        import aiohttp

        events: list[dict[str, Any]] = []
        self.stop_at = time.monotonic() + 3600
        conn = aiohttp.TCPConnector(limit=0)
        limit = aiohttp.ClientTimeout(total=15)
        async with aiohttp.ClientSession(connector=conn, timeout=limit) as session:
            observers = [
                asyncio.create_task(self.observe(session, kind)),
                asyncio.create_task(self.poll_checks(session, kind)),
            ]
            try:
                await asyncio.sleep(2.0)  # every check has run at least once
                for rep in range(reps):
                    await asyncio.sleep(1.0)
                    body = {
                        "kind": kind.fault,
                        "target": f"netns:{client_ns}",
                        "params": {**kind.params, "peer": server_ip},
                        "ttl": "60s",
                        "owner": "bench",
                    }
                    a0 = time.time()
                    entry = await self.fault_call(session, "POST", "/api/v1/faults", body)
                    a1 = time.time()
                    await asyncio.sleep(2.0)
                    r0 = time.time()
                    await self.fault_call(session, "DELETE", f"/api/v1/faults/{entry['id']}")
                    r1 = time.time()
                    await asyncio.sleep(1.5)
                    events.append(
                        {"rep": rep, "apply_sent": a0, "apply_returned": a1, "revert_sent": r0,
                         "revert_returned": r1, "facts": entry.get("facts")}
                    )  # fmt: skip
            finally:
                self.stop_at = time.monotonic()
                with contextlib.suppress(Exception):
                    await self.fault_call(session, "DELETE", "/api/v1/faults")
                for task in observers:
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(task, timeout=15)
        return events


def first_after(samples: list[Sample], after: float, pred: Callable[[bool, float], bool]) -> float:
    """End time of the first sample ending after ``after`` that satisfies ``pred``."""
    for s in sorted(samples, key=lambda s: s.end):
        if s.end > after and pred(s.success, s.duration):
            return s.end
    return float("nan")


def analyse(kind: Kind, samples: list[Sample], events: list[dict]) -> list[dict]:
    rows = []
    for ev in events:
        for observer in OBSERVERS:
            mine = [s for s in samples if s.observer == observer]
            seen_fault = first_after(mine, ev["apply_sent"], kind.faulty)
            seen_healthy = first_after(mine, ev["revert_sent"], kind.healthy)
            baseline = [s for s in mine if ev["apply_sent"] - 1.0 < s.end < ev["apply_sent"]]
            rows.append(
                {
                    "kind": kind.name,
                    "rep": ev["rep"],
                    "observer": observer,
                    "onset_s": seen_fault - ev["apply_returned"],
                    "recovery_s": seen_healthy - ev["revert_returned"],
                    "onset_from_sent_s": seen_fault - ev["apply_sent"],
                    "recovery_from_sent_s": seen_healthy - ev["revert_sent"],
                    "apply_call_s": ev["apply_returned"] - ev["apply_sent"],
                    "revert_call_s": ev["revert_returned"] - ev["revert_sent"],
                    "baseline_probes": len(baseline),
                    "baseline_bad": sum(
                        1 for s in baseline if not kind.healthy(s.success, s.duration)
                    ),
                    "facts": ev["facts"],
                }
            )
    return rows


def inside(args: argparse.Namespace) -> int:
    """The bench proper, run inside the client netns (so are the agents it starts)."""
    workdir = Path(args.workdir)
    target = f"http://{args.server_ip}:{PORT}/"
    with Fleet() as fleet:
        argv = [
            sys.executable,
            "-m",
            "bench.netns",
            "target",
            "--listen",
            f"{args.server_ip}:{PORT}",
        ]
        srv = fleet.start(pinned(LOAD_CPU, in_netns(args.server_ns, argv)), stdout=subprocess.PIPE)
        assert srv.stdout is not None
        if srv.stdout.readline().strip() != b"ready":
            raise RuntimeError("the target did not start")
        cfg = workdir / "seismo.yaml"
        cfg.write_text(seismo_config(args.client_ns, target))
        argv = [sys.executable, "-m", "agent", "agent", "--config", str(cfg)]
        argv += ["--listen", f"127.0.0.1:{AGENT_PORT}", "--data-dir", str(workdir / "data")]
        agent = fleet.start(pinned(AGENT_CPU, argv))
        wait_http(f"http://127.0.0.1:{AGENT_PORT}/readyz", agent, timeout=120)
        bcfg = workdir / "blackbox.yml"
        bcfg.write_text(blackbox_config())
        _, bb_port = fleet.blackbox(bcfg)
        rows: list[dict] = []
        for name in args.kinds.split(","):
            kind = KINDS[name]
            driver = Driver(
                f"http://127.0.0.1:{AGENT_PORT}",
                f"http://127.0.0.1:{bb_port}",
                target,
                args.cadence,
            )
            events = asyncio.run(driver.run(kind, args.client_ns, args.server_ip, args.reps))
            for row in analyse(kind, driver.samples, events):
                rows.append(row)
                print(json.dumps(row), flush=True)
            if args.samples:
                with open(args.samples, "a") as f:
                    for s in driver.samples:
                        f.write(json.dumps(asdict(s)) + "\n")
    return 0


# --- in the root namespace: set up, run inside, report, tear down ---------------------------


def report(rows: list[dict]) -> None:
    def fmt(vals: list[float]) -> str:
        v = [x for x in vals if x == x]
        if not v:
            return "n/a"
        ms = [1000 * x for x in v]
        missing = f" ({len(vals) - len(v)} missing)" if len(v) < len(vals) else ""
        return f"{statistics.median(ms):7.0f} [{min(ms):.0f}..{max(ms):.0f}]{missing}"

    print("\nms from the API call returning (and from it being sent), median [min..max] over reps:")
    for kind in KINDS:
        sel = [r for r in rows if r["kind"] == kind]
        if not sel:
            continue
        calls = {r["rep"]: (r["apply_call_s"], r["revert_call_s"]) for r in sel}
        print(
            f"{kind}: apply call {fmt([a for a, _ in calls.values()])} ms, "
            f"revert call {fmt([b for _, b in calls.values()])} ms"
        )
        for observer in OBSERVERS:
            mine = [r for r in sel if r["observer"] == observer]
            bad = sum(r["baseline_bad"] for r in mine)
            base = sum(r["baseline_probes"] for r in mine)
            print(
                f"  {observer:13} onset {fmt([r['onset_s'] for r in mine])} "
                f"(sent {fmt([r['onset_from_sent_s'] for r in mine])})  "
                f"recovery {fmt([r['recovery_s'] for r in mine])} "
                f"(sent {fmt([r['recovery_from_sent_s'] for r in mine])})  "
                f"(baseline: {bad} of {base} probes unhealthy)"
            )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--kinds", default="blackhole,latency")
    p.add_argument("--cadence", type=float, default=0.1, help="seconds between probe starts")
    p.add_argument("--json", type=Path, help="write the rows here")
    p.add_argument("--samples", type=Path, help="append every probe sample here (JSON lines)")
    p.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--workdir", help=argparse.SUPPRESS)
    p.add_argument("--client-ns", help=argparse.SUPPRESS)
    p.add_argument("--server-ns", help=argparse.SUPPRESS)
    p.add_argument("--server-ip", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.inside:
        return inside(args)
    for name in args.kinds.split(","):
        if name not in KINDS:
            p.error(f"unknown kind {name!r} (known: {', '.join(KINDS)})")
    print_machine()
    with tempfile.TemporaryDirectory(prefix="seismo-onset-") as tmp:
        workdir = Path(tmp)

        def teardown(pair: Pair) -> None:
            clear_faults_local(pair, workdir / "seismo.yaml", workdir / "data")

        with veth_pair(on_teardown=teardown) as pair:
            argv_in = [sys.executable, "-m", "bench.fault_onset", "--inside"]
            argv_in += ["--workdir", str(workdir), "--client-ns", pair.client]
            argv_in += ["--server-ns", pair.server, "--server-ip", pair.server_ip]
            argv_in += ["--reps", str(args.reps), "--kinds", args.kinds]
            argv_in += ["--cadence", str(args.cadence)]
            if args.samples:
                argv_in += ["--samples", str(args.samples.resolve())]
            budget = 120 + args.reps * len(args.kinds.split(",")) * 15
            rows = pair.run_inside(pinned(LOAD_CPU, argv_in), timeout=budget)
    report(rows)
    if args.json:
        args.json.write_text(json.dumps(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
