"""Watch guardrails during a run: sample their sources, return the first :class:`Trip`.

Sources are either a probe that this process runs itself (``probes.run_probe``) or an agent
check whose live summary is read over HTTP. Sampling is async and bounded: every probe and
every request sits inside a timeout, and the loop sleeps ``interval`` between samples (that
is the guardrail's cadence, not a synchronisation).

    baselines = await measure_baselines(guardrails)
    trip = await watch(guardrails, baselines)   # returns only when one trips; cancel to stop
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence

import aiohttp

from agent.client import resolve_agent_url
from agent.experiments.checks import CheckSummary, summary_url
from agent.experiments.extension import Guardrail, ProbeSource
from agent.experiments.guardrails import ProbeWindow, Sample, Trip, WindowStats, evaluate, quantile
from probes import run_probe

__all__ = ["fetch_summary", "measure_baselines", "watch"]


async def _probe_once(source: ProbeSource) -> Sample:
    result = await run_probe(source.module, source.target, timeout=source.timeout)
    return Sample(time.monotonic(), result.success, result.duration_seconds, result.reason.value)


async def fetch_summary(
    session: aiohttp.ClientSession, agent_url: str, check: str, window: float, limit: float
) -> CheckSummary:
    """Read a check's live summary from the agent; raise ``ValueError`` on a bad answer."""
    url = summary_url(agent_url, check, window)
    async with asyncio.timeout(limit), session.get(url) as resp:
        if resp.status != 200:
            raise ValueError(f"GET {url} answered {resp.status}")
        return CheckSummary.from_json(await resp.json())


async def measure_baselines(
    guardrails: Sequence[Guardrail], request_timeout: float = 5.0
) -> dict[str, float | None]:
    """The pre-run p95 (seconds) of each baseline-relative guardrail, by name."""
    baselines: dict[str, float | None] = {}
    async with aiohttp.ClientSession() as session:
        for g in guardrails:
            if g.max_p95_ratio_to_baseline is None:
                continue
            if g.probe is not None:
                samples = [await _probe_once(g.probe) for _ in range(g.baseline_samples)]
                baselines[g.name] = quantile([s.duration for s in samples], 0.95)
            elif g.check is not None:
                summary = await fetch_summary(
                    session, resolve_agent_url(g.agent_url), g.check, g.window, request_timeout
                )
                baselines[g.name] = summary.p95_seconds
    return baselines


async def _watch_one(
    g: Guardrail,
    baseline: float | None,
    session: aiohttp.ClientSession,
    request_timeout: float,
) -> Trip:
    window = ProbeWindow(g.window)
    while True:
        if g.probe is not None:
            window.add(await _probe_once(g.probe))
            stats = window.stats(time.monotonic())
        else:
            assert g.check is not None
            try:
                summary = await fetch_summary(
                    session, resolve_agent_url(g.agent_url), g.check, g.window, request_timeout
                )
            except (aiohttp.ClientError, TimeoutError, ValueError):
                stats = WindowStats(0, None, None, None)  # no data is not a trip
            else:
                stats = WindowStats.from_summary(summary)
        trip = evaluate(g, stats, baseline)
        if trip is not None:
            return trip
        await asyncio.sleep(g.interval)


async def watch(
    guardrails: Sequence[Guardrail],
    baselines: Mapping[str, float | None],
    request_timeout: float = 5.0,
) -> Trip:
    """Sample every guardrail until one trips, and return that trip."""
    if not guardrails:
        await asyncio.Event().wait()  # nothing to watch: wait to be cancelled
    async with aiohttp.ClientSession() as session:
        tasks = [
            asyncio.create_task(_watch_one(g, baselines.get(g.name), session, request_timeout))
            for g in guardrails
        ]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            return next(iter(done)).result()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    raise AssertionError("unreachable")
