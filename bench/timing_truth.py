"""Question 3: are the timings true? Known server-side delays vs what the agents report.

A loopback target (``bench.targets``, core 1) answers ``/delay/<ms>`` after a server-side
sleep of 0, 50 or 200 ms. For each delay this bench takes, one request at a time:

- the **raw socket cost**: a bare blocking-socket GET (connect, send, read to EOF) from this
  process, pinned to the agents' core 0 while the agents are idle;
- seismo's and blackbox_exporter's ``probe_duration_seconds`` (and seismo's phases) from
  ``/probe``, both agents pinned to core 0.

It reports the error against the known delay (reported - delay) and the measurement overhead
(reported - raw socket cost) at p50 and p99. Then the same again with the agents' core loaded:
seismo running 10,000 checks at 10 s (the check_scale mix), blackbox_exporter driven by a
scraper at the same 1,000 probes/s; for seismo, ``seismo_event_loop_lag_seconds`` and
``seismo_scheduler_lateness_seconds`` over the loaded window show how much of the added error
is the agent's own starvation.

**A delay on connect** (the latency fault): two network namespaces joined by veth
(:mod:`bench.netns`); the target in the server namespace, seismo, blackbox_exporter and the
raw-socket driver in the client namespace, and seismo's ``network_latency`` fault (``peer`` =
the server; this kernel has no netem, so the userspace delay line) adds +0, +50 or +200 ms to
the frames the client sends. The SYN waits D, so the **connect phase is +D**; the request
waits D again, so the time to the first response byte (**processing**) is +D; the response is
not delayed; so **the whole probe is +2D**. Errors are taken against those known values; the
raw socket's connect and connect-to-EOF times under the same fault show what the delay line
itself delivered. Probes alternate seismo / blackbox_exporter / raw, one at a time.

    python -m bench.timing_truth                 # 3 reps, idle, loaded, connect delay
    python -m bench.timing_truth --no-loaded --reps 5
    python -m bench.timing_truth --only-connect-delay --reps 3
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench.check_scale import (
    INTERVAL,
    blackbox_config,
    bucket_quantile,
    check_targets,
    delta,
    histogram,
    seismo_config,
)
from bench.harness import (
    AGENT_CPU,
    LOAD_CPU,
    Fleet,
    http_get,
    make_certs,
    percentile,
    pinned,
    print_machine,
)

DELAYS_MS = (0, 50, 200)
#: samples per delay: fewer for the long delays so a repetition stays short
SAMPLES = {0: 400, 50: 80, 200: 30}
PHASES = ("resolve", "connect", "processing", "transfer")


def raw_get(port: int, path: str) -> float:
    """One bare GET over a fresh connection; seconds from connect to EOF."""
    req = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n".encode()
    t0 = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(req)
        while s.recv(65536):
            pass
    return time.perf_counter() - t0


def raw_series(port: int, delay_ms: int, n: int) -> list[float]:
    old = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {AGENT_CPU})
    try:
        for _ in range(20):
            raw_get(port, f"/delay/{delay_ms}")
        return [raw_get(port, f"/delay/{delay_ms}") for _ in range(n)]
    finally:
        os.sched_setaffinity(0, old)


def parse_page(page: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in page.splitlines():
        if line.startswith("probe_duration_seconds "):
            out["duration"] = float(line.split()[1])
        elif line.startswith("probe_success "):
            out["success"] = float(line.split()[1])
        elif line.startswith('probe_http_duration_seconds{phase="'):
            phase = line.split('"')[1]
            out[phase] = float(line.rsplit(" ", 1)[1])
    return out


def probe_series(
    agent_port: int, target_port: int, delay_ms: int, n: int, max_seconds: float
) -> list[dict[str, float]]:
    """``n`` sequential probes (after 10 warm-up ones), or fewer if ``max_seconds`` runs out."""
    conn = http.client.HTTPConnection("127.0.0.1", agent_port, timeout=30)
    path = f"/probe?module=http_2xx&target=http://127.0.0.1:{target_port}/delay/{delay_ms}"
    out = []
    deadline = time.monotonic() + max_seconds
    try:
        for i in range(n + 10):
            if time.monotonic() > deadline and len(out) >= 10:
                break
            conn.request("GET", path)
            page = conn.getresponse().read().decode()
            if i >= 10:  # the first few warm the agent's caches
                out.append(parse_page(page))
    finally:
        conn.close()
    failed = sum(1 for s in out if s.get("success") != 1.0)
    if failed:
        raise RuntimeError(f"{failed} of {n} probes failed on /delay/{delay_ms}")
    return out


def summarize(samples: list[dict[str, float]], raw: list[float], delay_ms: int) -> dict[str, float]:
    d = [s["duration"] for s in samples]
    delay = delay_ms / 1000
    row = {
        "p50_ms": 1000 * percentile(d, 50),
        "p99_ms": 1000 * percentile(d, 99),
        "err_p50_ms": 1000 * (percentile(d, 50) - delay),
        "err_p99_ms": 1000 * (percentile(d, 99) - delay),
        "raw_p50_ms": 1000 * percentile(raw, 50),
        "raw_p99_ms": 1000 * percentile(raw, 99),
        "over_p50_ms": 1000 * (percentile(d, 50) - percentile(raw, 50)),
        "over_p99_ms": 1000 * (percentile(d, 99) - percentile(raw, 99)),
    }
    for phase in PHASES:
        vals = [s[phase] for s in samples if phase in s]
        if vals:
            row[f"{phase}_p50_ms"] = 1000 * statistics.median(vals)
    return row


def scraper(fleet: Fleet, agent_port: int, env: dict, seconds: float) -> subprocess.Popen[bytes]:
    """Drive blackbox with the 10,000-check mix at 1,000 probes/s (Prometheus' role)."""
    base = f"http://127.0.0.1:{agent_port}/probe?module="
    urls = [
        f"{base}{m}&target={t}" for m, t in check_targets(10_000, env["ports"], env["dns_port"])
    ]
    path = fleet.dir / "scrape-urls.json"
    path.write_text(json.dumps(urls))
    rate = 10_000 / INTERVAL
    argv = [sys.executable, "-m", "bench.loadgen", "--urls", str(path), "--rate", str(rate)]
    argv += ["--count", str(int(rate * seconds)), "--max-seconds", str(seconds)]
    return fleet.start(pinned(LOAD_CPU, argv))


def one_rep(fleet: Fleet, env: dict, loaded: bool, args: argparse.Namespace) -> list[dict]:
    http_port = env["ports"]["http"][0]
    rows: list[dict] = []
    agents = {}
    extra: list = []
    if loaded:
        cfg = fleet.dir / "seismo-loaded.yaml"
        cfg.write_text(seismo_config(10_000, env["certs"], env["ports"], env["dns_port"]))
    else:
        cfg = fleet.dir / "seismo-idle.yaml"
        cfg.write_text(
            "agent: {node: bench, region: bench, zone: bench, watch_config: false}\n"
            "modules:\n"
            "  http_2xx: {prober: http, timeout: 5s, http: {preferred_ip_protocol: ip4}}\n"
        )
    bcfg = fleet.dir / "blackbox.yml"
    bcfg.write_text(blackbox_config(env["certs"]))
    try:
        for name in ("seismo", "blackbox"):
            proc, port = fleet.seismo(cfg) if name == "seismo" else fleet.blackbox(bcfg)
            extra.append(proc)
            load = None
            if loaded and name == "blackbox":
                load = scraper(fleet, port, env, args.load_seconds)
                extra.append(load)
            if loaded:
                time.sleep(args.warmup)
            agents[name] = port
            page0 = http_get(f"http://127.0.0.1:{port}/metrics", timeout=60).decode()
            for delay in DELAYS_MS:
                scale = args.sample_scale * (args.loaded_scale if loaded else 1.0)
                n = max(10, int(SAMPLES[delay] * scale))
                raw = raw_series(http_port, delay, n)
                samples = probe_series(port, http_port, delay, n, args.series_seconds)
                row = {"agent": name, "loaded": loaded, "delay_ms": delay, "n": len(samples)}
                row.update(summarize(samples, raw, delay))
                rows.append(row)
            if name == "seismo":
                page1 = http_get(f"http://127.0.0.1:{port}/metrics", timeout=60).decode()
                for key, metric in (
                    ("loop_lag", "seismo_event_loop_lag_seconds"),
                    ("lateness", "seismo_scheduler_lateness_seconds"),
                ):
                    h = delta(histogram(page1, metric), histogram(page0, metric))
                    for row in rows:
                        if row["agent"] == "seismo":
                            row[f"{key}_p50_ms"] = 1000 * bucket_quantile(h, 0.5)
                            row[f"{key}_p99_ms"] = 1000 * bucket_quantile(h, 0.99)
            if load is not None:
                fleet.stop(load)
            fleet.stop(proc)
    finally:
        for proc in extra:
            fleet.stop(proc)
    return rows


def report(rows: list[dict]) -> None:
    def f(vals: list[float], fmt: str = "{:.3f}") -> str:
        v = [x for x in vals if not math.isnan(x)]
        if not v:
            return "n/a"
        return f"{fmt.format(statistics.median(v))} [{fmt.format(min(v))}..{fmt.format(max(v))}]"

    keys = [
        "p50_ms", "err_p50_ms", "err_p99_ms", "raw_p50_ms", "raw_p99_ms",
        "over_p50_ms", "over_p99_ms", "resolve_p50_ms", "connect_p50_ms",
        "processing_p50_ms", "transfer_p50_ms", "loop_lag_p50_ms", "loop_lag_p99_ms",
        "lateness_p50_ms", "lateness_p99_ms",
    ]  # fmt: skip
    print()
    for loaded in (False, True):
        for agent in ("seismo", "blackbox"):
            for delay in DELAYS_MS:
                sel = [
                    r for r in rows
                    if r["agent"] == agent and r["loaded"] == loaded and r["delay_ms"] == delay
                ]  # fmt: skip
                if not sel:
                    continue
                state = "loaded" if loaded else "idle"
                print(f"{agent} {state} delay={delay}ms ({len(sel)} reps), ms, median [min..max]:")
                for key in keys:
                    vals = [r[key] for r in sel if key in r]
                    if vals:
                        print(f"  {key:20} {f(vals)}")


# --- a delay on connect: the latency fault, between two namespaces -------------------------

CD_TOKEN = "bench-timing-truth-token-0123456789"
CD_PORT = 8080
CD_AGENT_PORT = 9115
CD_DELAYS_MS = (0, 50, 200)
#: samples per delay and agent: each probe at +200 ms takes ~400 ms
CD_SAMPLES = {0: 150, 50: 60, 200: 30}


def raw_split(host: str, port: int) -> tuple[float, float]:
    """One bare GET over a fresh connection: (connect seconds, connect-to-EOF seconds)."""
    req = f"GET / HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n".encode()
    t0 = time.perf_counter()
    with socket.create_connection((host, port), timeout=5) as s:
        t1 = time.perf_counter()
        s.sendall(req)
        while s.recv(65536):
            pass
    return t1 - t0, time.perf_counter() - t0


def _cd_summary(who: str, delay_ms: int, samples: list[dict[str, float]]) -> dict:
    d = delay_ms / 1000
    row: dict = {"agent": who, "delay_ms": delay_ms, "n": len(samples)}
    known = {"connect": d, "processing": d, "duration": 2 * d}
    for key, value in known.items():
        vals = [s[key] for s in samples if key in s]
        if not vals:
            continue
        for q in (50, 99):
            row[f"{key}_p{q}_ms"] = 1000 * percentile(vals, q)
            row[f"{key}_err_p{q}_ms"] = 1000 * (percentile(vals, q) - value)
    return row


def connect_delay_inside(args: argparse.Namespace) -> int:
    """Inside the client netns: the target, both agents, the fault, the samples."""
    from bench.harness import wait_http
    from bench.netns import api, in_netns

    workdir = Path(args.workdir)
    host = args.server_ip
    with Fleet() as fleet:
        argv = [sys.executable, "-m", "bench.netns", "target", "--listen", f"{host}:{CD_PORT}"]
        srv = fleet.start(pinned(LOAD_CPU, in_netns(args.server_ns, argv)), stdout=subprocess.PIPE)
        assert srv.stdout is not None
        if srv.stdout.readline().strip() != b"ready":
            raise RuntimeError("the target did not start")
        cfg = workdir / "seismo.yaml"
        cfg.write_text(
            "agent: {node: bench, region: bench, zone: bench, watch_config: false}\n"
            f"api: {{token: {CD_TOKEN}}}\n"
            f'faults: {{allowed_targets: ["netns:{args.client_ns}"], max_ttl: 10m}}\n'
            "modules:\n"
            "  http_2xx: {prober: http, timeout: 5s, http: {preferred_ip_protocol: ip4}}\n"
        )
        argv = [sys.executable, "-m", "agent", "agent", "--config", str(cfg)]
        argv += ["--listen", f"127.0.0.1:{CD_AGENT_PORT}", "--data-dir", str(workdir / "data")]
        agent = fleet.start(pinned(AGENT_CPU, argv))
        base = f"http://127.0.0.1:{CD_AGENT_PORT}"
        wait_http(f"{base}/readyz", agent, timeout=120)
        bcfg = workdir / "blackbox.yml"
        bcfg.write_text(
            "modules:\n"
            "  http_2xx: {prober: http, timeout: 5s, http: {preferred_ip_protocol: ip4}}\n"
        )
        _, bb_port = fleet.blackbox(bcfg)
        ports = {"seismo": CD_AGENT_PORT, "blackbox": bb_port}
        conns = {
            k: http.client.HTTPConnection("127.0.0.1", p, timeout=30) for k, p in ports.items()
        }
        path = f"/probe?module=http_2xx&target=http://{host}:{CD_PORT}/"
        os.sched_setaffinity(0, {AGENT_CPU})  # the raw socket runs where the agents run
        try:
            for rep in range(args.reps):
                for delay in CD_DELAYS_MS:
                    fault_id = None
                    if delay:
                        body = {
                            "kind": "network_latency",
                            "target": f"netns:{args.client_ns}",
                            "params": {"delay_ms": delay, "peer": host},
                            "ttl": "5m",
                            "owner": "bench",
                        }
                        status, doc = api(base, "POST", "/api/v1/faults", body, CD_TOKEN)
                        if status != 201:
                            raise RuntimeError(f"apply failed: {status} {doc}")
                        fault_id = doc["id"]
                    try:
                        got: dict[str, list[dict[str, float]]] = {
                            "seismo": [],
                            "blackbox": [],
                            "raw": [],
                        }
                        n = max(10, int(CD_SAMPLES[delay] * args.sample_scale))
                        for i in range(n + 3):  # 3 warm-up rounds
                            sample: dict[str, dict[str, float]] = {}
                            for who, conn in conns.items():
                                conn.request("GET", path)
                                page = parse_page(conn.getresponse().read().decode())
                                if page.get("success") != 1.0:
                                    raise RuntimeError(f"{who} probe failed at +{delay} ms: {page}")
                                sample[who] = page
                            c, t = raw_split(host, CD_PORT)
                            sample["raw"] = {"connect": c, "duration": t}
                            if i >= 3:
                                for who, page in sample.items():
                                    got[who].append(page)
                    finally:
                        if fault_id is not None:
                            status, doc = api(
                                base, "DELETE", f"/api/v1/faults/{fault_id}", None, CD_TOKEN
                            )
                            if status >= 300:
                                raise RuntimeError(f"revert failed: {status} {doc}")
                    for who, samples in got.items():
                        row = _cd_summary(who, delay, samples)
                        row["rep"] = rep
                        print(json.dumps(row), flush=True)
        finally:
            for conn in conns.values():
                conn.close()
            api(base, "DELETE", "/api/v1/faults", None, CD_TOKEN)
    return 0


def connect_delay(args: argparse.Namespace) -> list[dict]:
    """Set up the namespaces, run :func:`connect_delay_inside` in the client one, tear down."""
    import tempfile

    from bench.netns import Pair, clear_faults_local, veth_pair

    with tempfile.TemporaryDirectory(prefix="seismo-cdelay-") as tmp:
        workdir = Path(tmp)

        def teardown(pair: Pair) -> None:
            clear_faults_local(pair, workdir / "seismo.yaml", workdir / "data")

        with veth_pair(on_teardown=teardown) as pair:
            argv = [sys.executable, "-m", "bench.timing_truth", "--connect-delay-inside"]
            argv += ["--workdir", str(workdir), "--client-ns", pair.client]
            argv += ["--server-ns", pair.server, "--server-ip", pair.server_ip]
            argv += ["--reps", str(args.reps), "--sample-scale", str(args.sample_scale)]
            return pair.run_inside(argv, timeout=180 + 120 * args.reps)


def report_connect_delay(rows: list[dict]) -> None:
    keys = [
        "connect_p50_ms", "connect_err_p50_ms", "connect_err_p99_ms",
        "processing_p50_ms", "processing_err_p50_ms",
        "duration_p50_ms", "duration_err_p50_ms", "duration_err_p99_ms",
    ]  # fmt: skip
    print("\nconnect delay (latency fault): known connect +D, processing +D, duration +2D")
    for delay in CD_DELAYS_MS:
        for who in ("raw", "seismo", "blackbox"):
            sel = [r for r in rows if r["agent"] == who and r["delay_ms"] == delay]
            if not sel:
                continue
            print(f"{who} +{delay}ms ({len(sel)} reps), ms, median [min..max]:")
            for key in keys:
                vals = [r[key] for r in sel if key in r]
                if vals:
                    mid, lo, hi = statistics.median(vals), min(vals), max(vals)
                    print(f"  {key:22} {mid:.3f} [{lo:.3f}..{hi:.3f}]")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--no-loaded", action="store_true", help="skip the loaded-core runs")
    p.add_argument("--warmup", type=float, default=20.0, help="load warm-up before sampling")
    p.add_argument("--load-seconds", type=float, default=120.0, help="bound of the scraper")
    p.add_argument("--sample-scale", type=float, default=1.0, help="scale the sample counts")
    p.add_argument("--loaded-scale", type=float, default=0.5, help="further scale when loaded")
    p.add_argument("--series-seconds", type=float, default=40.0, help="bound of one series")
    p.add_argument("--json", type=Path)
    p.add_argument("--no-connect-delay", action="store_true", help="skip the latency-fault row")
    p.add_argument("--only-connect-delay", action="store_true", help="only the latency-fault row")
    p.add_argument("--connect-delay-inside", action="store_true", help=argparse.SUPPRESS)
    for hidden in ("--workdir", "--client-ns", "--server-ns", "--server-ip"):
        p.add_argument(hidden, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.connect_delay_inside:
        return connect_delay_inside(args)
    os.sched_setaffinity(0, {LOAD_CPU})
    print_machine()
    rows: list[dict] = []
    if args.only_connect_delay:
        rows = connect_delay(args)
        report_connect_delay(rows)
        if args.json:
            args.json.write_text(json.dumps(rows))
        return 0
    with Fleet() as fleet:
        certs = make_certs(fleet.dir)
        ports = fleet.targets(http=8, https=8, certs=certs)
        dns_port = fleet.dnsmasq()
        env = {"certs": certs, "ports": ports, "dns_port": dns_port}
        for rep in range(args.reps):
            for loaded in (False,) if args.no_loaded else (False, True):
                for row in one_rep(fleet, env, loaded, args):
                    row["rep"] = rep
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    report(rows)
    if not args.no_connect_delay:
        cd_rows = connect_delay(args)
        report_connect_delay(cd_rows)
        rows += [{**r, "connect_delay": True} for r in cd_rows]
    if args.json:
        args.json.write_text(json.dumps(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
