"""Question 2: 1,000 and 10,000 continuous checks at a 10 s interval on one core.

seismo runs the checks itself (a mix: 50% http, 25% dns, 25% tls), pinned to core 0. The
peer is blackbox_exporter, pinned the same way, driven the way Prometheus would drive it for
the same checks: an open-loop scraper sending the same probes to ``/probe`` at N/10 per second.
Targets (``bench.targets``, dnsmasq) and the scraper run on core 1.

Reported per run, over a measured window after a warm-up:

- CPU of the agent process (% of one core, from ``/proc/<pid>/stat``) and RSS (VmRSS);
- scheduler lateness p50/p99/max from samples of ``last_lateness_seconds`` (the per-check
  API, polled for a rotating subset of checks so polling stays cheap; runs that started in
  the window only), and the share of runs started within 20 ms from the
  ``seismo_scheduler_lateness_seconds`` histogram (every run);
- ``seismo_event_loop_lag_seconds`` p99 (histogram buckets) over the window. These histogram
  figures also count the stall of the ``/metrics`` scrape that opens the window (its
  histograms are read as its rendering begins; ~0.3 s at 10,000 checks);
- CPU milliseconds per run (CPU over runs completed): unlike CPU %, it holds still when other
  tenants of the machine take the agent's core and the agent falls behind;
- the durations those sampled runs reported: the targets answer at once, so what grows
  here is time a probe spent waiting for the agent's own event loop;
- with ``--scrape-interval S``, ``/metrics`` is also scraped every S seconds during the window,
  as Prometheus would, and the slowest scrape is reported (its cost is in the CPU figures).

    python -m bench.check_scale                          # 1k and 10k, 3 reps, 60 s windows
    python -m bench.check_scale --sizes 10000 --duration 30 --warmup 15
    python -m bench.check_scale --sizes 10000 --only seismo --scrape-interval 15

Every process is killed on exit; every loop is bounded by the window.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bench.harness import (
    LOAD_CPU,
    Certs,
    Fleet,
    cpu_seconds,
    http_get,
    make_certs,
    percentile,
    pinned,
    print_machine,
    rss_bytes,
)

INTERVAL = 10.0
ON_TIME = 0.02
#: per-check API calls per second while sampling lateness
POLL_RATE = 40.0


def seismo_config(n: int, certs: Certs, ports: dict[str, list[int]], dns_port: int) -> str:
    lines = [
        "agent:",
        "  node: bench",
        "  region: bench",
        "  zone: bench",
        "  watch_config: false",
        "  max_concurrency: 512",
        "modules:",
        "  http_2xx: {prober: http, timeout: 5s, http: {preferred_ip_protocol: ip4}}",
        "  dns_a:",
        "    prober: dns",
        "    timeout: 5s",
        "    dns: {preferred_ip_protocol: ip4, query_name: www.bench.test, query_type: A}",
        "  tls_cert:",
        "    prober: tls",
        "    timeout: 5s",
        f"    tls: {{preferred_ip_protocol: ip4, tls_config: {{ca_file: {certs.ca}}}}}",
        "checks:",
    ]
    for i, (module, target) in enumerate(check_targets(n, ports, dns_port)):
        lines.append(f"  - {{name: c{i}, module: {module}, target: '{target}', interval: 10s}}")
    return "\n".join(lines) + "\n"


def check_targets(n: int, ports: dict[str, list[int]], dns_port: int) -> list[tuple[str, str]]:
    """The mix: of every 4 checks, 2 http, 1 dns, 1 tls; spread over the target ports."""
    out = []
    for i in range(n):
        slot = i % 4
        if slot < 2:
            p = ports["http"][i % len(ports["http"])]
            out.append(("http_2xx", f"http://127.0.0.1:{p}/"))
        elif slot == 2:
            out.append(("dns_a", f"127.0.0.1:{dns_port}"))
        else:
            p = ports["https"][i % len(ports["https"])]
            out.append(("tls_cert", f"127.0.0.1:{p}"))
    return out


def blackbox_config(certs: Certs) -> str:
    return f"""modules:
  http_2xx: {{prober: http, timeout: 5s, http: {{preferred_ip_protocol: ip4}}}}
  dns_a:
    prober: dns
    timeout: 5s
    dns: {{preferred_ip_protocol: ip4, query_name: www.bench.test, query_type: A}}
  tls_cert:
    prober: tcp
    timeout: 5s
    tcp: {{preferred_ip_protocol: ip4, tls: true, tls_config: {{ca_file: {certs.ca}}}}}
