"""Prometheus exposition: the ONLY module that talks to ``prometheus_client``.

``/metrics`` has four parts, rendered in the text format (0.0.4):

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
10,000 checks does not build 10,000 x N Python sample objects. The ``/probe`` page
(:meth:`AgentMetrics.render_probe`) is rendered the same lean way from one result, with no
identity labels, as blackbox_exporter does.

A scrape of 10,000 checks is ~350,000 lines (~50 MB) rendered synchronously on the event
loop, so every probe due meanwhile starts late: the per-check loop is kept to one f-string
per line. Each check's identity labels are rendered once and kept until the check or the
agent's identity changes; repeated values (status codes, flags) are formatted once per
scrape. What recurs on every page is formatted once and kept by the ``AgentMetrics``
itself, never at module level, in ``probes.connection.BoundedTable``s (emptied when full):
the label sets of measurements, the ``# HELP``/``# TYPE`` lines of ``/probe`` gauges and the
``le`` labels of each histogram bucket layout (the few ``Histogram`` bounds the agent uses).
Rendered lines are not kept between scrapes: at a 10 s interval and a 15 s scrape every
check has a new result by the next scrape, and the page would cost as much memory again as
it takes to send.

    metrics = AgentMetrics(CollectorRegistry(), identity)
    body = metrics.render(scheduler)
    page = metrics.render_probe(result)
"""

from __future__ import annotations

import asyncio
import itertools
import platform
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Info, generate_latest

from agent import __version__
from agent.config import Identity
from agent.experiments.stats import ExperimentStats
from agent.faults.engine import FaultEngine
from agent.faults.preflight import ALL_CAPABILITIES
from agent.scheduler import CheckRuntime, CheckSpec, LoopLagMonitor, Scheduler
from agent.stats import Histogram
from probes.connection import BoundedTable
from probes.result import ProbeResult, Reason

