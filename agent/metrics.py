"""Prometheus exposition: the ONLY module that talks to ``prometheus_client``.

``/metrics`` has three parts, rendered in the text format (0.0.4):

1. per check, blackbox_exporter's names (``probe_success``, ``probe_http_status_code``, ...)
   from the check's last result, with the labels ``check, module, target, region, zone, node``
   plus the check's own ``labels``;
2. per check, the durable series blackbox lacks: ``seismo_check_runs_total{result,reason}``,
   ``seismo_check_duration_seconds`` (histogram), last-run time and lateness, skipped runs;
3. the agent's own ``seismo_*`` metrics (config reloads, scheduler lateness, event-loop lag,
   build info), kept in a ``CollectorRegistry`` that is passed in, never the global one;
4. experiment runs (``seismo_experiment_*``), rendered from the experiment service's
   snapshot (agent.experiments.stats): by experiment title, never by run id.

Parts 1 and 2 are rendered straight from the scheduler's state at scrape time: nothing is
registered per check, so the series of a removed check disappear with it, and a scrape of
10,000 checks does not build 10,000 x N Python sample objects. ``/probe`` output is rendered
the same lean way from one result, with no identity labels, as blackbox_exporter does.

    metrics = AgentMetrics(CollectorRegistry(), identity)
    body = metrics.render(scheduler)
"""

from __future__ import annotations

import math
import platform
from collections.abc import Iterable
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Info, generate_latest

from agent import __version__
from agent.config import Identity
from agent.experiments.stats import ExperimentStats
from agent.faults.engine import FaultEngine
from agent.faults.preflight import ALL_CAPABILITIES
from agent.scheduler import CheckRuntime, LoopLagMonitor, Scheduler
from agent.stats import Histogram
from probes.result import Measurement, ProbeResult, Reason

