"""The agent end to end: real loopback targets, real scrapes, reloads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.config import ConfigError
from agent.dnsserver import DNSServer, Record, Zone
from tests.agent.conftest import RunningAgent, Target, start_agent, until

TOKEN = "t0ken-for-tests-0123456789"


def write_config(path: Path, body: str) -> Path:
    path.write_text(body)
    return path


def base_config(http: Target, extra_checks: str = "", *, token: bool = True) -> str:
    api = f"api:\n  token: {TOKEN}\n" if token else ""
    return f"""
agent:
  region: eu-west
  zone: eu-west-1a
  node: node-1
  watch_config: false
{api}
modules:
  http_2xx:
    prober: http
    http:
      preferred_ip_protocol: ip4
      fail_if_body_not_matches_regexp: ["seismo demo"]
  tcp_connect:
    prober: tcp
    tcp: {{preferred_ip_protocol: ip4}}
checks:
  - name: home
    module: http_2xx
    target: {http.url}
    interval: 200ms
    labels: {{team: shop}}
  - name: port
    module: tcp_connect
    target: 127.0.0.1:{http.port}
    interval: 200ms
{extra_checks}
"""


def labels_of(check: str, module: str, target: str, **extra: str) -> frozenset[tuple[str, str]]:
    return frozenset(
        {
            "check": check,
            "module": module,
            "target": target,
            "region": "eu-west",
            "zone": "eu-west-1a",
            "node": "node-1",
            **extra,
        }.items()
    )


async def test_agent_probes_on_schedule_and_exports_blackbox_names(
    tmp_path: Path, http_target: Target
) -> None:
    cfg = write_config(tmp_path / "agent.yaml", base_config(http_target))
    async with start_agent(cfg, tmp_path / "data") as a:
        await until(lambda: a.ran("home", "port"))
        status, _ = await a.get("/readyz")
        assert status == 200
        samples = await a.samples()
    home = labels_of("home", "http_2xx", http_target.url, team="shop")
    port = labels_of("port", "tcp_connect", f"127.0.0.1:{http_target.port}")
    assert samples[("probe_success", home)] == 1
    assert samples[("probe_success", port)] == 1
    assert samples[("probe_http_status_code", home)] == 200
    assert samples[("probe_http_duration_seconds", home | {("phase", "connect")})] > 0
    runs = samples[
        ("seismo_check_runs_total", home | {("result", "success"), ("reason", "success")})
    ]
    assert runs >= 1
    assert samples[("seismo_check_duration_seconds_count", home)] >= runs
    assert samples[("seismo_config_last_reload_successful", frozenset())] == 1
    assert samples[("seismo_scheduler_checks", frozenset())] == 2
    assert ("seismo_scheduler_lateness_seconds_count", frozenset()) in samples
    # identity labels never include Prometheus' own
    assert not any(dict(labels).keys() & {"instance", "job"} for _, labels in samples)


async def test_checks_api_and_summary(tmp_path: Path, http_target: Target) -> None:
    cfg = write_config(tmp_path / "agent.yaml", base_config(http_target))
    async with start_agent(cfg, tmp_path / "data") as a:
        await until(lambda: a.ran("home", "port"))
        status, body = await a.get("/api/v1/checks")
        assert status == 200
        doc = json.loads(body)
        assert doc["identity"] == {"region": "eu-west", "zone": "eu-west-1a", "node": "node-1"}
        home = next(c for c in doc["checks"] if c["name"] == "home")
        assert home["last"]["success"] is True
        assert set(home["last"]["phases"]) >= {"resolve", "connect", "processing", "transfer"}
        assert home["labels"] == {"team": "shop"}
        status, body = await a.get("/api/v1/checks/home/summary?window=30s")
        assert status == 200
        summary = json.loads(body)
        assert summary["check"] == "home" and summary["count"] >= 1
        assert summary["success_ratio"] == 1.0
        assert summary["latency_seconds"]["p95"] > 0
        assert summary["last_reason"] == "success"
        assert (await a.get("/api/v1/checks/nope"))[0] == 404
        assert (await a.get("/api/v1/checks/home/summary?window=forever"))[0] == 400
        assert (await a.get("/api/v1/checks/home/summary?window=2h"))[0] == 400


async def test_a_hanging_target_is_bounded_and_stalls_nothing(
    tmp_path: Path, http_target: Target, hanging_target: Target
) -> None:
    extra = f"""  - name: hang
    module: http_2xx
    target: {hanging_target.url}
    interval: 300ms
    timeout: 200ms
