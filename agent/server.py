"""The agent's HTTP server (aiohttp).

    GET  /metrics                      Prometheus exposition (agent.metrics)
    GET  /healthz                      alive
    GET  /readyz                       config loaded and scheduler running, else 503
    GET  /probe?module=M&target=T      blackbox_exporter compatible; &debug=true for a report
    GET  /api/v1/checks                JSON status of every check
    GET  /api/v1/checks/{name}         one check
    GET  /api/v1/checks/{name}/summary?window=30s
                                       success ratio and latency quantiles over a window
    POST /-/reload                     reload the config (bearer token)
    /api/v1/runs...                    experiment runs (agent.experiments.api)

``/probe`` follows blackbox_exporter: ``module`` defaults to ``http_2xx``; the timeout is the
module's, capped by ``X-Prometheus-Scrape-Timeout-Seconds`` minus 0.5 s (120 s without the
header); a bad query is HTTP 400 with a message. ``probe_request`` reads those parameters for
this handler and for the lean front (agent.front), which answers the common ``/probe`` call
on the listening socket without aiohttp and hands everything else to this app.

    app = build_app(agent)
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import yaml
from aiohttp import web
from yarl import URL

from agent.auth import check_bearer
from agent.experiments.api import add_routes as add_run_routes
from agent.faults.api import routes as fault_routes
from agent.metrics import CONTENT_TYPE
from probes import run_probe
from probes.modules import Module, parse_duration

if TYPE_CHECKING:
    from agent.daemon import Agent
    from agent.scheduler import CheckRuntime

__all__ = [
    "AGENT",
    "SCRAPE_TIMEOUT_HEADER",
    "ProbeQueryError",
    "ProbeRequest",
    "bound_port",
    "build_app",
    "probe_request",
]

AGENT: web.AppKey[Agent] = web.AppKey("agent")
#: the scrape's budget, which Prometheus sends with every /probe call
SCRAPE_TIMEOUT_HEADER = "X-Prometheus-Scrape-Timeout-Seconds"
#: blackbox_exporter's --timeout-offset default
TIMEOUT_OFFSET = 0.5
#: the longest window a summary may ask for (the scheduler keeps about this much history)
MAX_SUMMARY_WINDOW = 600.0


def build_app(agent: Agent) -> web.Application:
    app = web.Application()
    app[AGENT] = agent
    app.router.add_get("/", index)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/probe", probe)
    app.router.add_get("/api/v1/checks", checks)
    app.router.add_get("/api/v1/checks/{name}", check)
    app.router.add_get("/api/v1/checks/{name}/summary", summary)
    app.router.add_post("/-/reload", reload)
    add_run_routes(app, agent.experiments, token=lambda: agent.token)
    app.add_routes(fault_routes(lambda request: agent.faults, lambda request: agent.token))
    return app


async def index(request: web.Request) -> web.Response:
    agent = request.app[AGENT]
    lines = [
        "seismo agent",
        "",
        "/metrics",
        "/probe?module=&target=",
        "/api/v1/checks",
        "/api/v1/runs",
        "/api/v1/faults",
        "/healthz",
        "/readyz",
        "",
        f"checks: {sum(1 for _ in agent.scheduler.checks())}",
    ]
    return web.Response(text="\n".join(lines) + "\n")


async def metrics(request: web.Request) -> web.Response:
    agent = request.app[AGENT]
    body = await agent.metrics.render_async(
        agent.scheduler, agent.lag, agent.experiments.stats(), agent.faults
    )
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


async def healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok\n")


async def readyz(request: web.Request) -> web.Response:
    agent = request.app[AGENT]
    if agent.ready:
        return web.Response(text="ready\n")
    return web.Response(status=503, text="not ready: config not loaded or scheduler not running\n")


@dataclass(frozen=True, slots=True)
class ProbeRequest:
    """One ``/probe`` call, read from its query and headers."""

    module_name: str
    module: Module
    target: str
    timeout: float
    debug: bool


class ProbeQueryError(ValueError):
    """A ``/probe`` call that blackbox_exporter answers with HTTP 400; ``str()`` is the text."""


def probe_request(
    raw_query: str, scrape_timeout: str | None, modules: Mapping[str, Module]
) -> ProbeRequest:
    """``/probe``'s parameters, as blackbox_exporter reads them.

    The one place they are read: the aiohttp handler below and the lean front
    (agent.front) both call it. ``raw_query`` is the query string as it came (still
    percent-encoded), decoded here by yarl as aiohttp decodes every query; a repeated
    parameter counts by its first value. ``scrape_timeout`` is the
    ``X-Prometheus-Scrape-Timeout-Seconds`` header (None or empty when absent).

        request = probe_request("module=http_2xx&target=example.com", "10", config.modules)
    """
    query = URL.build(query_string=raw_query, encoded=True).query
    module_name = query.get("module", "http_2xx")
    module = modules.get(module_name)
    if module is None:
        raise ProbeQueryError(f"Unknown module {module_name!r}\n")
    target = query.get("target", "")
    if not target:
        raise ProbeQueryError("Target parameter is missing\n")
    return ProbeRequest(
        module_name=module_name,
        module=module,
        target=target,
        timeout=_probe_timeout(scrape_timeout, module.timeout),
        debug=query.get("debug", "").lower() == "true",
    )


def _probe_timeout(header: str | None, module_timeout: float | None) -> float:
    """blackbox_exporter's getTimeout: the module's timeout within the scrape's budget."""
    scrape = 0.0
    if header:
        try:
            scrape = float(header)
        except ValueError:
            raise ProbeQueryError(
                f"Failed to parse timeout from Prometheus header: {header!r}\n"
            ) from None
    if scrape == 0:
        scrape = 120.0
    budget = scrape - TIMEOUT_OFFSET
    if (module_timeout and 0 < module_timeout < budget) or budget < 0:
        return module_timeout or scrape
    return budget


