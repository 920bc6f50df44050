"""Where seismo's ``/probe`` time goes: py-spy samples the agent under probe_throughput's load.

    python -m bench.profile_probe --kind http            # top functions, self and inclusive
    python -m bench.profile_probe --kind https --svg https.svg
    python -m bench.profile_probe --checks 10000      # the scheduler running 10k checks instead

Needs ``py-spy`` (``pip install py-spy``). Prints the functions with the largest share of
samples, by self time (the function itself) and inclusive time (it and what it calls).
"""

from __future__ import annotations

import argparse
import collections
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

from bench.check_scale import seismo_config
from bench.harness import Fleet, make_certs
from bench.probe_throughput import KINDS, drive, probe_urls, write_configs


def top(collapsed: Path, n: int) -> None:
    self_count: collections.Counter[str] = collections.Counter()
    incl_count: collections.Counter[str] = collections.Counter()
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        total += count
        frames = [_short(f) for f in stack.split(";")]
        self_count[frames[-1]] += count
        for frame in set(frames):
            incl_count[frame] += count
    print(f"{total} samples")
    print("\nself time:")
    for frame, c in self_count.most_common(n):
        print(f"  {100 * c / total:5.1f}%  {frame}")
    print("\ninclusive time:")
    for frame, c in incl_count.most_common(n):
        print(f"  {100 * c / total:5.1f}%  {frame}")


def _short(frame: str) -> str:
    # "func (path/to/file.py:123)" -> "func (file.py)"; line numbers split one function apart
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    parts = Path(path).parts
    short = "/".join(parts[-2:]) if parts else path
    return f"{name} ({short})"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kind", choices=KINDS, default="http")
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--concurrency", type=int, default=50)
    p.add_argument("--top", type=int, default=30)
    p.add_argument("--svg", type=Path, help="also write a flame graph here")
    p.add_argument("--raw", type=Path, help="also keep the collapsed stacks here")
    p.add_argument("--checks", type=int, default=0, help="profile N continuous checks instead")
    p.add_argument("--warmup", type=float, default=20.0, help="seconds before sampling checks")
    args = p.parse_args(argv)
    pyspy = shutil.which("py-spy")
    if pyspy is None:
        print("py-spy is not installed: pip install py-spy", file=sys.stderr)
        return 2
    with Fleet() as fleet:
        certs = make_certs(fleet.dir)
        ports = fleet.targets(http=4, https=4, certs=certs)
        dns_port = fleet.dnsmasq()
        load = None
        if args.checks:
            seismo_cfg = fleet.dir / "checks.yaml"
            seismo_cfg.write_text(seismo_config(args.checks, certs, ports, dns_port))
            proc, port = fleet.seismo(seismo_cfg)
            time.sleep(args.warmup)
        else:
            seismo_cfg, _ = write_configs(fleet.dir, certs)
            proc, port = fleet.seismo(seismo_cfg)
            urls = probe_urls(port, args.kind, ports, dns_port)
            drive(fleet, urls, args.concurrency, 500, 30)
            load = threading.Thread(
                target=drive,
                args=(fleet, urls, args.concurrency, 10**6, args.seconds + 2),
                daemon=True,
            )
            load.start()
        collapsed = fleet.dir / "profile.txt"
        cmd = [pyspy, "record", "--pid", str(proc.pid), "--duration", str(int(args.seconds))]
        cmd += ["--rate", "200", "--nonblocking", "--format", "raw", "-o", str(collapsed)]
        subprocess.run(cmd, check=True, capture_output=True, timeout=args.seconds + 60)
        if args.svg:
            cmd[cmd.index("raw")] = "flamegraph"
            cmd[-1] = str(args.svg.resolve())
            subprocess.run(cmd, check=True, capture_output=True, timeout=args.seconds + 60)
        if load is not None:
            load.join(timeout=args.seconds + 90)
        if args.raw:
            shutil.copyfile(collapsed, args.raw)
        top(collapsed, args.top)
    return 0


if __name__ == "__main__":
    sys.exit(main())