"""


# --- /metrics histograms ---------------------------------------------------------------------


def histogram(page: str, name: str) -> dict[float, float]:
    """Cumulative bucket counts of an unlabelled histogram: {le: count}."""
    out: dict[float, float] = {}
    prefix = f'{name}_bucket{{le="'
    for line in page.splitlines():
        if line.startswith(prefix):
            le_text, _, value = line[len(prefix) :].partition('"} ')
            out[math.inf if le_text == "+Inf" else float(le_text)] = float(value)
    return out


def delta(after: dict[float, float], before: dict[float, float]) -> dict[float, float]:
    return {le: after[le] - before.get(le, 0.0) for le in after}


def bucket_quantile(cumulative: dict[float, float], q: float) -> float:
    """The upper bound of the bucket holding quantile ``q`` (0..1)."""
    total = cumulative.get(math.inf, 0.0)
    if total <= 0:
        return float("nan")
    for le in sorted(cumulative):
        if cumulative[le] >= q * total:
            return le
    return math.inf


def share_below(cumulative: dict[float, float], bound: float) -> float:
    total = cumulative.get(math.inf, 0.0)
    return cumulative.get(bound, float("nan")) / total if total else float("nan")


# --- one run ----------------------------------------------------------------------------------


@dataclass
class ScaleRun:
    agent: str
    checks: int
    rep: int
    cpu_pct: float
    rss_mib: float
    probes_per_s: float
    failed_share: float
    lateness_p50_ms: float = float("nan")
    lateness_p99_ms: float = float("nan")
    lateness_max_ms: float = float("nan")
    lateness_samples: int = 0
    duration_p50_ms: float = float("nan")
    duration_p99_ms: float = float("nan")
    cpu_ms_per_run: float = float("nan")
    scrapes: int = 0
    scrape_max_s: float = float("nan")
    on_time_share: float = float("nan")
    hist_p50_ms: float = float("nan")
    hist_p99_ms: float = float("nan")
    loop_lag_p99_ms: float = float("nan")
    notes: list[str] = field(default_factory=list)


def _sample_runs(
    port: int, n: int, since: float, stop: threading.Event, out: list[tuple[float, float]]
) -> None:
    """Poll ``/api/v1/checks/c<i>`` round-robin; keep once (lateness, duration) of each run
    that started at or after ``since`` (Unix time): a check's last run may predate the window."""
    seen: set[tuple[int, float]] = set()
    i = 0
    period = 1.0 / POLL_RATE
    next_at = time.monotonic()
    while not stop.is_set():
        try:
            doc = json.loads(http_get(f"http://127.0.0.1:{port}/api/v1/checks/c{i}", timeout=5))
        except OSError:
            doc = {}
        last = doc.get("last")
        if last is not None and float(last["started_at"]) >= since:
            key = (i, float(last["started_at"]))
            if key not in seen:
                seen.add(key)
                out.append((float(doc["last_lateness_seconds"]), float(last["duration_seconds"])))
        i = (i + 1) % n
        next_at += period
        stop.wait(max(0.0, next_at - time.monotonic()))


def _scrape(url: str, every: float, stop: threading.Event, out: list[float]) -> None:
    """GET ``url`` every ``every`` seconds until ``stop``; keep each scrape's wall time."""
    while not stop.wait(every):
        t0 = time.monotonic()
        try:
            http_get(url, timeout=60)
        except OSError:
            continue
        out.append(time.monotonic() - t0)


