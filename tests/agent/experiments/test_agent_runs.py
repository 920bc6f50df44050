"""Experiments in the agent: the runs API, one run at a time, abort, schedules' concurrency
policies, agent guardrails on live checks, reconcile on start, metrics, and ``seismo submit``.

A real agent runs in-process on a loopback port 0; each run is a real chaostoolkit-lib
runner process against the recording demo target. Waits are bounded and wait on requests
arriving at the target or on the service's state, never on elapsed time.
"""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.experiments.events import EventLog
from agent.experiments.service import ActiveRun
from agent.experiments.settings import ScheduleSettings
from agent.experiments.store import JournalStore
from tests.agent.conftest import RunningAgent, start_agent, until
from tests.agent.experiments.support import (
    CALL_TIMEOUT,
    REPO,
    DemoTarget,
    base_experiment,
    degrade_action,
    hang_action,
    seismo_env,
    seismo_ext,
    start_seismo,
)

TOKEN = "runs-api-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def config_text(demo: DemoTarget, exp_dir: Path, *, token: bool = True, extra: str = "") -> str:
    api = f"api:\n  token: {TOKEN}\n" if token else ""
    return f"""
agent: {{node: node-1, watch_config: false}}
{api}
modules:
  demo_http:
    prober: http
    http: {{preferred_ip_protocol: ip4, fail_if_body_not_matches_regexp: ["seismo demo"]}}
checks:
  - name: demo-http
    module: demo_http
    target: {demo.base_url}/
    interval: 200ms
experiments:
  dir: {exp_dir}
  rollback_grace: 30s
{extra}
"""


@pytest.fixture
def exp_dir(tmp_path: Path, demo: DemoTarget) -> Path:
    d = tmp_path / "experiments"
    d.mkdir()
    quick = base_experiment(demo.base_url, [])
    quick["title"] = "quick"
    (d / "quick.yaml").write_text(yaml.safe_dump(quick, sort_keys=False))
    hang = base_experiment(demo.base_url, [degrade_action(), hang_action()])
    (d / "hang.yaml").write_text(yaml.safe_dump(hang, sort_keys=False))
    return d


@pytest.fixture
async def agent(tmp_path: Path, demo: DemoTarget, exp_dir: Path) -> AsyncIterator[RunningAgent]:
    cfg = tmp_path / "agent.yaml"
    cfg.write_text(config_text(demo, exp_dir))
    async with start_agent(cfg, tmp_path / "data") as a:
        yield a


async def post(
    a: RunningAgent, path: str, body: Any = None, *, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, Any]]:
    data = body if isinstance(body, str | bytes) or body is None else json.dumps(body)
    async with a.session.post(
        a.base + path, data=data, headers=AUTH if headers is None else headers
    ) as resp:
        text = await resp.text()
        try:
            return resp.status, json.loads(text)
        except json.JSONDecodeError:
            return resp.status, {"text": text}


async def get_json(a: RunningAgent, path: str) -> tuple[int, dict[str, Any]]:
    async with a.session.get(a.base + path) as resp:
        return resp.status, json.loads(await resp.text())


async def finished(a: RunningAgent, active: ActiveRun) -> dict[str, Any]:
    async with asyncio.timeout(CALL_TIMEOUT):
        await active.done.wait()
    status, doc = await get_json(a, f"/api/v1/runs/{active.run_id}")
    assert status == 200
    assert doc["live"] is None
    return doc


def active_run(a: RunningAgent) -> ActiveRun:
    active = a.agent.experiments.active
    assert active is not None
    return active


# --- auth and bad requests -------------------------------------------------------------


async def test_mutating_calls_need_the_token(
    tmp_path: Path, demo: DemoTarget, exp_dir: Path
) -> None:
    cfg = tmp_path / "agent.yaml"
    cfg.write_text(config_text(demo, exp_dir))
    async with start_agent(cfg, tmp_path / "data") as a:
        for headers in ({}, {"Authorization": "Bearer wrong-token-0123456789"}):
            status, _ = await post(a, "/api/v1/runs", {"name": "quick"}, headers=headers)
            assert status == 401
            status, _ = await post(
                a, "/api/v1/runs/20240101T000000000000Z-0000abcd/abort", headers=headers
            )
            assert status == 401
        assert not (tmp_path / "data" / "runs").exists() or not list(
            (tmp_path / "data" / "runs").iterdir()
        )
    cfg.write_text(config_text(demo, exp_dir, token=False))
    async with start_agent(cfg, tmp_path / "data2") as a:
        status, doc = await post(a, "/api/v1/runs", {"name": "quick"})
        assert status == 403
        assert "no api.token" in doc["text"]


