"""Rendering: valid exposition text that Prometheus' parser reads back exactly."""

from __future__ import annotations

import asyncio
import time

from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

import agent.metrics
from agent.config import Identity
from agent.metrics import CHECKS_PER_SLICE, AgentMetrics
from agent.scheduler import CheckSpec, Scheduler
from probes.modules import Module
from probes.result import ProbeResult, Reason, Recorder

HTTP = Module.model_validate({"prober": "http"})


def result(reason: Reason = Reason.SUCCESS) -> ProbeResult:
    rec = Recorder("http")
    rec.gauge("probe_http_status_code", 200, help="Response HTTP status code")
    rec.gauge(
        "probe_http_duration_seconds",
        0.0125,
        help="Duration of http request by phase",
        phase="connect",
    )
    rec.gauge(
        "probe_ssl_last_chain_info",
        1,
        help="Contains SSL leaf certificate information",
        subject='CN=a "quoted" \\ name\nwith newline',
    )
    return rec.finish("http://t/", reason, "", 0.5, time.time())


def parse(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }


def test_probe_page_round_trips_including_awkward_label_values() -> None:
    metrics = AgentMetrics(CollectorRegistry(), Identity())
    text = metrics.render_probe(result())
    samples = parse(text)
    assert samples[("probe_success", frozenset())] == 1
    assert samples[("probe_http_duration_seconds", frozenset({("phase", "connect")}))] == 0.0125
    weird = frozenset({("subject", 'CN=a "quoted" \\ name\nwith newline')})
    assert samples[("probe_ssl_last_chain_info", weird)] == 1
    # one HELP and TYPE per family, names sorted as blackbox does
    names = [line.split()[2] for line in text.splitlines() if line.startswith("# TYPE")]
    assert names == sorted(names) and len(names) == len(set(names))
    assert metrics.render_probe(result()) == text  # again, from the formats it kept


def test_probe_page_names_a_gauge_without_help_in_its_help_line() -> None:
    rec = Recorder("tcp")
    rec.gauge("probe_custom", 2)
    rec.gauge("probe_custom_labelled", 1, kind="a\\b")
    text = AgentMetrics(CollectorRegistry(), Identity()).render_probe(
        rec.finish("t:1", Reason.SUCCESS, "", 0.1, time.time())
    )
    assert "# HELP probe_custom probe_custom\n# TYPE probe_custom gauge\nprobe_custom 2\n" in text
    assert 'probe_custom_labelled{kind="a\\\\b"} 1\n' in text


def test_public_surface() -> None:
    assert sorted(agent.metrics.__all__) == ["AgentMetrics", "CONTENT_TYPE"]


def test_agent_page_has_identity_histograms_and_drops_removed_checks() -> None:
    async def runner(spec: CheckSpec) -> ProbeResult:
        raise AssertionError("not run")

    sched = Scheduler(runner, node="n1")
    specs = [
        CheckSpec(
            name=n,
            module_name="web",
            module=HTTP,
            target=f"http://{n}/",
            interval=1,
            timeout=1,
            labels=(("team", "a"),),
        )
        for n in ("a", "b")
    ]
    sched.update(specs)
    for rt in sched.checks():
        rt.record(result(), 0.001, 1.0)
        rt.record(result(Reason.CONNECT_REFUSED), 0.002, 2.0)
    metrics = AgentMetrics(CollectorRegistry(), Identity(region="r", zone="z", node="n1"))
    samples = parse(metrics.render(sched).decode())
    base = {
        "check": "a",
        "module": "web",
        "target": "http://a/",
        "region": "r",
        "zone": "z",
        "node": "n1",
        "team": "a",
    }
    failed = frozenset({**base, "result": "failure", "reason": "connect_refused"}.items())
    assert samples[("seismo_check_runs_total", failed)] == 1
    assert samples[("seismo_check_duration_seconds_count", frozenset(base.items()))] == 2
    inf = frozenset({**base, "le": "+Inf"}.items())
    assert samples[("seismo_check_duration_seconds_bucket", inf)] == 2
    assert samples[("probe_http_status_code", frozenset(base.items()))] == 200

    sched.update(specs[1:])  # check "a" removed
    samples = parse(metrics.render(sched).decode())
    assert not [k for k in samples if dict(k[1]).get("check") == "a"]
    assert [k for k in samples if dict(k[1]).get("check") == "b"]


