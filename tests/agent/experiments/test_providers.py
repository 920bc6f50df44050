"""seismo's Chaos Toolkit providers: probes with blackbox arguments, and live check results
read from the agent (a tiny aiohttp fake serving the agent's summary JSON)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from agent.experiments import providers
from agent.experiments.extension import Guardrail
from agent.experiments.watch import watch
from tests.agent.experiments.support import DemoTarget

SUMMARY = {
    "check": "homepage",
    "window_seconds": 30.0,
    "count": 29,
    "success_ratio": 0.9,
    "latency_seconds": {"p50": 0.01, "p95": 0.04, "p99": 0.05},
    "last_reason": "http_status",
}


@pytest.fixture
async def fake_agent() -> AsyncIterator[tuple[str, list[str]]]:
    seen: list[str] = []

    async def summary(request: web.Request) -> web.Response:
        seen.append(f"{request.match_info['name']}?window={request.query.get('window')}")
        if request.match_info["name"] != "homepage":
            return web.json_response({"error": "no such check"}, status=404)
        return web.json_response(SUMMARY)

    app = web.Application()
    app.router.add_get("/api/v1/checks/{name}/summary", summary)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}", seen
    finally:
        await runner.cleanup()


async def test_check_summary_reads_the_agent(fake_agent: tuple[str, list[str]]) -> None:
    url, seen = fake_agent
    out = await asyncio.to_thread(providers.check_summary, "homepage", "30s", url)
    assert out == SUMMARY
    assert seen == ["homepage?window=30s"]


async def test_check_summary_uses_env_agent_url(
    fake_agent: tuple[str, list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, _ = fake_agent
    monkeypatch.setenv("SEISMO_AGENT_URL", url)
    out = await asyncio.to_thread(providers.check_summary, "homepage", "10s")
    assert out["count"] == 29


async def test_check_ok_applies_thresholds(fake_agent: tuple[str, list[str]]) -> None:
    url, _ = fake_agent

    def ok(**kw: Any) -> bool:
        return providers.check_ok("homepage", "30s", agent_url=url, **kw)

    assert await asyncio.to_thread(ok, min_success_ratio=0.9) is True
    assert await asyncio.to_thread(ok, min_success_ratio=0.95) is False
    assert await asyncio.to_thread(ok, min_success_ratio=0.5, max_p95_ms=30) is False
    assert await asyncio.to_thread(ok, min_success_ratio=0.5, max_p95_ms=50) is True
    assert await asyncio.to_thread(ok, min_success_ratio=0.5, min_count=30) is False


async def test_check_summary_unknown_check_raises(fake_agent: tuple[str, list[str]]) -> None:
    url, _ = fake_agent
    with pytest.raises(Exception, match="404"):
        await asyncio.to_thread(providers.check_summary, "nope", "30s", url)


async def test_guardrail_on_an_agent_check_trips(fake_agent: tuple[str, list[str]]) -> None:
    url, _ = fake_agent
    g = Guardrail.model_validate(
        {"name": "home", "check": "homepage", "agent_url": url, "min_success_ratio": 0.95}
    )
    async with asyncio.timeout(10):
        trip = await watch([g], {})
    assert trip.guardrail == "home" and trip.observed == 0.9
    assert trip.stats.last_reason == "http_status"


async def test_http_provider_returns_structured_output(demo: DemoTarget) -> None:
    out = await asyncio.to_thread(
        providers.http,
        f"{demo.base_url}/",
        "5s",
        {"valid_status_codes": [200], "fail_if_body_not_matches_regexp": ["seismo demo"]},
    )
    assert out["success"] is True and out["reason"] == "success"
    assert out["status"] == 200
    assert {"connect", "processing"} <= set(out["phases"])
    assert providers.succeeded(out) is True
    bad = await asyncio.to_thread(providers.http, f"{demo.base_url}/status/503", 5)
    assert bad["success"] is False and bad["reason"] == "http_status" and bad["status"] == 503
    assert providers.succeeded(bad) is False
    assert await asyncio.to_thread(providers.http_ok, f"{demo.base_url}/healthz") is True


async def test_generic_probe_and_tcp(demo: DemoTarget) -> None:
    host_port = demo.base_url.removeprefix("http://")
    out = await asyncio.to_thread(
        providers.probe, f"{demo.base_url}/", {"prober": "http", "http": {"method": "GET"}}, 5
    )
    assert out["kind"] == "http" and out["success"] is True
    tcp = await asyncio.to_thread(providers.tcp, host_port, 5)
    assert tcp["kind"] == "tcp"
    # the tcp probe is written by another engineer: once it lands this must succeed
    if tcp["reason"] != "unsupported":
        assert tcp["success"] is True


def test_providers_surface_is_pinned() -> None:
    assert sorted(providers.__all__) == [
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


async def test_jsonpath_tolerances_match_provider_output(demo: DemoTarget) -> None:
    """chaostoolkit-lib's jsonpath extra is a dependency: tolerances can reach into the
    structured output (status, phases, reason) of seismo's providers."""
    from chaoslib.hypothesis import within_tolerance

    ok = await asyncio.to_thread(providers.http, f"{demo.base_url}/", 5)
    bad = await asyncio.to_thread(providers.http, f"{demo.base_url}/status/503", 5)

    def met(tolerance: dict[str, Any], value: dict[str, Any]) -> bool:
        return bool(within_tolerance(tolerance, value, configuration={}, secrets={}))

    status_200 = {"type": "jsonpath", "path": "$.status", "expect": 200}
    assert met(status_200, ok) is True
    assert met(status_200, bad) is False
    assert met({"type": "jsonpath", "path": "$.reason", "expect": "http_status"}, bad) is True
    assert met({"type": "jsonpath", "path": "$.phases.connect", "count": 1}, ok) is True