__all__ = ["CONTENT_TYPE", "AgentMetrics", "render_probe"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _escape(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _labels(pairs: Iterable[tuple[str, str]]) -> str:
    return ",".join(f'{k}="{_escape(v)}"' for k, v in pairs)


def _value(v: float) -> str:
    if isinstance(v, int):
        return str(v)
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    if v.is_integer() and abs(v) < 1e15:
        return str(int(v))
    return repr(v)


@dataclass(slots=True)
class _Family:
    name: str
    kind: str
    help: str
    lines: list[str] = field(default_factory=list)

    def sample(self, labels: str, value: float, suffix: str = "") -> None:
        if labels:
            self.lines.append(f"{self.name}{suffix}{{{labels}}} {_value(value)}")
        else:
            self.lines.append(f"{self.name}{suffix} {_value(value)}")

    def histogram(self, labels: str, hist: Histogram) -> None:
        sep = "," if labels else ""
        for bound, count in hist.cumulative():
            le = "+Inf" if math.isinf(bound) else _value(bound)
            self.lines.append(f'{self.name}_bucket{{{labels}{sep}le="{le}"}} {count}')
        self.sample(labels, hist.sum, "_sum")
        self.sample(labels, hist.count, "_count")


class _Families:
    """Families by name, in first-seen order; rendered with HELP and TYPE once each."""

    def __init__(self) -> None:
        self._by_name: dict[str, _Family] = {}

    def get(self, name: str, kind: str, help: str) -> _Family:
        fam = self._by_name.get(name)
        if fam is None:
            fam = self._by_name[name] = _Family(name, kind, help)
        return fam

    def render(self, *, sort: bool = False) -> str:
        fams = (
            sorted(self._by_name.values(), key=lambda f: f.name) if sort else self._by_name.values()
        )
        out: list[str] = []
        for fam in fams:
            if not fam.lines:
                continue
            out.append(f"# HELP {fam.name} {fam.help.replace(chr(92), chr(92) * 2)}")
            out.append(f"# TYPE {fam.name} {fam.kind}")
            out.extend(fam.lines)
        return "\n".join(out) + "\n" if out else ""


def _measurements(fams: _Families, base: str, measurements: Iterable[Measurement]) -> None:
    for m in measurements:
        fam = fams.get(m.name, "gauge", m.help or m.name)
        if m.labels:
            extra = _labels(m.labels)
            fam.sample(f"{base},{extra}" if base else extra, m.value)
        else:
            fam.sample(base, m.value)


def render_probe(result: ProbeResult) -> str:
    """The ``/probe`` page for one result: blackbox's gauges, no identity labels, sorted."""
    fams = _Families()
    _measurements(fams, "", result.measurements)
    return fams.render(sort=True)


class AgentMetrics:
    """The agent's metrics. Self-metrics live in ``registry``; checks are rendered live."""

    def __init__(self, registry: CollectorRegistry, identity: Identity) -> None:
        self.registry = registry
        self._identity = identity
        self._base_cache: dict[int, tuple[CheckRuntime, str]] = {}
        self.reload_success = Gauge(
            "seismo_config_last_reload_successful",
            "Whether the last configuration reload attempt was successful.",
            registry=registry,
        )
        self.reload_timestamp = Gauge(
            "seismo_config_last_reload_success_timestamp_seconds",
            "Timestamp of the last successful configuration reload.",
            registry=registry,
        )
        self.reloads = Counter(
            "seismo_config_reloads",
            "Configuration reload attempts, by result.",
            ["result"],
            registry=registry,
        )
        for result in ("success", "failure"):
            self.reloads.labels(result)
        self.ready = Gauge(
            "seismo_ready",
            "1 when the config is loaded and the scheduler is running.",
            registry=registry,
        )
        Info("seismo_build", "seismo version and runtime.", registry=registry).info(
            {"version": __version__, "python": platform.python_version()}
        )

    def set_identity(self, identity: Identity) -> None:
        self._identity = identity
        self._base_cache.clear()

    def config_reloaded(self, ok: bool, when: float) -> None:
        self.reload_success.set(1 if ok else 0)
        self.reloads.labels("success" if ok else "failure").inc()
        if ok:
            self.reload_timestamp.set(when)

    def render(
        self,
        scheduler: Scheduler,
        lag: LoopLagMonitor | None = None,
        experiments: ExperimentStats | None = None,
        faults: FaultEngine | None = None,
    ) -> bytes:
        """The whole ``/metrics`` page."""
        fams = _Families()
        live = {id(rt) for rt in scheduler.checks()}
        self._base_cache = {k: v for k, v in self._base_cache.items() if k in live}
        for rt in scheduler.checks():
            self._render_check(fams, rt)
        self._render_scheduler(fams, scheduler, lag)
        if experiments is not None:
            _render_experiments(fams, experiments)
        if faults is not None:
            _render_faults(fams, faults)
        return generate_latest(self.registry) + fams.render().encode()

    def _base(self, rt: CheckRuntime) -> str:
        cached = self._base_cache.get(id(rt))
        if cached is not None and cached[0] is rt:
            return cached[1]
        spec, ident = rt.spec, self._identity
        base = _labels(
            (
                ("check", spec.name),
                ("module", spec.module_name),
                ("target", spec.target),
                ("region", ident.region),
                ("zone", ident.zone),
                ("node", ident.node),
                *spec.labels,
            )
        )
        self._base_cache[id(rt)] = (rt, base)
        return base

    def _render_check(self, fams: _Families, rt: CheckRuntime) -> None:
        base = self._base(rt)
        if rt.last is not None:
            _measurements(fams, base, rt.last.measurements)
        runs = fams.get(
            "seismo_check_runs_total", "counter", "Check runs, by result and failure reason."
        )
        for reason, n in rt.runs.items():
            result = "success" if reason is Reason.SUCCESS else "failure"
            runs.sample(f'{base},result="{result}",reason="{reason.value}"', n)
        fams.get(
            "seismo_check_duration_seconds",
            "histogram",
            "Duration of check runs (all outcomes), in seconds.",
        ).histogram(base, rt.durations)
        fams.get(
            "seismo_check_skipped_runs_total",
            "counter",
            "Runs skipped because the previous run of the check was still going.",
        ).sample(base, rt.skipped)
        if rt.last is not None:
            fams.get(
                "seismo_check_last_run_timestamp_seconds",
                "gauge",
                "When the last run of the check started (Unix time).",
            ).sample(base, rt.last_run_at)
            fams.get(
                "seismo_check_last_lateness_seconds",
                "gauge",
                "How late the last run started versus its slot; agent starvation, "
                "not target latency.",
            ).sample(base, rt.last_lateness)

    def _render_scheduler(
        self, fams: _Families, scheduler: Scheduler, lag: LoopLagMonitor | None
    ) -> None:
        checks = list(scheduler.checks())
        fams.get("seismo_scheduler_checks", "gauge", "Checks the scheduler runs.").sample(
            "", len(checks)
        )
        fams.get("seismo_scheduler_running_probes", "gauge", "Probes running right now.").sample(
            "", sum(1 for rt in checks if rt.running)
        )
        fams.get(
            "seismo_scheduler_runs_started_total", "counter", "Check runs started by the scheduler."
        ).sample("", scheduler.runs_started)
        fams.get(
            "seismo_scheduler_lateness_seconds",
            "histogram",
            "How late check runs started versus their planned slot (includes waiting "
            "for the concurrency cap).",
        ).histogram("", scheduler.lateness)
        if lag is not None:
            fams.get(
                "seismo_event_loop_lag_seconds",
                "histogram",
                "How late the event loop woke a timer; high values mean the agent is "
                "starved of CPU.",
            ).histogram("", lag.lag)


def _render_experiments(fams: _Families, stats: ExperimentStats) -> None:
    fams.get(
        "seismo_experiment_running", "gauge", "1 while an experiment run is active on this agent."
    ).sample("", stats.running)
    runs = fams.get(
        "seismo_experiment_runs_total",
        "counter",
        "Finished experiment runs, by experiment title, journal status and deviation.",
    )
    for (exp, status, deviated), n in sorted(stats.runs.items()):
        labels = (("experiment", exp), ("status", status), ("deviated", str(deviated).lower()))
        runs.sample(_labels(labels), n)
    duration = fams.get(
        "seismo_experiment_duration_seconds",
        "histogram",
        "Duration of experiment runs (all outcomes), in seconds.",
    )
    for exp, hist in sorted(stats.durations.items()):
        duration.histogram(_labels((("experiment", exp),)), hist)
    last = fams.get(
        "seismo_experiment_last_run_timestamp_seconds",
        "gauge",
        "When the last run of the experiment finished (Unix time).",
    )
    for exp, when in sorted(stats.last_run.items()):
        last.sample(_labels((("experiment", exp),)), when)
    trips = fams.get(
        "seismo_experiment_guardrail_trips_total",
        "counter",
        "Guardrails that tripped during a run, by experiment and guardrail.",
    )
    for (exp, guardrail), n in sorted(stats.guardrail_trips.items()):
        trips.sample(_labels((("experiment", exp), ("guardrail", guardrail))), n)
    skipped = fams.get(
        "seismo_experiment_schedule_skipped_total",
        "counter",
        "Scheduled runs skipped because another run was active (concurrency_policy: forbid).",
    )
    for name, n in sorted(stats.schedule_skipped.items()):
        skipped.sample(_labels((("schedule", name),)), n)
    errors = fams.get(
        "seismo_experiment_schedule_errors_total",
        "counter",
        "Scheduled runs that could not start (experiment missing or invalid).",
    )
    for name, n in sorted(stats.schedule_errors.items()):
        errors.sample(_labels((("schedule", name),)), n)
    fams.get(
        "seismo_experiment_runs_reconciled_total",
        "counter",
        "Runs found without a journal at agent start (their runner died); marked partial.",
    ).sample("", stats.reconciled)


def _render_faults(fams: _Families, engine: FaultEngine) -> None:
    active = fams.get(
        "seismo_faults_active", "gauge", "Faults active on this node, by kind and target."
    )
    counts: dict[tuple[str, str], int] = {}
    for entry in engine.active():
        counts[(entry.kind, entry.target)] = counts.get((entry.kind, entry.target), 0) + 1
    for (kind, target), n in sorted(counts.items()):
        active.sample(_labels((("kind", kind), ("target", target))), n)
    if not counts:
        active.sample("", 0)
    stats = engine.stats
    applied = fams.get("seismo_faults_applied_total", "counter", "Faults applied, by kind.")
    for kind, n in sorted(stats.applied.items()):
        applied.sample(_labels((("kind", kind),)), n)
    reverted = fams.get(
        "seismo_faults_reverted_total",
        "counter",
        "Faults reverted, by kind and reason (rollback, ttl, dead_man, kill_switch, reconcile, "
        "agent_stop, apply_failed, instant, api).",
    )
    for (kind, reason), n in sorted(stats.reverted.items()):
        reverted.sample(_labels((("kind", kind), ("reason", reason))), n)
    refused = fams.get(
        "seismo_faults_refused_total",
        "counter",
        "Faults refused because the node lacks a capability or the policy's limit was reached.",
    )
    for kind, n in sorted(stats.refused.items()):
        refused.sample(_labels((("kind", kind),)), n)
    caps = fams.get(
        "seismo_fault_capability",
        "gauge",
        "1 if this node can apply faults that need the capability (kernel preflight at start).",
    )
    for name in ALL_CAPABILITIES:
        caps.sample(_labels((("capability", name),)), 1 if engine.caps.has(name) else 0)
    fams.get(
        "seismo_fault_ledger_problems",
        "gauge",
        "Unreadable lines in the fault ledger (kept in the file for a person to inspect).",
    ).sample("", len(engine.ledger_problems))