"""
    cfg = write_config(tmp_path / "agent.yaml", base_config(http_target, extra))
    async with start_agent(cfg, tmp_path / "data") as a:
        hang = a.agent.scheduler.get("hang")
        home = a.agent.scheduler.get("home")
        assert hang is not None and home is not None
        await until(lambda: sum(hang.runs.values()) >= 2 and sum(home.runs.values()) >= 4)
        assert hang.last is not None and hang.last.reason.value == "timeout"
        assert "processing" in hang.last.detail
        assert home.runs.get(next(iter(home.runs))) and home.last is not None
        assert home.last.success


async def test_probe_endpoint_matches_blackbox_metric_set(
    tmp_path: Path, http_target: Target
) -> None:
    cfg = write_config(tmp_path / "agent.yaml", base_config(http_target))
    reference = json.loads(
        (Path(__file__).parent.parent / "fixtures" / "blackbox" / "http.json").read_text()
    )
    async with (
        start_agent(cfg, tmp_path / "data") as a,
        a.session.get(
            a.base + "/probe", params={"module": "http_2xx", "target": http_target.url}
        ) as r,
    ):
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = await r.text()
    from prometheus_client.parser import text_string_to_metric_families

    fams = {f.name: f for f in text_string_to_metric_families(text)}
    names = {s.name for f in fams.values() for s in f.samples}
    assert set(reference["http_2xx"]["success"]) <= names
    assert fams["probe_success"].samples[0].value == 1
    # no identity labels on /probe, exactly as blackbox_exporter
    for fam in fams.values():
        for s in fam.samples:
            assert not set(s.labels) & {"check", "module", "target", "region", "zone", "node"}


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("module=http_2xx", "Target parameter is missing"),
        ("module=nope&target=x", "Unknown module 'nope'"),
    ],
)
async def test_probe_endpoint_rejects_bad_queries(
    tmp_path: Path, http_target: Target, query: str, message: str
) -> None:
    cfg = write_config(tmp_path / "agent.yaml", base_config(http_target))
    async with start_agent(cfg, tmp_path / "data") as a:
        status, body = await a.get("/probe?" + query)
    assert status == 400
    assert message in body


async def test_probe_endpoint_bad_timeout_header_and_debug(
    tmp_path: Path, http_target: Target
) -> None:
    cfg = write_config(tmp_path / "agent.yaml", base_config(http_target))
    async with start_agent(cfg, tmp_path / "data") as a:
        status, body = await a.get(
            f"/probe?module=http_2xx&target={http_target.url}",
            headers={"X-Prometheus-Scrape-Timeout-Seconds": "soon"},
        )
        assert status == 400 and "timeout" in body
        status, body = await a.get(f"/probe?module=http_2xx&target={http_target.url}&debug=true")
    assert status == 200
    assert "Logs for the probe:" in body
    assert "Metrics that would have been returned:" in body
    assert "probe_success 1" in body
    assert "Module configuration:" in body and "prober: http" in body


async def test_reload_keeps_the_last_good_config(tmp_path: Path, http_target: Target) -> None:
    cfg = write_config(tmp_path / "agent.yaml", base_config(http_target))
    async with start_agent(cfg, tmp_path / "data") as a:
        await until(lambda: a.ran("home", "port"))
        cfg.write_text(base_config(http_target) + "  - name: broken\n    modul: x\n")
        status, body = await a.post("/-/reload", TOKEN)
        assert status == 400
        assert "unknown key 'modul'" in body and "agent.yaml:" in body
        samples = await a.samples()
        assert samples[("seismo_config_last_reload_successful", frozenset())] == 0
        assert samples[("seismo_config_reloads_total", frozenset({("result", "failure")}))] == 1
        assert {rt.spec.name for rt in a.agent.scheduler.checks()} == {"home", "port"}

        # a good config: 'port' goes away with its series, 'web2' comes
        new = (
            base_config(http_target).split("  - name: port")[0]
            + f"""  - name: web2
    module: http_2xx
    target: {http_target.url}status/200
    interval: 200ms