async def test_bad_requests_get_400_or_404_with_problems(agent: RunningAgent) -> None:
    a = agent
    status, doc = await post(a, "/api/v1/runs", "title: [unclosed\n")
    assert status == 400
    assert doc["problems"][0]["rule"] == "syntax"

    bad = {
        "title": "t",
        "description": "d",
        "method": [
            {
                "type": "action",
                "name": "shell",
                "provider": {"type": "python", "module": "os", "func": "system"},
            }
        ],
    }
    status, doc = await post(a, "/api/v1/runs", bad)
    assert status == 400
    assert doc["error"] == "invalid experiment"
    assert [p["rule"] for p in doc["problems"]] == ["provider-allowlist"]
    assert "'os' is not allowed" in doc["problems"][0]["message"]

    status, doc = await post(a, "/api/v1/runs", {"name": "../etc/passwd"})
    assert status == 400
    assert doc["problems"][0]["rule"] == "experiment-name"
    status, doc = await post(a, "/api/v1/runs", {"name": "nope"})
    assert status == 400
    assert "no experiment named 'nope'" in doc["problems"][0]["message"]
    status, _ = await post(a, "/api/v1/runs", "")
    assert status == 400
    status, _ = await post(a, "/api/v1/runs", b"\xff\xfe")
    assert status == 400

    for path in ("/api/v1/runs/not-a-run", "/api/v1/runs/..%2F..%2Fetc"):
        status, _ = await get_json(a, path)
        assert status in (400, 404)
    status, _ = await get_json(a, "/api/v1/runs/not-a-run")
    assert status == 400
    unknown = "20240101T000000000000Z-0000abcd"
    assert (await get_json(a, f"/api/v1/runs/{unknown}"))[0] == 404
    assert (await get_json(a, f"/api/v1/runs/{unknown}/events"))[0] == 404
    assert (await post(a, f"/api/v1/runs/{unknown}/abort"))[0] == 404
    assert (await post(a, "/api/v1/runs/bad-id/abort"))[0] == 400
    assert (await get_json(a, "/api/v1/runs?limit=x"))[0] == 400
    assert a.agent.experiments.active is None


# --- a run through the API -------------------------------------------------------------