async def probe(request: web.Request) -> web.Response:
    agent = request.app[AGENT]
    try:
        call = probe_request(
            request.rel_url.raw_query_string,
            request.headers.get(SCRAPE_TIMEOUT_HEADER),
            agent.config.modules,
        )
    except ProbeQueryError as exc:
        raise web.HTTPBadRequest(text=str(exc)) from None
    result = await run_probe(call.module, call.target, call.timeout, connector=agent.connector)
    page = agent.metrics.render_probe(result)
    if not call.debug:
        return web.Response(text=page, headers={"Content-Type": CONTENT_TYPE})
    report = [
        "Logs for the probe:",
        f"module={call.module_name} target={call.target} timeout={call.timeout:g}s",
        f"result={'success' if result.success else 'failure'} reason={result.reason.value}",
        *(f"detail={result.detail}" for _ in [0] if result.detail),
        *(f"phase {k}: {v * 1000:.3f} ms" for k, v in result.phases.items()),
        "",
        "Metrics that would have been returned:",
        page,
        "Module configuration:",
        yaml.safe_dump(call.module.model_dump(mode="json", exclude_defaults=True), sort_keys=False),
    ]
    return web.Response(text="\n".join(report))


def _check_json(rt: CheckRuntime) -> dict[str, Any]:
    spec = rt.spec
    return {
        "name": spec.name,
        "module": spec.module_name,
        "prober": spec.module.prober,
        "target": spec.target,
        "interval_seconds": spec.interval,
        "timeout_seconds": spec.timeout,
        "labels": dict(spec.labels),
        "running": rt.running,
        "runs": {reason.value: n for reason, n in rt.runs.items()},
        "skipped_runs": rt.skipped,
        "last_lateness_seconds": rt.last_lateness,
        "last": rt.last.to_json() if rt.last else None,
    }


async def checks(request: web.Request) -> web.Response:
    agent = request.app[AGENT]
    return web.json_response(
        {
            "identity": agent.identity.model_dump(),
            "checks": [_check_json(rt) for rt in agent.scheduler.checks()],
        },
        dumps=_dumps,
    )


def _runtime(request: web.Request) -> CheckRuntime:
    name = request.match_info["name"]
    rt = request.app[AGENT].scheduler.get(name)
    if rt is None:
        raise web.HTTPNotFound(text=f"no check named {name!r}\n")
    return rt


async def check(request: web.Request) -> web.Response:
    return web.json_response(_check_json(_runtime(request)), dumps=_dumps)


async def summary(request: web.Request) -> web.Response:
    rt = _runtime(request)
    raw = request.rel_url.query.get("window", "60s")
    try:
        window = parse_duration(raw)
    except ValueError as exc:
        raise web.HTTPBadRequest(text=f"window: {exc}\n") from None
    if not 0 < window <= MAX_SUMMARY_WINDOW:
        raise web.HTTPBadRequest(
            text=f"window: {raw!r} must be > 0 and <= {MAX_SUMMARY_WINDOW:g}s\n"
        )
    loop_now = request.app[AGENT].clock()
    s = rt.window.summary(loop_now, window)
    return web.json_response(
        {
            "check": rt.spec.name,
            "window_seconds": s.window_seconds,
            "count": s.count,
            "success_ratio": s.success_ratio,
            "latency_seconds": {"p50": s.p50, "p95": s.p95, "p99": s.p99},
            "last_reason": rt.last.reason.value if rt.last else None,
            "generated_at": time.time(),
        }
    )


async def reload(request: web.Request) -> web.Response:
    agent = request.app[AGENT]
    check_bearer(request, agent.token)
    ok, messages = await agent.reload()
    status = 200 if ok else 400
    return web.json_response({"reloaded": ok, "messages": messages}, status=status)


def _dumps(obj: Any) -> str:
    return json.dumps(obj, default=str)


def bound_port(site: web.TCPSite) -> int:
    """The port a started site listens on (useful with port 0)."""
    server = site._server
    sockets = getattr(server, "sockets", None) or []
    return int(sockets[0].getsockname()[1]) if sockets else 0
