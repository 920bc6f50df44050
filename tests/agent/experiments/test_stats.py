"""Experiment counters: low-cardinality labels, snapshots, and their exposition."""

from __future__ import annotations

from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from agent.config import Identity
from agent.experiments.stats import MAX_EXPERIMENTS, ExperimentTally
from agent.metrics import AgentMetrics
from agent.scheduler import Scheduler
from probes.result import ProbeResult


async def _never(spec: object) -> ProbeResult:
    raise AssertionError("no checks in these tests")


def test_titles_beyond_the_cap_count_as_other() -> None:
    tally = ExperimentTally()
    for i in range(MAX_EXPERIMENTS + 5):
        tally.finished(f"exp {i}", "completed", False, 1.0, 100.0)
    tally.finished("exp 0", "failed", True, 2.0, 200.0)
    stats = tally.snapshot(running=False)
    assert len(stats.durations) == MAX_EXPERIMENTS + 1
    assert stats.runs[("_other", "completed", False)] == 5
    assert stats.runs[("exp 0", "failed", True)] == 1
    assert stats.durations["exp 0"].count == 2
    assert stats.last_run["exp 0"] == 200.0


def test_snapshot_does_not_move_with_later_runs() -> None:
    tally = ExperimentTally()
    tally.finished("a", "completed", False, 1.0, 100.0)
    before = tally.snapshot(running=True)
    tally.finished("a", "completed", False, 1.0, 101.0)
    assert before.durations["a"].count == 1
    assert before.runs[("a", "completed", False)] == 1
    assert before.running == 1


def test_experiment_series_round_trip_through_prometheus_parser() -> None:
    tally = ExperimentTally()
    tally.schedule_declared("nightly")
    tally.finished('pod "kill"', "interrupted", False, 42.0, 1700000000.0)
    tally.tripped('pod "kill"', "agent:checkout")
    tally.skipped("nightly")
    metrics = AgentMetrics(CollectorRegistry(), Identity(node="n1"))
    text = metrics.render(Scheduler(_never, node="n1"), None, tally.snapshot(running=True))
    samples = {
        (s.name, frozenset(s.labels.items())): s.value
        for fam in text_string_to_metric_families(text.decode())
        for s in fam.samples
    }
    exp = {"experiment": 'pod "kill"'}
    assert samples[("seismo_experiment_running", frozenset())] == 1
    runs = {**exp, "status": "interrupted", "deviated": "false"}
    assert samples[("seismo_experiment_runs_total", frozenset(runs.items()))] == 1
    assert samples[("seismo_experiment_duration_seconds_count", frozenset(exp.items()))] == 1
    assert samples[("seismo_experiment_duration_seconds_sum", frozenset(exp.items()))] == 42
    le60 = frozenset({**exp, "le": "60"}.items())
    assert samples[("seismo_experiment_duration_seconds_bucket", le60)] == 1
    trips = frozenset({**exp, "guardrail": "agent:checkout"}.items())
    assert samples[("seismo_experiment_guardrail_trips_total", trips)] == 1
    nightly = frozenset({"schedule": "nightly"}.items())
    assert samples[("seismo_experiment_schedule_skipped_total", nightly)] == 1
    assert samples[("seismo_experiment_schedule_errors_total", nightly)] == 0
    assert not any("run_id" in dict(labels) for _, labels in samples)


def test_without_a_snapshot_no_experiment_series() -> None:
    metrics = AgentMetrics(CollectorRegistry(), Identity(node="n1"))
    text = metrics.render(Scheduler(_never, node="n1")).decode()
    assert "seismo_experiment_" not in text