async def test_one_run_at_a_time_live_state_abort_and_metrics(
    agent: RunningAgent, demo: DemoTarget
) -> None:
    a = agent
    experiment = yaml.safe_dump(base_experiment(demo.base_url, [degrade_action(), hang_action()]))
    (s1, d1), (s2, d2) = await asyncio.gather(
        post(a, "/api/v1/runs", experiment), post(a, "/api/v1/runs", experiment)
    )
    assert sorted([s1, s2]) == [202, 409]
    accepted, refused = (d1, d2) if s1 == 202 else (d2, d1)
    run_id = accepted["run_id"]
    assert refused["active_run_id"] == run_id
    assert accepted["links"]["self"] == f"/api/v1/runs/{run_id}"

    active = active_run(a)
    await demo.wait_for("GET", "/hang")
    await until(lambda: (active.activity or {}).get("name") == "hang")
    status, doc = await get_json(a, f"/api/v1/runs/{run_id}")
    assert status == 200
    assert doc["status"] == "running"
    assert doc["exit_code"] is None
    assert doc["live"]["phase"] == "method"
    assert doc["live"]["activity"]["name"] == "hang"
    assert doc["live"]["source"] == "api"
    assert doc["live"]["elapsed_seconds"] >= 0
    assert [r["activity"]["name"] for r in doc["journal"]["run"]] == ["degrade"]

    status, listing = await get_json(a, "/api/v1/runs")
    assert listing["runs"][0]["run_id"] == run_id
    assert listing["runs"][0]["status"] == "running"

    # a schedule with concurrency_policy forbid is skipped while the run is active
    a.agent.experiments.fire_schedule(
        ScheduleSettings(name="nightly", experiment="quick", cron="@daily")
    )
    await until(lambda: a.agent.experiments.stats().schedule_skipped.get("nightly") == 1)

    status, doc = await post(a, f"/api/v1/runs/{run_id}/abort")
    assert (status, doc["status"]) == (202, "aborting")
    doc = await finished(a, active)
    assert demo.count("POST", "/admin/restore") == 1
    assert doc["status"] == "interrupted"
    assert doc["exit_code"] == 3
    ext = seismo_ext(doc["journal"])
    assert ext["interruption"]["kind"] == "abort"
    assert ext["interruption"]["source"] == "api"
    assert ext["interruption"]["message"] == "aborted via the API"
    assert ext["rollbacks"]["played"] is True
    assert (await post(a, f"/api/v1/runs/{run_id}/abort"))[0] == 409

    status, listing = await get_json(a, "/api/v1/runs")
    (row,) = listing["runs"]
    assert (row["status"], row["exit_code"], row["partial"]) == ("interrupted", 3, False)

    samples = await a.samples()
    exp = {"experiment": "kill matrix"}
    assert samples[("seismo_experiment_running", frozenset())] == 0
    key = frozenset({**exp, "status": "interrupted", "deviated": "false"}.items())
    assert samples[("seismo_experiment_runs_total", key)] == 1
    assert samples[("seismo_experiment_duration_seconds_count", frozenset(exp.items()))] == 1
    assert ("seismo_experiment_last_run_timestamp_seconds", frozenset(exp.items())) in samples
    skipped = frozenset({"schedule": "nightly"}.items())
    assert samples[("seismo_experiment_schedule_skipped_total", skipped)] == 1

    # the events feed, as `seismo submit` reads it
    status, events = await get_json(a, f"/api/v1/runs/{run_id}/events?after=2")
    assert status == 200
    assert events["events"][0]["seq"] == 3
    assert events["events"][-1]["event"] == "run_finished"


async def test_schedule_replace_aborts_the_active_run_then_runs(
    agent: RunningAgent, demo: DemoTarget
) -> None:
    a = agent
    status, _doc = await post(a, "/api/v1/runs", {"name": "hang"})
    assert status == 202
    first = active_run(a)
    await demo.wait_for("GET", "/hang")
    a.agent.experiments.fire_schedule(
        ScheduleSettings(
            name="replacer",
            experiment="quick",
            cron="* * * * *",
            concurrency_policy="replace",
        )
    )
    await finished(a, first)
    await until(
        lambda: (
            a.agent.experiments.active is not None
            and a.agent.experiments.active.run_id != first.run_id
        )
    )
    second = active_run(a)
    assert second.source == "schedule:replacer"
    doc2 = await finished(a, second)
    assert doc2["exit_code"] == 0, doc2
    assert doc2["journal"]["experiment"]["title"] == "quick"

    _, doc1 = await get_json(a, f"/api/v1/runs/{first.run_id}")
    interruption = seismo_ext(doc1["journal"])["interruption"]
    assert (interruption["kind"], interruption["schedule"]) == ("replaced", "replacer")
    assert demo.count("POST", "/admin/restore") == 2  # both runs rolled back


async def test_agent_guardrail_on_a_live_check_trips(
    tmp_path: Path, demo: DemoTarget, exp_dir: Path
) -> None:
    guardrails = """  guardrails:
    - name: demo-availability
      check: demo-http
      window: 5s
      interval: 100ms
      min_success_ratio: 0.99
"""
    cfg = tmp_path / "agent.yaml"
    cfg.write_text(config_text(demo, exp_dir, extra=guardrails))
    async with start_agent(cfg, tmp_path / "data") as a:
        await until(lambda: a.ran("demo-http"))
        status, _ = await post(a, "/api/v1/runs", {"name": "hang"})
        assert status == 202
        doc = await finished(a, active_run(a))
        samples = await a.samples()
    assert doc["exit_code"] == 3
    trip = seismo_ext(doc["journal"])["interruption"]
    assert trip["kind"] == "guardrail"
    assert trip["guardrail"] == "agent:demo-availability"
    assert trip["source"] == "check 'demo-http'"
    assert trip["observed"] < 0.99
    assert demo.count("POST", "/admin/restore") == 1
    labels = frozenset(
        {"experiment": "kill matrix", "guardrail": "agent:demo-availability"}.items()
    )
    assert samples[("seismo_experiment_guardrail_trips_total", labels)] == 1


