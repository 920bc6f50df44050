"""The load generator: drives ``/probe`` requests from its own process.

Closed loop (``--concurrency``): that many workers, each sending its next request as soon as
the previous one answered, over keep-alive connections. Open loop (``--rate``): requests start
at a fixed rate whatever the answers do (how Prometheus scrapes), with at most
``--max-in-flight`` outstanding. Both stop after ``--count`` requests or ``--max-seconds``,
whichever comes first. A request counts as ``ok`` when the page says ``probe_success 1``.

    python -m bench.loadgen --urls urls.json --concurrency 50 --count 5000 --max-seconds 30

prints one JSON line: ``{"done", "ok", "failed", "elapsed", "sample_failure"}``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import sys
import time

import aiohttp


class _Tally:
    def __init__(self) -> None:
        self.done = 0
        self.ok = 0
        self.sample_failure = ""


async def _one(session: aiohttp.ClientSession, url: str, tally: _Tally) -> None:
    try:
        async with session.get(url) as resp:
            body = await resp.read()
        success = resp.status == 200 and b"\nprobe_success 1" in body
        if not success and not tally.sample_failure:
            tally.sample_failure = f"{resp.status} {url} {body[-400:]!r}"
    except (aiohttp.ClientError, TimeoutError) as exc:
        success = False
        if not tally.sample_failure:
            tally.sample_failure = f"{url}: {exc!r}"
    tally.done += 1
    tally.ok += success


async def closed_loop(urls: list[str], concurrency: int, count: int, max_seconds: float) -> _Tally:
    tally = _Tally()
    cycle = itertools.cycle(urls)
    issued = 0
    deadline = time.monotonic() + max_seconds
    conn = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(connector=conn, timeout=timeout) as session:

        async def worker() -> None:
            nonlocal issued
            while issued < count and time.monotonic() < deadline:
                issued += 1
                await _one(session, next(cycle), tally)

        async with asyncio.TaskGroup() as tg:
            for _ in range(concurrency):
                tg.create_task(worker())
    return tally


async def open_loop(
    urls: list[str], rate: float, count: int, max_seconds: float, max_in_flight: int
) -> _Tally:
    tally = _Tally()
    loop = asyncio.get_running_loop()
    slots = asyncio.Semaphore(max_in_flight)
    start = loop.time()
    deadline = start + max_seconds
    conn = aiohttp.TCPConnector(limit=max_in_flight)
    timeout = aiohttp.ClientTimeout(total=30)

    async def fire(url: str) -> None:
        try:
            await _one(session, url, tally)
        finally:
            slots.release()

    async with (
        aiohttp.ClientSession(connector=conn, timeout=timeout) as session,
        asyncio.TaskGroup() as tg,
    ):
        for i, url in zip(range(count), itertools.cycle(urls), strict=False):
            due = start + i / rate
            if due > deadline:
                break
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            await slots.acquire()
            tg.create_task(fire(url))
    return tally


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--urls", required=True, help="a JSON file holding a list of URLs")
    p.add_argument("--concurrency", type=int, default=0, help="closed loop with N workers")
    p.add_argument("--rate", type=float, default=0.0, help="open loop at N requests/s")
    p.add_argument("--max-in-flight", type=int, default=1024)
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--max-seconds", type=float, required=True)
    args = p.parse_args(argv)
    with open(args.urls) as fh:
        urls = json.load(fh)
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    t0 = time.monotonic()
    if args.rate > 0:
        coro = open_loop(urls, args.rate, args.count, args.max_seconds, args.max_in_flight)
    else:
        coro = closed_loop(urls, max(1, args.concurrency), args.count, args.max_seconds)
    tally = asyncio.run(coro)
    out = {
        "done": tally.done,
        "ok": tally.ok,
        "failed": tally.done - tally.ok,
        "elapsed": time.monotonic() - t0,
        "sample_failure": tally.sample_failure,
    }
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
