"""The TLS floor: what one client handshake costs this Python's OpenSSL, with nothing around it.

A blocking loop, pinned to core 0, against the bench's HTTPS target (core 1): connect, full
TLS handshake (verifying against the bench CA), close; CPU per handshake of this process.
With pyOpenSSL importable (it runs on the OpenSSL bundled in ``cryptography``'s wheel), the
same loop over it too, for comparison. This is the part of an https or tcp+tls probe no
prober code can remove.

    python -m bench.tls_floor --reps 3 --count 1500
"""

from __future__ import annotations

import argparse
import os
import socket
import ssl
import statistics
import sys
import time
from collections.abc import Callable

from bench.harness import AGENT_CPU, Fleet, make_certs, print_machine


def stdlib_loop(port: int, ca: str, count: int) -> float:
    ctx = ssl.create_default_context(cafile=ca)
    start = time.process_time()
    for _ in range(count):
        with (
            socket.create_connection(("127.0.0.1", port)) as sock,
            ctx.wrap_socket(sock, server_hostname="localhost"),
        ):
            pass
    return (time.process_time() - start) / count


def pyopenssl_loop(port: int, ca: str, count: int) -> float:
    from OpenSSL import SSL

    ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
    ctx.load_verify_locations(ca)
    ctx.set_verify(SSL.VERIFY_PEER)
    start = time.process_time()
    for _ in range(count):
        with socket.create_connection(("127.0.0.1", port)) as sock:
            conn = SSL.Connection(ctx, sock)
            conn.set_tlsext_host_name(b"localhost")
            conn.set_connect_state()
            conn.do_handshake()
    return (time.process_time() - start) / count


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--count", type=int, default=1500)
    args = p.parse_args(argv)
    print_machine()
    print(f"python's OpenSSL: {ssl.OPENSSL_VERSION}")
    loops: dict[str, Callable[[int, str, int], float]] = {"stdlib ssl": stdlib_loop}
    try:
        from OpenSSL import SSL

        version = SSL.OpenSSL_version(SSL.OPENSSL_VERSION).decode()
        loops[f"pyOpenSSL ({version})"] = pyopenssl_loop
    except ImportError:
        print("pyOpenSSL is not installed: the stdlib loop only")
    with Fleet() as fleet:
        certs = make_certs(fleet.dir)
        port = fleet.targets(http=0, https=1, certs=certs)["https"][0]
        os.sched_setaffinity(0, {AGENT_CPU})
        results: dict[str, list[float]] = {name: [] for name in loops}
        for _ in range(args.reps):
            for name, loop in loops.items():  # alternated, so drift hits both
                loop(port, str(certs.ca), 100)  # warm-up
                results[name].append(loop(port, str(certs.ca), args.count))
        for name, costs in results.items():
            us = sorted(c * 1e6 for c in costs)
            print(
                f"{name:40} {statistics.median(us):6.0f} us CPU per handshake "
                f"[{us[0]:.0f}-{us[-1]:.0f}] = {1e6 / statistics.median(us):.0f} per CPU-s"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