async def test_live_check_hypothesis_from_the_catalog_runs_end_to_end(
    tmp_path: Path, demo: DemoTarget
) -> None:
    """experiments/live-check-hypothesis.yaml by name: its hypothesis reads the agent's own
    continuous check through the summary endpoint (SEISMO_AGENT_URL, set by the agent)."""
    cfg = tmp_path / "agent.yaml"
    cfg.write_text(config_text(demo, REPO / "experiments"))
    async with start_agent(cfg, tmp_path / "data") as a:
        await until(lambda: a.ran("demo-http"))
        status, doc = await post(
            a,
            "/api/v1/runs",
            {"name": "live-check-hypothesis", "vars": {"demo_http_url": demo.base_url}},
        )
        assert status == 202, doc
        doc = await finished(a, active_run(a))
    journal = doc["journal"]
    assert doc["exit_code"] == 0, json.dumps(journal, indent=1)[:4000]
    before = journal["steady_states"]["before"]
    assert before["steady_state_met"] is True
    (probe,) = before["probes"]
    assert probe["activity"]["provider"]["func"] == "check_ok"
    assert probe["output"] is True
    assert demo.count("POST", "/admin/degrade") == 1
    assert demo.count("POST", "/admin/restore") == 1


# --- agent start -----------------------------------------------------------------------


async def test_agent_start_reconciles_a_partial_journal(
    tmp_path: Path, demo: DemoTarget, exp_dir: Path
) -> None:
    data = tmp_path / "data"
    run_id, run_dir = JournalStore(data).create_run()
    with EventLog.open(run_dir / "events.jsonl") as log:  # a runner that died mid-method
        log.emit(
            "run_started",
            journal={"experiment": {"title": "died"}, "start": "2024-05-17T10:00:00+00:00"},
            extension={"name": "seismo", "run_id": run_id, "interruption": None},
        )
        log.emit("phase", phase="method", state="started")
    cfg = tmp_path / "agent.yaml"
    cfg.write_text(config_text(demo, exp_dir))
    async with start_agent(cfg, data) as a:
        _status, listing = await get_json(a, "/api/v1/runs")
        _, doc = await get_json(a, f"/api/v1/runs/{run_id}")
        samples = await a.samples()
    (row,) = listing["runs"]
    assert (row["run_id"], row["partial"], row["status"]) == (run_id, True, "interrupted")
    assert row["exit_code"] == 3
    ext = seismo_ext(doc["journal"])
    assert ext["partial"] is True
    assert ext["interruption"]["kind"] == "runner_lost"
    assert (run_dir / "journal.json").is_file()
    assert samples[("seismo_experiment_runs_reconciled_total", frozenset())] == 1


# --- seismo submit ---------------------------------------------------------------------


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "token"
    path.write_text(TOKEN + "\n")
    return path


async def test_submit_follows_the_run_and_exits_with_its_code(
    agent: RunningAgent, demo: DemoTarget, tmp_path: Path, token_file: Path
) -> None:
    exp = tmp_path / "exp.yaml"
    experiment = base_experiment("${base_url}", [degrade_action()])
    experiment["configuration"] = {"base_url": "http://127.0.0.1:1"}  # --var sets the real one
    exp.write_text(yaml.safe_dump(experiment, sort_keys=False))
    proc = await start_seismo(
        [
            "submit",
            str(exp),
            "--agent",
            agent.base,
            "--token-file",
            str(token_file),
            "--var",
            f"base_url={demo.base_url}",
        ],
        tmp_path / "unused",
        seismo_env(),
    )
    code, out, err = await proc.finish()
    assert code == 1, out + err  # degraded after the method: deviated
    assert "seismo: run " in out
    assert "[ok  ] action 'degrade' succeeded" in out
    assert "steady state (after): NOT met" in out
    assert "[ok  ] action 'restore' succeeded" in out
    assert "(exit 1)" in out
    assert demo.count("POST", "/admin/restore") == 1