__all__ = ["CONTENT_TYPE", "AgentMetrics"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _escape(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _labels(pairs: Iterable[tuple[str, str]]) -> str:
    return ",".join(f'{k}="{_escape(v)}"' for k, v in pairs)


_SPECIAL_VALUES = {"nan": "NaN", "inf": "+Inf", "-inf": "-Inf"}


def _value(v: float) -> str:
    """A sample value as client_python writes it: integral values without ``.0``."""
    text = repr(v)  # ints: their digits; floats: the shortest text that reads back exactly
    if text[-2:] == ".0" and -1e15 < v < 1e15:
        return text[:-2] if v else "0"  # -0.0 too
    return _SPECIAL_VALUES.get(text, text)


#: ``seismo_check_runs_total``'s labels after the check's own, by reason
_RUN_LABELS = {
    reason: f',result="{"success" if reason is Reason.SUCCESS else "failure"}",'
    f'reason="{reason.value}"}} '
    for reason in Reason
}


#: most label sets of measurements kept formatted (the same few recur on every page; bounded
#: for label values that can be many, such as certificate subjects)
_LABEL_SETS_LIMIT = 4096
#: most ``/probe`` gauge headers kept formatted
_GAUGE_HEADERS_LIMIT = 1024
#: most histogram bucket layouts kept formatted (the agent has three)
_BUCKET_LAYOUTS_LIMIT = 64


def _gauge_header(key: tuple[str, str]) -> str:
    """The ``# HELP`` and ``# TYPE`` lines of a probe gauge, as ``/probe`` writes them."""
    name, help = key
    escaped = (help or name).replace("\\", "\\\\")
    return f"# HELP {name} {escaped}\n# TYPE {name} gauge\n"


def _le_labels(bounds: tuple[float, ...]) -> tuple[str, ...]:
    """``le="0.005"} `` per bucket of a ``Histogram`` layout, ``+Inf`` last."""
    return (*(f'le="{_value(b)}"}} ' for b in bounds), 'le="+Inf"} ')


#: checks rendered between two yields to the event loop (~5 ms of work at most: a run due
#: meanwhile starts that much late)
CHECKS_PER_SLICE = 100
#: after each slice, the loop is left to everything else for this many times as long as the
#: slice took: a scrape takes at most a fifth of the loop while it renders (an agent busy
#: with its checks at 75% of its core still keeps up)
SLICE_PAUSE_FACTOR = 4.0


@dataclass(slots=True)
class _Family:
    """One metric family; its sample lines are encoded as they are made.

    Lines go straight into one buffer per family rather than into a list of strings: a
    scrape of 10,000 checks would otherwise hold ~350,000 small strings at once, then the
    joined page, then its encoding (three copies of ~50 MB, each freshly paged in).
    """

    name: str
    kind: str
    help: str
    #: the agent's ``le`` labels by bucket layout, for histograms
    le: BoundedTable[tuple[float, ...], tuple[str, ...]]
    text: bytearray = field(default_factory=bytearray)

    def sample(self, labels: str, value: float, suffix: str = "") -> None:
        if labels:
            self.text += f"{self.name}{suffix}{{{labels}}} {_value(value)}\n".encode()
        else:
            self.text += f"{self.name}{suffix} {_value(value)}\n".encode()

    def histogram(self, labels: str, hist: Histogram) -> None:
        bucket = f"{self.name}_bucket{{{labels}{',' if labels else ''}"
        text = self.text
        total = 0
        for le, n in zip(self.le[hist.bounds], hist.counts, strict=True):
            total += n
            text += f"{bucket}{le}{total}\n".encode()
        self.sample(labels, hist.sum, "_sum")
        self.sample(labels, hist.count, "_count")


class _Families:
    """One page's families by name, in first-seen order; rendered with HELP and TYPE once
    each. ``le`` is the agent's table of ``le`` labels by bucket layout."""

    def __init__(self, le: BoundedTable[tuple[float, ...], tuple[str, ...]]) -> None:
        self.by_name: dict[str, _Family] = {}
        self.le = le

    def get(self, name: str, kind: str, help: str) -> _Family:
        fam = self.by_name.get(name)
        if fam is None:
            fam = self.by_name[name] = _Family(name, kind, help, self.le)
        return fam

    def render(self, head: bytes) -> bytes:
        """The families in text format, after ``head`` (text ending in a newline, or empty)."""
        parts: list[bytes | bytearray] = [head]
        for fam in self.by_name.values():
            if fam.text:
                escaped = fam.help.replace("\\", "\\\\")
                parts.append(
                    f"# HELP {fam.name} {escaped}\n# TYPE {fam.name} {fam.kind}\n".encode()
                )
                parts.append(fam.text)
        return b"".join(parts)


class AgentMetrics:
    """The agent's metrics. Self-metrics live in ``registry``; checks are rendered live.

    The agent makes one, and serves ``/metrics`` and ``/probe`` through it.
    """

    def __init__(self, registry: CollectorRegistry, identity: Identity) -> None:
        self.registry = registry
        self._identity = identity
        # by check name: the runtime the labels were rendered for, and its identity labels
        self._bases: dict[str, tuple[CheckRuntime, str]] = {}
        # what recurs on every page, formatted once (module docstring)
        self._label_sets: BoundedTable[tuple[tuple[str, str], ...], str] = BoundedTable(
            _labels, _LABEL_SETS_LIMIT
        )
        self._gauge_headers: BoundedTable[tuple[str, str], str] = BoundedTable(
            _gauge_header, _GAUGE_HEADERS_LIMIT
        )
        self._le: BoundedTable[tuple[float, ...], tuple[str, ...]] = BoundedTable(
            _le_labels, _BUCKET_LAYOUTS_LIMIT
        )
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
        self._bases.clear()

    def config_reloaded(self, ok: bool, when: float) -> None:
        self.reload_success.set(1 if ok else 0)
        self.reloads.labels("success" if ok else "failure").inc()
        if ok:
            self.reload_timestamp.set(when)

    def render_probe(self, result: ProbeResult) -> str:
        """The ``/probe`` page for one result: blackbox's gauges, no identity labels, and the
        families sorted by name, as blackbox_exporter writes them.

            page = agent.metrics.render_probe(result)
        """
        headers = self._gauge_headers
        label_sets = self._label_sets
        families: dict[str, list[str]] = {}
        for m in result.measurements:
            name = m.name
            lines = families.get(name)
            if lines is None:
                lines = families[name] = [headers[name, m.help]]
            if m.labels:
                lines.append(f"{name}{{{label_sets[m.labels]}}} {_value(m.value)}\n")
            else:
                lines.append(f"{name} {_value(m.value)}\n")
        return "".join(itertools.chain.from_iterable(families[name] for name in sorted(families)))

    def render(
        self,
        scheduler: Scheduler,
        lag: LoopLagMonitor | None = None,
        experiments: ExperimentStats | None = None,
        faults: FaultEngine | None = None,
    ) -> bytes:
        """The whole ``/metrics`` page, in one go (see :meth:`render_async` for the agent)."""
        fams = _Families(self._le)
        for _ in self._checks_in_slices(fams, scheduler):
            pass
        return self._finish(fams, scheduler, lag, experiments, faults)

    async def render_async(
        self,
        scheduler: Scheduler,
        lag: LoopLagMonitor | None = None,
        experiments: ExperimentStats | None = None,
        faults: FaultEngine | None = None,
    ) -> bytes:
        """The same page, yielding to the event loop after every ``CHECKS_PER_SLICE`` checks.

        A scrape of 10,000 checks is ~0.5 s of rendering: in one go it would hold every
        probe due meanwhile (they would start late, and time the wait as latency). Nor is a
        bare yield between slices enough: the loop then alternates render and probes, the
        core is oversubscribed for the whole scrape, and runs fall behind. So after each
        slice the render pauses ``SLICE_PAUSE_FACTOR`` times as long as the slice took; a
        scrape of 10,000 checks takes ~2.5 s of wall time. Each check is rendered whole from
        the result it has when its slice comes; a check removed meanwhile appears in this
        one last page.
        """
        fams = _Families(self._le)
        started = time.perf_counter()
        for _ in self._checks_in_slices(fams, scheduler):
            await asyncio.sleep((time.perf_counter() - started) * SLICE_PAUSE_FACTOR)
            started = time.perf_counter()
        return self._finish(fams, scheduler, lag, experiments, faults)

    def _checks_in_slices(self, fams: _Families, scheduler: Scheduler) -> Iterator[None]:
        pairs = list(self._identities(scheduler.checks()))
        for start in range(0, len(pairs), CHECKS_PER_SLICE):
            self._render_checks(fams, pairs[start : start + CHECKS_PER_SLICE])
            yield

    def _finish(
        self,
        fams: _Families,
        scheduler: Scheduler,
        lag: LoopLagMonitor | None,
        experiments: ExperimentStats | None,
        faults: FaultEngine | None,
    ) -> bytes:
        self._render_scheduler(fams, scheduler, lag)
        if experiments is not None:
            _render_experiments(fams, experiments)
        if faults is not None:
            _render_faults(fams, faults)
        return fams.render(generate_latest(self.registry))

    def _base(self, spec: CheckSpec) -> str:
        ident = self._identity
        return _labels(
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

    def _identities(self, checks: Iterable[CheckRuntime]) -> Iterable[tuple[CheckRuntime, str]]:
        """Each check with its identity labels, rendered anew only for checks new since the
        last scrape (or after an identity change). Checks gone since then drop out here.

        A pass of its own, before any line of the page: the labels outlive the scrape, and
        made between its ~350,000 short-lived lines they would pin the allocator's memory
        blocks those lines leave behind (tens of MiB of resident memory after one scrape).
        """
        old, bases = self._bases, {}
        for rt in checks:
            entry = old.get(rt.spec.name)
            if entry is None or entry[0] is not rt:
                entry = (rt, self._base(rt.spec))
            bases[rt.spec.name] = entry
        self._bases = bases
        return bases.values()

    def _render_checks(self, fams: _Families, checks: Iterable[tuple[CheckRuntime, str]]) -> None:
        """Parts 1 and 2 for every check: the hot loop of a scrape, one f-string per line.

        Families are registered in the order the checks first use them, which is the order
        they appear in the page.
        """
        by_name = fams.by_name
        label_sets = self._label_sets
        values: dict[float, str] = {}  # a scrape's repeated values, formatted once
        runs = durations = skipped = last_run = lateness = None
        for rt, base in checks:
            last = rt.last
            if last is not None:
                for m in last.measurements:
                    name = m.name
                    fam = by_name.get(name)
                    if fam is None:
                        fam = fams.get(name, "gauge", m.help or name)
                    text = values.get(m.value)
                    if text is None:
                        text = values[m.value] = _value(m.value)
                    if m.labels:
                        labels = label_sets[m.labels]
                        fam.text += f"{name}{{{base},{labels}}} {text}\n".encode()
                    else:
                        fam.text += f"{name}{{{base}}} {text}\n".encode()
            if runs is None or durations is None or skipped is None:
                runs = fams.get(
                    "seismo_check_runs_total",
                    "counter",
                    "Check runs, by result and failure reason.",
                )
                durations = fams.get(
                    "seismo_check_duration_seconds",
                    "histogram",
                    "Duration of check runs (all outcomes), in seconds.",
                )
                skipped = fams.get(
                    "seismo_check_skipped_runs_total",
                    "counter",
                    "Runs skipped because the previous run of the check was still going.",
                )
            for reason, n in rt.runs.items():
                runs.text += f"seismo_check_runs_total{{{base}{_RUN_LABELS[reason]}{n}\n".encode()
            durations.histogram(base, rt.durations)
            skipped.text += f"seismo_check_skipped_runs_total{{{base}}} {rt.skipped}\n".encode()
            if last is not None:
                if last_run is None or lateness is None:
                    last_run = fams.get(
                        "seismo_check_last_run_timestamp_seconds",
                        "gauge",
                        "When the last run of the check started (Unix time).",
                    )
                    lateness = fams.get(
                        "seismo_check_last_lateness_seconds",
                        "gauge",
                        "How late the last run started versus its slot; agent starvation, "
                        "not target latency.",
                    )
                last_run.text += (
                    f"seismo_check_last_run_timestamp_seconds{{{base}}} {_value(rt.last_run_at)}\n"
                ).encode()
                late = values.get(rt.last_lateness)
                if late is None:
                    late = values[rt.last_lateness] = _value(rt.last_lateness)
                lateness.text += f"seismo_check_last_lateness_seconds{{{base}}} {late}\n".encode()

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