def scheduler_with(*specs: CheckSpec) -> Scheduler:
    async def runner(spec: CheckSpec) -> ProbeResult:
        raise AssertionError("not run")

    sched = Scheduler(runner, node="n1")
    sched.update(list(specs))
    return sched


def check(name: str, target: str = "", module: str = "web") -> CheckSpec:
    return CheckSpec(
        name=name,
        module_name=module,
        module=HTTP,
        target=target or f"http://{name}/",
        interval=1,
        timeout=1,
    )


def dns_result() -> ProbeResult:
    rec = Recorder("dns")
    rec.gauge("probe_dns_answer_rrs", 1, help="Returns number of entries in the answer RRset")
    rec.gauge("probe_ip_protocol", 4, help="Specifies whether probe ip protocol is IP4 or IP6")
    return rec.finish("10.0.0.53", Reason.SUCCESS, "", 0.002, time.time())


def ident(name: str) -> frozenset[tuple[str, str]]:
    """The identity labels of check ``name`` (an http check of module "web", node n1)."""
    labels = {"check": name, "module": "web", "target": f"http://{name}/"}
    return frozenset({**labels, "region": "r", "zone": "z", "node": "n1"}.items())


def test_page_groups_each_family_once_across_checks_of_different_kinds() -> None:
    sched = scheduler_with(check("a"), check("d", "10.0.0.53", "dns"), check("b"))
    for rt in sched.checks():
        rt.record(dns_result() if rt.spec.module_name == "dns" else result(), 0.0, 1.0)
    metrics = AgentMetrics(CollectorRegistry(), Identity(region="r", zone="z", node="n1"))
    text = metrics.render(sched).decode()
    families: list[str] = []
    for line in text.splitlines():
        name = line.split()[2] if line.startswith("# TYPE") else ""
        if name:
            assert name not in families, f"{name} has two blocks"
            families.append(name)
        elif not line.startswith("#"):
            assert line.startswith(families[-1]), f"{line!r} is outside its family's block"
    labels = 'check="a",module="web",target="http://a/",region="r",zone="z",node="n1"'
    assert f"probe_http_status_code{{{labels}}} 200\n" in text  # integral: no ".0"
    assert f'seismo_check_duration_seconds_bucket{{{labels},le="0.001"}} 0\n' in text
    assert f'seismo_check_duration_seconds_bucket{{{labels},le="+Inf"}} 1\n' in text
    assert f'seismo_check_runs_total{{{labels},result="success",reason="success"}} 1\n' in text
    assert 'probe_dns_answer_rrs{check="d",module="dns",target="10.0.0.53",' in text


def test_page_follows_new_results_replaced_checks_and_identity() -> None:
    sched = scheduler_with(check("a"))
    rt = sched.get("a")
    assert rt is not None
    rt.record(result(), 0.0, 1.0)
    metrics = AgentMetrics(CollectorRegistry(), Identity(region="r", zone="z", node="n1"))
    assert parse(metrics.render(sched).decode())[("probe_success", ident("a"))] == 1

    rt.record(result(Reason.HTTP_STATUS), 0.0, 2.0)  # a new result: the next scrape shows it
    assert parse(metrics.render(sched).decode())[("probe_success", ident("a"))] == 0

    sched.update([check("a", "http://moved/")])  # same name, new target: a new check
    moved = sched.get("a")
    assert moved is not None and moved is not rt
    moved.record(result(), 0.0, 3.0)
    samples = parse(metrics.render(sched).decode())
    targets = {dict(labels).get("target") for _, labels in samples if dict(labels).get("check")}
    assert targets == {"http://moved/"}

    metrics.set_identity(Identity(region="r", zone="z", node="n2"))
    samples = parse(metrics.render(sched).decode())
    nodes = {dict(labels).get("node") for _, labels in samples if dict(labels).get("check")}
    assert nodes == {"n2"}


async def test_agent_page_in_slices_is_the_same_page_and_lets_the_loop_run() -> None:
    sched = scheduler_with(*(check(f"c{i}") for i in range(2 * CHECKS_PER_SLICE + 7)))
    for rt in sched.checks():
        rt.record(result(), 0.001, 1.0)
    metrics = AgentMetrics(CollectorRegistry(), Identity(region="r", zone="z", node="n1"))
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0)
    before = ticks
    sliced = await metrics.render_async(sched)
    during = ticks - before
    task.cancel()
    assert sliced == metrics.render(sched)
    assert parse(sliced.decode())[("probe_success", ident("c0"))] == 1
    assert during >= 3  # the loop ran between the three slices
