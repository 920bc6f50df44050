"""Unit tests: guardrail maths, policy, redaction, the store, runtime resolution, journals."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from agent.experiments import journal as journal_mod
from agent.experiments.events import EventLog, is_locked, read_events
from agent.experiments.extension import Guardrail, parse_extension
from agent.experiments.guardrails import ProbeWindow, Sample, WindowStats, evaluate, quantile
from agent.experiments.policy import Policy, check_policy
from agent.experiments.redaction import MASK, Redactor, mask_secret_definitions
from agent.experiments.spec import effective_rollback_strategy, resolve_runtime
from agent.experiments.store import JournalStore, atomic_write_json


def _g(**kw: object) -> Guardrail:
    return Guardrail.model_validate({"name": "g", "check": "home", **kw})


def test_quantile_nearest_rank() -> None:
    assert quantile([], 0.95) is None
    assert quantile([3.0, 1.0, 2.0], 0.5) == 2.0
    assert quantile([float(i) for i in range(1, 101)], 0.95) == 95.0


def test_window_drops_old_samples() -> None:
    w = ProbeWindow(10.0)
    w.add(Sample(0.0, False, 1.0, "timeout"))
    w.add(Sample(5.0, True, 0.1, "success"))
    assert w.stats(9.0).count == 2
    stats = w.stats(12.0)
    assert (stats.count, stats.success_ratio, stats.last_reason) == (1, 1.0, "success")


def test_success_ratio_trips_below_threshold() -> None:
    g = _g(min_success_ratio=0.95, min_samples=2)
    assert evaluate(g, WindowStats(1, 0.0, 0.1, "x")) is None  # too few samples
    assert evaluate(g, WindowStats(10, 0.95, 0.1, None)) is None
    trip = evaluate(g, WindowStats(10, 0.9, 0.1, "http_status"))
    assert trip is not None
    assert (trip.condition, trip.threshold, trip.observed) == ("min_success_ratio", 0.95, 0.9)
    assert trip.to_json()["stats"]["last_reason"] == "http_status"


def test_p95_and_baseline_ratio() -> None:
    g = _g(max_p95_ms=200)
    assert evaluate(g, WindowStats(5, 1.0, 0.15, None)) is None
    trip = evaluate(g, WindowStats(5, 1.0, 0.25, None))
    assert trip is not None and trip.condition == "max_p95_ms" and trip.observed == 250.0
    rel = _g(max_p95_ratio_to_baseline=3)
    assert evaluate(rel, WindowStats(5, 1.0, 0.25, None), baseline_p95=0.1) is None
    trip = evaluate(rel, WindowStats(5, 1.0, 0.35, None), baseline_p95=0.1)
    assert trip is not None and trip.condition == "max_p95_ratio_to_baseline"
    assert trip.observed == pytest.approx(3.5)
    assert evaluate(rel, WindowStats(5, 1.0, 0.35, None), baseline_p95=None) is None


@pytest.mark.parametrize(
    ("guardrail", "message"),
    [
        ({"name": "g", "min_success_ratio": 0.9}, "exactly one of 'check' or 'probe'"),
        ({"name": "g", "check": "c"}, "needs a condition"),
        ({"name": "g", "check": "c", "min_success_ratio": 2}, "less than or equal to 1"),
        ({"name": "g", "check": "c", "max_p95_ms": 5, "colour": "red"}, "Extra inputs"),
        (
            {"name": "g", "probe": {"target": "x", "module": {"prober": "nope"}}, "max_p95_ms": 1},
            "probe.module.prober",
        ),
    ],
)
def test_extension_schema_errors(guardrail: dict[str, object], message: str) -> None:
    _, problems = parse_extension({"extensions": [{"name": "seismo", "guardrails": [guardrail]}]})
    assert problems
    assert any(message in f"{p.where} {p.message}" for p in problems), problems


def test_extension_defaults_and_durations() -> None:
    ext, problems = parse_extension(
        {
            "extensions": [
                {"name": "other"},
                {
                    "name": "seismo",
                    "max_duration": "2m",
                    "guardrails": [
                        {"name": "g", "check": "c", "window": "1m", "min_success_ratio": 0.9}
                    ],
                },
            ]
        }
    )
    assert problems == []
    assert ext.max_duration == 120.0
    assert ext.guardrails[0].window == 60.0 and ext.guardrails[0].interval == 1.0


def test_policy_checks_tolerances_and_controls() -> None:
    exp = {
        "steady-state-hypothesis": {
            "probes": [
                {
                    "type": "probe",
                    "name": "p",
                    "tolerance": {
                        "type": "probe",
                        "name": "t",
                        "provider": {"type": "python", "module": "subprocess", "func": "run"},
                    },
                }
            ]
        },
        "controls": [{"name": "c", "provider": {"type": "python", "module": "evil.control"}}],
    }
    problems = check_policy(exp, Policy())
    assert [p.rule for p in problems] == ["provider-allowlist", "provider-allowlist"]
    assert "tolerance" in problems[0].where and "controls[0]" in problems[1].where


def test_policy_module_prefix_is_a_package_boundary() -> None:
    policy = Policy(allowed_modules=("chaosk8s",))
    assert policy.module_allowed("chaosk8s.pod.actions")
    assert not policy.module_allowed("chaosk8s_evil")


def test_redactor_masks_substrings_and_short_exact_values() -> None:
    r = Redactor.from_secrets({"a": {"token": "s3cr3t-token", "pin": "12"}})
    out = r.redact({"h": "Bearer s3cr3t-token", "n": ["12", "a 12 b"], "b": b"s3cr3t-token"})
    assert out == {"h": f"Bearer {MASK}", "n": [MASK, "a 12 b"], "b": MASK}


def test_mask_secret_definitions_keeps_env_references() -> None:
    masked = mask_secret_definitions(
        {"api": {"token": "x", "env": {"type": "env", "key": "TOKEN"}}}
    )
    assert masked == {"api": {"token": MASK, "env": {"type": "env", "key": "TOKEN"}}}


def test_runtime_block_and_cli_precedence() -> None:
    exp = {
        "runtime": {
            "hypothesis": {"strategy": "continuously", "frequency": 2},
            "rollbacks": {"strategy": "deviated"},
        }
    }
    assert resolve_runtime(
        exp,
        hypothesis_strategy=None,
        hypothesis_frequency=None,
        fail_fast=None,
        rollback_strategy=None,
    ) == ("continuously", 2.0, False, "deviated")
    assert resolve_runtime(
        exp,
        hypothesis_strategy="default",
        hypothesis_frequency=0.5,
        fail_fast=True,
        rollback_strategy="never",
    ) == ("default", 0.5, True, "never")
    with pytest.raises(ValueError, match=r"runtime\.rollbacks\.strategy 'sometimes'"):
        resolve_runtime(
            {"runtime": {"rollbacks": {"strategy": "sometimes"}}},
            hypothesis_strategy=None,
            hypothesis_frequency=None,
            fail_fast=None,
            rollback_strategy=None,
        )
    assert effective_rollback_strategy("default") == "always"
    assert effective_rollback_strategy("never") == "never"


def test_event_log_is_locked_while_open_and_survives_a_torn_line(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    with EventLog.open(path) as log:
        log.emit("run_started", journal={"start": "2026-01-01T00:00:00+00:00"})
        assert is_locked(path)
        with pytest.raises(BlockingIOError):
            EventLog.open(path)
    assert not is_locked(path)
    with path.open("a") as f:
        f.write('{"seq": 1, "event": "acti')  # a crash mid-write
    assert [e["event"] for e in read_events(path)] == ["run_started"]
    with EventLog.open(path) as log:
        assert log.emit("phase")["seq"] == 1


def test_partial_journal_from_events() -> None:
    events = [
        {
            "event": "run_started",
            "ts": "2026-01-01T00:00:00+00:00",
            "journal": {"start": "2026-01-01T00:00:00+00:00", "experiment": {"title": "t"}},
            "extension": {"name": "seismo", "errors": [], "rollbacks": {"requested": "default"}},
        },
        {
            "event": "activity_completed",
            "phase": "hypothesis_before",
            "run": {"status": "succeeded"},
        },
        {"event": "activity_completed", "phase": "method", "run": {"status": "succeeded"}},
        {
            "event": "activity_completed",
            "phase": "rollbacks",
            "run": {"status": "succeeded"},
            "ts": "2026-01-01T00:00:05+00:00",
        },
    ]
    j = journal_mod.partial_journal(events, {"kind": "runner_lost"})
    ext = journal_mod.seismo_extension(j)
    assert ext is not None and ext["partial"] is True
    assert ext["interruption"] == {"kind": "runner_lost"}
    assert ext["rollbacks"]["played"] is True
    assert j["status"] == "interrupted" and j["duration"] == 5.0
    assert j["steady_states"]["before"]["probes"] == [{"status": "succeeded"}]
    assert len(j["run"]) == 1 and len(j["rollbacks"]) == 1
    assert journal_mod.exit_code(j) == 3


@pytest.mark.parametrize(
    ("journal", "code"),
    [
        ({"status": "completed", "deviated": False}, 0),
        ({"status": "completed", "deviated": True}, 1),
        ({"status": "failed", "deviated": False}, 1),
        ({"status": "completed", "steady_states": {"before": {"steady_state_met": False}}}, 1),
        ({"status": "aborted"}, 3),
        ({"status": "interrupted"}, 3),
        ({"status": "completed", "extensions": [{"name": "seismo", "interruption": {"k": 1}}]}, 3),
    ],
)
def test_exit_codes(journal: dict[str, object], code: int) -> None:
    assert journal_mod.exit_code(journal) == code


def test_atomic_write_leaves_no_temp_files(tmp_path: Path) -> None:
    path = tmp_path / "d" / "journal.json"
    atomic_write_json(path, {"a": 1})
    atomic_write_json(path, {"a": 2})
    assert json.loads(path.read_text()) == {"a": 2}
    assert [p.name for p in path.parent.iterdir()] == ["journal.json"]


def test_store_retention_by_count_and_age_spares_live_runs(tmp_path: Path) -> None:
    store = JournalStore(tmp_path, max_runs=2, max_age_seconds=3600)
    ids = []
    for _ in range(4):
        run_id, _ = store.create_run()
        store.write_journal(run_id, {"status": "completed", "experiment": {"title": run_id}})
        ids.append(run_id)
    live_id, live_dir = store.create_run()
    log = EventLog.open(live_dir / "events.jsonl")
    try:
        removed = store.prune()
        assert removed == ids[:2]
        assert store.run_ids() == sorted([*ids[2:], live_id])
        old = store.run_dir(ids[2]) / "journal.json"
        os.utime(old, (time.time() - 7200, time.time() - 7200))
        assert store.prune() == [ids[2]]
        summary = store.summary(live_id)
        assert summary.status == "running" and summary.exit_code is None
        assert store.reconcile() == []  # the live one is not touched
    finally:
        log.close()
    assert store.reconcile() == [live_id]
    assert store.summary(live_id).partial is True


def test_store_rejects_malformed_ids(tmp_path: Path) -> None:
    store = JournalStore(tmp_path)
    with pytest.raises(KeyError):
        store.run_dir("../../etc")
    with pytest.raises(KeyError):
        store.load("20260101T000000000000Z-deadbeef")
