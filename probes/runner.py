"""Run one probe of any kind: pick the prober, own the timeout, build the result.

Every probe kind is a module with the same signature (blackbox_exporter's ``prober/``
pattern)::

    async def probe(target: str, module: Module, rec: Recorder, connector: Connector) -> None

A prober records phases and gauges into ``rec`` and ends with ``rec.fail(...)`` for an
expected failure; it never catches the timeout. The timeout is applied here, by the caller's
choice of ``timeout`` (the scheduler's, or ``/probe``'s), and blamed on the phase it hit.

    result = await run_probe(module, "https://example.com", timeout=5.0)
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping

from probes.connection import Connector
from probes.modules import Module
from probes.result import TIMEOUT_REASONS, ProbeFailed, ProbeResult, Reason, Recorder

__all__ = ["PROBERS", "Prober", "run_probe"]

Prober = Callable[[str, Module, Recorder, Connector], Awaitable[None]]


def _probers() -> Mapping[str, Prober]:
    from probes import dns, http, tcp, tls

    return {"http": http.probe, "tcp": tcp.probe, "dns": dns.probe, "tls": tls.probe}


PROBERS: Mapping[str, Prober] = _probers()


async def run_probe(
    module: Module,
    target: str,
    timeout: float,  # noqa: ASYNC109 - applied below by one timer, to blame a phase
    *,
    connector: Connector | None = None,
) -> ProbeResult:
    """Probe ``target`` with ``module`` once, bounded by ``timeout`` seconds.

    Expected failures come back as a result with a reason; bugs raise.
    """
    rec = Recorder(module.prober)
    started_at = time.time()
    start = time.perf_counter()
    reason, detail = Reason.SUCCESS, ""
    prober = PROBERS.get(module.prober)
    if prober is None:
        reason = Reason.UNSUPPORTED
        detail = (
            f"prober {module.prober!r} is not supported by seismo (supported: http, tcp, dns, tls)"
        )
    else:
        # The timeout is one timer that cancels this task, as ``asyncio.timeout`` does, but
        # without its context manager: that ran two coroutines and a reschedule per probe,
        # ~4% of a plain http probe. A cancellation from outside (the agent stopping, the
        # check removed) is not a timeout and propagates.
        task = asyncio.current_task()
        assert task is not None  # run_probe always runs in a task
        loop = task.get_loop()
        cancelling = task.cancelling()
        expired = False

        def expire() -> None:
            nonlocal expired
            expired = True
            task.cancel()

        timer = loop.call_at(loop.time() + timeout, expire)
        try:
            await prober(target, module, rec, connector or Connector())
        except ProbeFailed as failed:
            reason, detail = failed.reason, failed.detail
        except (asyncio.CancelledError, TimeoutError) as exc:
            if isinstance(exc, asyncio.CancelledError):
                ours, expired = expired, False
                if not ours or task.uncancel() > cancelling:
                    raise  # cancelled from outside (too): not a timeout
            phase = rec.current_phase
            reason = TIMEOUT_REASONS.get(phase, Reason.TIMEOUT)
            detail = f"timed out after {timeout:g}s" + (f" during {phase}" if phase else "")
        finally:
            timer.cancel()
            if expired:  # the timer fired, but its cancellation never reached us: take it back
                task.uncancel()
    duration = time.perf_counter() - start
    return rec.finish(target, reason, detail, duration, started_at)
