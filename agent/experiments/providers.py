"""seismo's probes as Chaos Toolkit providers (``type: python``, this module).

Probe functions take blackbox-style arguments: a ``target``, a ``timeout`` (seconds or a
duration such as ``"5s"``) and the prober's settings under the prober's own key, exactly as
in a ``blackbox.yml`` module. They return ``ProbeResult.to_json()``: ``success``,
``reason``, ``detail``, ``phases``, ``tls`` facts, ``metrics``; the HTTP one adds ``status``
(the response code), so Chaos Toolkit's integer tolerance (``tolerance: 200``) works::

    - type: probe
      name: homepage-answers
      tolerance: {type: probe, name: ok, provider:
                  {type: python, module: agent.experiments.providers, func: succeeded,
                   arguments: {}}}
      provider:
        type: python
        module: agent.experiments.providers
        func: http
        arguments:
          target: http://127.0.0.1:18080/
          timeout: 5s
          http: {valid_status_codes: [200], fail_if_body_not_matches_regexp: ["seismo demo"]}

``http_ok``, ``dns_ok``, ``tls_ok`` and ``tcp_ok`` return only the boolean (``tolerance: true``).
``check_summary`` and ``check_ok`` read the live results of the agent's continuous checks.

Functions here are synchronous, as chaoslib calls them; each probe runs its own short event
loop (``asyncio.run``) in the runner process, where no loop is running.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import httpx

from agent.client import resolve_agent_url
from agent.experiments.checks import CheckSummary, summary_url
from probes import Module, run_probe
from probes.modules import parse_duration

__all__ = [
    "check_ok",
    "check_summary",
    "dns",
    "dns_ok",
    "http",
    "http_ok",
    "probe",
    "succeeded",
    "tcp",
    "tcp_ok",
    "tls",
    "tls_ok",
]

DEFAULT_TIMEOUT = 10.0


def _run(
    prober: str,
    target: str,
    timeout: float | str,
    settings: Mapping[str, Any] | None,
    module: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    if module is not None:
        mod = Module.model_validate(dict(module))
    else:
        mod = Module.model_validate({"prober": prober, prober: dict(settings or {})})
    seconds = parse_duration(timeout)
    if mod.timeout is not None:
        seconds = min(seconds, mod.timeout)
    result = asyncio.run(run_probe(mod, target, timeout=seconds))
    out = result.to_json()
    status = out["metrics"].get("probe_http_status_code")
    if mod.prober == "http" and status is not None:
        out["status"] = int(status)
    return out


def probe(
    target: str, module: dict[str, Any], timeout: float | str = DEFAULT_TIMEOUT
) -> dict[str, Any]:
    """Run any blackbox module (``{"prober": "http", "http": {...}}``) against ``target``."""
    return _run(str(module.get("prober", "")), target, timeout, None, module)


def http(
    target: str, timeout: float | str = DEFAULT_TIMEOUT, http: dict[str, Any] | None = None
) -> dict[str, Any]:
    """HTTP probe; ``http`` takes blackbox's ``http:`` keys (valid_status_codes, ...)."""
    return _run("http", target, timeout, http)


def dns(
    target: str,
    query_name: str,
    timeout: float | str = DEFAULT_TIMEOUT,
    dns: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """DNS probe of the server ``target`` (``127.0.0.1:15353``) for ``query_name``."""
    settings = {"query_name": query_name, **(dns or {})}
    return _run("dns", target, timeout, settings)


def tls(
    target: str, timeout: float | str = DEFAULT_TIMEOUT, tls: dict[str, Any] | None = None
) -> dict[str, Any]:
    """TLS handshake probe of ``host:port``; ``tls`` takes seismo's ``tls:`` module keys."""
    return _run("tls", target, timeout, tls)


def tcp(
    target: str, timeout: float | str = DEFAULT_TIMEOUT, tcp: dict[str, Any] | None = None
) -> dict[str, Any]:
    """TCP probe of ``host:port``; ``tcp`` takes blackbox's ``tcp:`` keys."""
    return _run("tcp", target, timeout, tcp)


def http_ok(
    target: str, timeout: float | str = DEFAULT_TIMEOUT, http: dict[str, Any] | None = None
) -> bool:
    """``http(...)["success"]``, for ``tolerance: true``."""
    return bool(_run("http", target, timeout, http)["success"])


def dns_ok(
    target: str,
    query_name: str,
    timeout: float | str = DEFAULT_TIMEOUT,
    dns: dict[str, Any] | None = None,
) -> bool:
    return bool(_run("dns", target, timeout, {"query_name": query_name, **(dns or {})})["success"])


def tls_ok(
    target: str, timeout: float | str = DEFAULT_TIMEOUT, tls: dict[str, Any] | None = None
) -> bool:
    return bool(_run("tls", target, timeout, tls)["success"])


def tcp_ok(
    target: str, timeout: float | str = DEFAULT_TIMEOUT, tcp: dict[str, Any] | None = None
) -> bool:
    return bool(_run("tcp", target, timeout, tcp)["success"])


def succeeded(value: Any = None) -> bool:
    """Tolerance function: true when a probe's output says ``success``."""
    return isinstance(value, Mapping) and value.get("success") is True


def check_summary(
    check: str,
    window: float | str = "30s",
    agent_url: str | None = None,
    timeout: float | str = 5.0,
) -> dict[str, Any]:
    """The live summary of the agent's continuous check ``check`` over ``window``.

    Agent URL: ``agent_url``, else ``$SEISMO_AGENT_URL``, else ``http://127.0.0.1:9115``.
    Raises (so the activity fails) when the agent cannot be read.
    """
    url = summary_url(resolve_agent_url(agent_url), check, parse_duration(window))
    response = httpx.get(url, timeout=parse_duration(timeout))
    response.raise_for_status()
    return CheckSummary.from_json(response.json()).to_json()


def check_ok(
    check: str,
    window: float | str = "30s",
    min_success_ratio: float = 1.0,
    max_p95_ms: float | None = None,
    min_count: int = 1,
    agent_url: str | None = None,
    timeout: float | str = 5.0,
) -> bool:
    """True when the check had ``min_count`` results in the window, its success ratio is at
    least ``min_success_ratio`` and (if given) its p95 latency at most ``max_p95_ms``."""
    s = CheckSummary.from_json(check_summary(check, window, agent_url, timeout))
    if s.count < min_count or s.success_ratio is None or s.success_ratio < min_success_ratio:
        return False
    return max_p95_ms is None or (s.p95_seconds is not None and s.p95_seconds * 1000 <= max_p95_ms)