"""
        )
        cfg.write_text(new)
        status, _ = await a.post("/-/reload", TOKEN)
        assert status == 200
        await until(lambda: a.ran("web2"))
        samples = await a.samples()
    assert samples[("seismo_config_last_reload_successful", frozenset())] == 1
    assert not any(dict(labels).get("check") == "port" for _, labels in samples)
    assert any(dict(labels).get("check") == "web2" for _, labels in samples)


async def test_reload_needs_the_token(tmp_path: Path, http_target: Target) -> None:
    cfg = write_config(tmp_path / "agent.yaml", base_config(http_target))
    async with start_agent(cfg, tmp_path / "data") as a:
        assert (await a.post("/-/reload"))[0] == 401
        assert (await a.post("/-/reload", "wrong-token-wrong-token"))[0] == 401
    cfg.write_text(base_config(http_target, token=False))
    async with start_agent(cfg, tmp_path / "data") as a:
        status, body = await a.post("/-/reload", TOKEN)
    assert status == 403 and "disabled" in body


async def test_config_file_change_is_picked_up(tmp_path: Path, http_target: Target) -> None:
    text = base_config(http_target).replace(
        "watch_config: false", "watch_config: true\n  watch_interval: 100ms"
    )
    cfg = write_config(tmp_path / "agent.yaml", text)
    async with start_agent(cfg, tmp_path / "data") as a:
        await until(lambda: a.ran("home"))
        cfg.write_text(text.replace("name: port", "name: port-renamed"))
        await until(lambda: a.agent.scheduler.get("port-renamed") is not None)
        assert a.agent.scheduler.get("port") is None


async def test_bad_initial_config_raises(tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "agent.yaml", "modules:\n  web: {prober: nope}\n")
    with pytest.raises(ConfigError) as info:
        async with start_agent(cfg, tmp_path / "data"):
            pass
    assert info.value.errors[0].startswith(f"{cfg}:2: modules.web.prober:")


async def test_dns_check_against_a_real_dns_server(tmp_path: Path, http_target: Target) -> None:
    zone = Zone("shop.test.", (Record("www", "A", "127.0.0.9"),))
    async with DNSServer(zone) as server:
        port = await server.start()
        extra = f"""  - name: dns
    module: dns_www
    target: 127.0.0.1:{port}
    interval: 200ms
"""
        text = base_config(http_target, extra).replace(
            "checks:",
            """  dns_www:
    prober: dns
    dns:
      query_name: www.shop.test
      query_type: A
      validate_answer_rrs:
        fail_if_none_matches_regexp: ["127\\\\.0\\\\.0\\\\.9"]
checks:""",
        )
        cfg = write_config(tmp_path / "agent.yaml", text)
        async with start_agent(cfg, tmp_path / "data") as a:
            await until(lambda: a.ran("dns"))
            samples = await a.samples()
    dns = labels_of("dns", "dns_www", f"127.0.0.1:{port}")
    assert samples[("probe_success", dns)] == 1
    assert samples[("probe_dns_answer_rrs", dns)] == 1


RunningAgent = RunningAgent
