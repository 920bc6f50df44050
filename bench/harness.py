"""Process plumbing shared by the benchmarks: start, pin, measure and always kill.

Every process a benchmark starts goes through :class:`Fleet`, which puts it in its own
process group and kills the group on exit, on failure too. CPU time is read from
``/proc/<pid>/stat`` (utime + stime of every thread of that process, children excluded),
so the load generator's CPU is never counted as the agent's.

    with Fleet() as fleet:
        target = fleet.targets(http=2, https=2, certs=certs)
        agent = fleet.seismo(config_path, cpu=AGENT_CPU)
        before = cpu_seconds(agent.pid)
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

AGENT_CPU = 0
#: the targets and the load generator share the other core
LOAD_CPU = 1
BLACKBOX = "/usr/bin/prometheus-blackbox-exporter"
DNSMASQ = "/usr/sbin/dnsmasq"
_TICK = os.sysconf("SC_CLK_TCK")
REPO = Path(__file__).resolve().parent.parent


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` (all its threads), in seconds."""
    raw = Path(f"/proc/{pid}/stat").read_text()
    fields = raw[raw.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_get(url: str, timeout: float = 10.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as resp:  # loopback only
        return bytes(resp.read())


def wait_http(url: str, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    """Poll ``url`` until it answers 200; fail fast if ``proc`` died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode} before {url} answered")
        with contextlib.suppress(OSError):
            http_get(url, timeout=2)
            return
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer within {timeout:g}s")


def pinned(cpu: int, argv: Sequence[str]) -> list[str]:
    return ["taskset", "-c", str(cpu), *argv]


@dataclass
class Certs:
    ca: Path
    cert: Path
    key: Path


def make_certs(directory: Path) -> Certs:
    """A CA and a server certificate for ``localhost`` and ``127.0.0.1`` (trustme)."""
    import trustme

    ca = trustme.CA()
    server = ca.issue_cert("localhost", "127.0.0.1")
    certs = Certs(directory / "ca.pem", directory / "server.pem", directory / "server.key")
    ca.cert_pem.write_to_path(str(certs.ca))
    server.private_key_and_cert_chain_pem.write_to_path(str(certs.cert))
    server.private_key_pem.write_to_path(str(certs.key))
    return certs


class Fleet:
    """Owns every process a benchmark starts; kills each process group on exit."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []
        self._tmp = tempfile.TemporaryDirectory(prefix="seismo-bench-")
        self.dir = Path(self._tmp.name)

    def __enter__(self) -> Fleet:
        # SIGTERM (e.g. from `timeout`) must unwind through __exit__ and kill the fleet too
        signal.signal(signal.SIGTERM, _raise_exit)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()
        self._tmp.cleanup()

    def start(self, argv: Sequence[str], *, stdout: int | None = None) -> subprocess.Popen[bytes]:
        log = open(self.dir / f"proc{len(self.procs)}.log", "wb")  # noqa: SIM115
        proc = subprocess.Popen(
            list(argv),
            stdout=stdout if stdout is not None else log,
            stderr=log,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            cwd=REPO,
        )
        self.procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes]) -> None:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()
        if proc in self.procs:
            self.procs.remove(proc)

    def stop_all(self) -> None:
        for proc in reversed(list(self.procs)):
            self.stop(proc)

    # --- the processes the benchmarks use -----------------------------------------------

    def targets(
        self, *, http: int, https: int, certs: Certs, cpu: int = LOAD_CPU
    ) -> dict[str, list[int]]:
        argv = [sys.executable, "-m", "bench.targets", "--http", str(http), "--https", str(https)]
        argv += ["--cert", str(certs.cert), "--key", str(certs.key)]
        proc = self.start(pinned(cpu, argv), stdout=subprocess.PIPE)
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"bench.targets did not start (log in {self.dir})")
        ports: dict[str, list[int]] = json.loads(line)
        return ports

    def dnsmasq(self, *, cpu: int = LOAD_CPU) -> int:
        """dnsmasq answering ``*.bench.test`` with 127.0.0.1, no cache, no upstream."""
        port = free_port()
        argv = [
            DNSMASQ, "--keep-in-foreground", "--conf-file=/dev/null", "--no-resolv",
            "--no-hosts", "--bind-interfaces", "--listen-address=127.0.0.1",
            f"--port={port}", "--address=/bench.test/127.0.0.1", "--user=root",
            "--pid-file=", "--dns-forward-max=1000",
        ]  # fmt: skip
        self.start(pinned(cpu, argv))
        _wait_udp_dns(port)
        return port

    def seismo(self, config: Path, *, cpu: int = AGENT_CPU) -> tuple[subprocess.Popen[bytes], int]:
        port = free_port()
        argv = [sys.executable, "-m", "agent", "agent", "--config", str(config)]
        argv += ["--listen", f"127.0.0.1:{port}", "--data-dir", str(self.dir / f"data{port}")]
        proc = self.start(pinned(cpu, argv))
        wait_http(f"http://127.0.0.1:{port}/readyz", proc, timeout=180)
        return proc, port

    def blackbox(
        self, config: Path, *, cpu: int = AGENT_CPU
    ) -> tuple[subprocess.Popen[bytes], int]:
        port = free_port()
        argv = [BLACKBOX, f"--config.file={config}", f"--web.listen-address=127.0.0.1:{port}"]
        proc = self.start(pinned(cpu, argv))
        wait_http(f"http://127.0.0.1:{port}/metrics", proc)
        return proc, port


def _raise_exit(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def _wait_udp_dns(port: int, timeout: float = 10.0) -> None:
    """Wait until a DNS server answers a query for www.bench.test on ``port``."""
    query = (
        bytes.fromhex("abcd01000001000000000000") + b"\x03www\x05bench\x04test\x00\x00\x01\x00\x01"
    )
    deadline = time.monotonic() + timeout
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.2)
        while time.monotonic() < deadline:
            s.sendto(query, ("127.0.0.1", port))
            with contextlib.suppress(OSError):
                if s.recv(512)[:2] == b"\xab\xcd":
                    return
    raise RuntimeError(f"dnsmasq did not answer on port {port}")


# --- statistics and reporting ---------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def spread(values: Iterable[float]) -> tuple[float, float, float]:
    vals = list(values)
    return min(vals), statistics.median(vals), max(vals)


def fmt_spread(values: Iterable[float], fmt: str = "{:.0f}") -> str:
    lo, mid, hi = spread(values)
    return f"{fmt.format(mid)} ({fmt.format(lo)}-{fmt.format(hi)})"


def machine() -> dict[str, str]:
    model = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    try:
        import uvloop

        uv = uvloop.__version__
    except ImportError:
        uv = "absent"
    bb = subprocess.run([BLACKBOX, "--version"], capture_output=True, text=True, timeout=10)
    return {
        "nproc": str(os.cpu_count()),
        "cpu": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "uvloop": uv,
        "blackbox_exporter": (bb.stdout or bb.stderr).splitlines()[0],
    }


def print_machine() -> None:
    print("machine: " + ", ".join(f"{k}={v}" for k, v in machine().items()), flush=True)