def run_seismo(fleet: Fleet, n: int, rep: int, args: argparse.Namespace, env: dict) -> ScaleRun:
    cfg = fleet.dir / f"seismo-{n}.yaml"
    cfg.write_text(seismo_config(n, env["certs"], env["ports"], env["dns_port"]))
    proc, port = fleet.seismo(cfg)
    try:
        time.sleep(args.warmup)
        base = f"http://127.0.0.1:{port}"
        page0 = http_get(f"{base}/metrics", timeout=60).decode()
        # runs delayed by that scrape start before the window (but they are in the histogram
        # deltas: page0's histograms were read when its rendering began)
        time.sleep(2.0)
        page0b = http_get(f"{base}/api/v1/checks/c0").decode()  # noqa: F841 - warms the route
        samples: list[tuple[float, float]] = []
        scrapes: list[float] = []
        stop = threading.Event()
        poll_args = (port, n, time.time(), stop, samples)
        threads = [threading.Thread(target=_sample_runs, args=poll_args)]
        if args.scrape_interval > 0:
            scrape_args = (f"{base}/metrics", args.scrape_interval, stop, scrapes)
            threads.append(threading.Thread(target=_scrape, args=scrape_args))
        cpu0, t0 = cpu_seconds(proc.pid), time.monotonic()
        for thread in threads:
            thread.start()
        try:
            time.sleep(args.duration)
        finally:
            stop.set()
            for thread in threads:
                thread.join(timeout=60)
        cpu1, t1 = cpu_seconds(proc.pid), time.monotonic()
        rss = rss_bytes(proc.pid)
        page1 = http_get(f"{base}/metrics", timeout=60).decode()
    finally:
        fleet.stop(proc)
    late = delta(
        histogram(page1, "seismo_scheduler_lateness_seconds"),
        histogram(page0, "seismo_scheduler_lateness_seconds"),
    )
    lag = delta(
        histogram(page1, "seismo_event_loop_lag_seconds"),
        histogram(page0, "seismo_event_loop_lag_seconds"),
    )
    runs = _counter_sum(page1, "seismo_check_runs_total") - _counter_sum(
        page0, "seismo_check_runs_total"
    )
    failed = _counter_sum(page1, "seismo_check_runs_total", 'result="failure"') - _counter_sum(
        page0, "seismo_check_runs_total", 'result="failure"'
    )
    span = t1 - t0
    probes_per_s = runs / (span + 2.0)
    lateness = [late for late, _ in samples]
    durations = [duration for _, duration in samples]
    return ScaleRun(
        agent="seismo",
        checks=n,
        rep=rep,
        cpu_pct=100 * (cpu1 - cpu0) / span,
        rss_mib=rss / 2**20,
        probes_per_s=probes_per_s,
        failed_share=failed / runs if runs else float("nan"),
        duration_p50_ms=1000 * percentile(durations, 50),
        duration_p99_ms=1000 * percentile(durations, 99),
        lateness_p50_ms=1000 * percentile(lateness, 50),
        lateness_p99_ms=1000 * percentile(lateness, 99),
        lateness_max_ms=1000 * max(lateness, default=float("nan")),
        lateness_samples=len(samples),
        on_time_share=share_below(late, ON_TIME),
        hist_p50_ms=1000 * bucket_quantile(late, 0.5),
        hist_p99_ms=1000 * bucket_quantile(late, 0.99),
        loop_lag_p99_ms=1000 * bucket_quantile(lag, 0.99),
        cpu_ms_per_run=1000 * (cpu1 - cpu0) / (probes_per_s * span) if runs else float("nan"),
        scrapes=len(scrapes),
        scrape_max_s=max(scrapes, default=float("nan")),
    )