async def test_submit_refusals_exit_2(
    agent: RunningAgent, tmp_path: Path, token_file: Path
) -> None:
    wrong = tmp_path / "wrong"
    wrong.write_text("not-the-token-0123456789")
    proc = await start_seismo(
        ["submit", "quick", "--agent", agent.base, "--token-file", str(wrong)],
        tmp_path / "unused",
        seismo_env(),
    )
    code, _, err = await proc.finish()
    assert code == 2
    assert "401" in err
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "title: t\ndescription: d\nmethod: [{type: action, name: x, provider: "
        "{type: python, module: os, func: system}}]\n"
    )
    proc = await start_seismo(
        ["submit", str(bad), "--agent", agent.base, "--token-file", str(token_file)],
        tmp_path / "unused",
        seismo_env(),
    )
    code, _out, err = await proc.finish()
    assert code == 2
    assert "'os' is not allowed" in err
    assert "[provider-allowlist]" in err
    assert "HTTP Request" not in err  # no client chatter
    assert agent.agent.experiments.active is None


async def test_submit_ctrl_c_aborts_the_run_after_rollbacks(
    agent: RunningAgent, demo: DemoTarget, tmp_path: Path, token_file: Path
) -> None:
    proc = await start_seismo(
        ["submit", "hang", "--agent", agent.base, "--token-file", str(token_file)],
        tmp_path / "unused",
        seismo_env(),
    )
    await demo.wait_for("GET", "/hang")
    proc.process.send_signal(signal.SIGINT)
    code, out, err = await proc.finish()
    assert code == 3, out + err
    assert "abort requested" in out
    assert "aborted via the API (rollbacks were played)" in out
    assert demo.count("POST", "/admin/restore") == 1
    assert agent.agent.experiments.active is None


async def test_shutdown_aborts_the_active_run_and_rolls_back(
    tmp_path: Path, demo: DemoTarget, exp_dir: Path
) -> None:
    cfg = tmp_path / "agent.yaml"
    cfg.write_text(config_text(demo, exp_dir))
    async with start_agent(cfg, tmp_path / "data") as a:
        status, doc = await post(a, "/api/v1/runs", {"name": "hang"})
        assert status == 202
        await demo.wait_for("GET", "/hang")
        run_id = doc["run_id"]
    journal = JournalStore(tmp_path / "data").load(run_id)
    assert seismo_ext(journal)["interruption"]["kind"] == "agent_shutdown"
    assert demo.count("POST", "/admin/restore") == 1


async def test_index_lists_runs(agent: RunningAgent) -> None:
    status, text = await agent.get("/")
    assert status == 200
    assert "/api/v1/runs" in text


async def test_reload_updates_schedules_and_limits(
    tmp_path: Path, demo: DemoTarget, exp_dir: Path
) -> None:
    cfg = tmp_path / "agent.yaml"
    cfg.write_text(config_text(demo, exp_dir))
    async with start_agent(cfg, tmp_path / "data") as a:
        assert a.agent.experiments.schedules.table.next_fires() == {}
        schedules = """  max_runs: 7
  schedules:
    - {name: nightly, experiment: quick, cron: "@daily"}
    - {name: paused, experiment: quick, cron: "@daily", enabled: false}
"""
        cfg.write_text(config_text(demo, exp_dir, extra=schedules))
        status, _ = await a.post("/-/reload", TOKEN)
        assert status == 200
        assert set(a.agent.experiments.schedules.table.next_fires()) == {"nightly"}
        assert a.agent.experiments.store.max_runs == 7
        samples = await a.samples()
    nightly = frozenset({"schedule": "nightly"}.items())
    assert samples[("seismo_experiment_schedule_skipped_total", nightly)] == 0


def test_public_surfaces_are_pinned() -> None:
    from agent.experiments import api, cron, schedule, service, settings, stats

    assert sorted(api.__all__) == ["SERVICE", "TOKEN", "add_routes"]
    assert sorted(cron.__all__) == ["CronExpression"]
    assert sorted(schedule.__all__) == ["CronTable", "ScheduleLoop", "utc_now"]
    assert sorted(service.__all__) == [
        "ActiveRun",
        "ExperimentService",
        "RunActive",
        "RunNotActive",
    ]
    assert sorted(settings.__all__) == ["ExperimentSettings", "ScheduleSettings"]
    assert sorted(stats.__all__) == [
        "DURATION_BUCKETS",
        "ExperimentStats",
        "ExperimentTally",
        "MAX_EXPERIMENTS",
    ]