def _counter_sum(page: str, name: str, must: str = "") -> float:
    total = 0.0
    for line in page.splitlines():
        if line.startswith(name + "{") and must in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def run_blackbox(fleet: Fleet, n: int, rep: int, args: argparse.Namespace, env: dict) -> ScaleRun:
    cfg = fleet.dir / "blackbox.yml"
    cfg.write_text(blackbox_config(env["certs"]))
    proc, port = fleet.blackbox(cfg)
    try:
        base = f"http://127.0.0.1:{port}/probe?module="
        urls = [f"{base}{m}&target={t}" for m, t in check_targets(n, env["ports"], env["dns_port"])]
        path = fleet.dir / "scrape-urls.json"
        path.write_text(json.dumps(urls))
        rate = n / INTERVAL
        total_s = args.warmup + args.duration
        argv = [sys.executable, "-m", "bench.loadgen", "--urls", str(path), "--rate", str(rate)]
        argv += ["--count", str(int(rate * total_s) + 1), "--max-seconds", str(total_s)]
        scraper = subprocess.Popen(
            pinned(LOAD_CPU, argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            start_new_session=True,
        )  # fmt: skip
        try:
            time.sleep(args.warmup)
            cpu0, t0 = cpu_seconds(proc.pid), time.monotonic()
            time.sleep(args.duration - 1)
            cpu1, t1 = cpu_seconds(proc.pid), time.monotonic()
            rss = rss_bytes(proc.pid)
            out, _ = scraper.communicate(timeout=120)
        finally:
            if scraper.poll() is None:
                scraper.kill()
                scraper.wait(timeout=10)
        res = json.loads(out.decode().strip().splitlines()[-1])
    finally:
        fleet.stop(proc)
    run = ScaleRun(
        agent="blackbox",
        checks=n,
        rep=rep,
        cpu_pct=100 * (cpu1 - cpu0) / (t1 - t0),
        rss_mib=rss / 2**20,
        probes_per_s=res["done"] / res["elapsed"],
        failed_share=res["failed"] / res["done"] if res["done"] else float("nan"),
    )
    if res["sample_failure"]:
        run.notes.append(res["sample_failure"][:300])
    return run


def report(runs: list[ScaleRun], sizes: list[int]) -> None:
    def f(values: list[float], fmt: str) -> str:
        v = [x for x in values if not math.isnan(x)]
        if not v:
            return "n/a"
        return f"{fmt.format(statistics.median(v))} [{fmt.format(min(v))}-{fmt.format(max(v))}]"

    cols = [
        ("CPU %", "cpu_pct", "{:.1f}"),
        ("CPU ms/run", "cpu_ms_per_run", "{:.3f}"),
        ("RSS MiB", "rss_mib", "{:.0f}"),
        ("probes/s", "probes_per_s", "{:.0f}"),
        ("failed", "failed_share", "{:.3f}"),
        ("late p50 ms", "lateness_p50_ms", "{:.2f}"),
        ("late p99 ms", "lateness_p99_ms", "{:.1f}"),
        ("late max ms", "lateness_max_ms", "{:.0f}"),
        ("run duration p50 ms", "duration_p50_ms", "{:.2f}"),
        ("run duration p99 ms", "duration_p99_ms", "{:.1f}"),
        ("on time (<20ms)", "on_time_share", "{:.3f}"),
        ("hist p99 ms (bucket)", "hist_p99_ms", "{:.1f}"),
        ("loop lag p99 ms (bucket)", "loop_lag_p99_ms", "{:.1f}"),
        ("slowest /metrics scrape s", "scrape_max_s", "{:.2f}"),
    ]
    print()
    for agent in ("seismo", "blackbox"):
        for n in sizes:
            sel = [r for r in runs if r.agent == agent and r.checks == n]
            if not sel:
                continue
            print(f"{agent} {n} checks ({len(sel)} reps):")
            for label, attr, fmt in cols:
                text = f([getattr(r, attr) for r in sel], fmt)
                if text != "n/a":
                    print(f"  {label:26} {text}")
    for n in sizes:
        s = [r.cpu_pct for r in runs if r.agent == "seismo" and r.checks == n]
        b = [r.cpu_pct for r in runs if r.agent == "blackbox" and r.checks == n]
        if s and b:
            ratio = statistics.median(s) / statistics.median(b)
            print(f"CPU ratio seismo/blackbox at {n}: {ratio:.2f}")
    if len(sizes) >= 2:
        lo, hi = min(sizes), max(sizes)
        for agent in ("seismo", "blackbox"):
            a = [r for r in runs if r.agent == agent and r.checks == lo]
            b = [r for r in runs if r.agent == agent and r.checks == hi]
            if a and b:
                cpu = statistics.median(r.cpu_pct for r in b) / statistics.median(
                    r.cpu_pct for r in a
                )
                rss_a = statistics.median(r.rss_mib for r in a)
                rss_b = statistics.median(r.rss_mib for r in b)
                per_check = (rss_b - rss_a) * 1024 / (hi - lo)
                print(
                    f"{agent} growth {lo}->{hi}: CPU x{cpu:.1f} (checks x{hi / lo:.0f}), "
                    f"RSS {rss_a:.0f}->{rss_b:.0f} MiB ({per_check:.1f} KiB per added check)"
                )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="1000,10000")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--duration", type=float, default=60.0, help="measured window, seconds")
    p.add_argument("--warmup", type=float, default=20.0, help="seconds before the window")
    p.add_argument("--only", choices=("seismo", "blackbox"))
    p.add_argument(
        "--scrape-interval", type=float, default=0.0, help="also scrape seismo's /metrics (s)"
    )
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    os.sched_setaffinity(0, {LOAD_CPU})
    sizes = [int(s) for s in args.sizes.split(",")]
    print_machine()
    runs: list[ScaleRun] = []
    with Fleet() as fleet:
        certs = make_certs(fleet.dir)
        ports = fleet.targets(http=8, https=8, certs=certs)
        dns_port = fleet.dnsmasq()
        env = {"certs": certs, "ports": ports, "dns_port": dns_port}
        for rep in range(args.reps):
            for n in sizes:
                for agent, fn in (("seismo", run_seismo), ("blackbox", run_blackbox)):
                    if args.only and agent != args.only:
                        continue
                    run = fn(fleet, n, rep, args, env)
                    runs.append(run)
                    print(json.dumps(asdict(run)), flush=True)
    report(runs, sizes)
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in runs]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
