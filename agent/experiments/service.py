"""The agent's experiment service: one run at a time, from the API or from cron schedules.

Owned by the Agent: :meth:`start` (reconcile the journals of runners that died, apply
retention), :meth:`run` (the schedule loop, in the agent's task group), :meth:`close` (abort
the active run, wait for its rollbacks, cancel every task it owns). Each run is a
:class:`~agent.experiments.runner.Supervisor` on the agent's loop, so chaoslib stays in a
runner process of its own; guardrails that read agent checks ask this agent's summary
endpoint (``SEISMO_AGENT_URL``, also given to the runner for the ``check_*`` providers).

    service = ExperimentService(settings, data_dir, base_dir=Path("."), env=lambda: env)
    await service.start()
    run = await service.submit(experiment, source="api")      # RunActive, ExperimentInvalid
    service.abort(run.run_id, {"kind": "abort", "message": "..."})
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.experiments.errors import ExperimentError, ExperimentInvalid, Problem
from agent.experiments.events import read_events
from agent.experiments.extension import parse_extension
from agent.experiments.journal import partial_journal, seismo_extension
from agent.experiments.loader import load_experiment
from agent.experiments.runner import RunOptions, Supervisor
from agent.experiments.schedule import ScheduleLoop
from agent.experiments.settings import ExperimentSettings, ScheduleSettings
from agent.experiments.stats import ExperimentStats, ExperimentTally
from agent.experiments.store import JournalStore
from agent.experiments.validation import validate_experiment

__all__ = ["ActiveRun", "ExperimentService", "RunActive", "RunNotActive"]

log = logging.getLogger(__name__)

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_SUFFIXES = ("", ".yaml", ".yml", ".json")
#: beyond the supervisor's own bounds (grace, kill, recovery), how long close() waits
_CLOSE_MARGIN = 30.0


class RunActive(ExperimentError):
    """A run is already active on this agent (one at a time)."""

    def __init__(self, run_id: str) -> None:
        super().__init__(f"run {run_id} is active; one run at a time per agent")
        self.run_id = run_id


class RunNotActive(ExperimentError):
    """The run exists but is not running (it cannot be aborted)."""


@dataclass(slots=True)
class ActiveRun:
    """The run in progress, as the API shows it."""

    run_id: str
    title: str
    source: str
    supervisor: Supervisor
    started_at: float  # Unix time
    started_mono: float
    activity: dict[str, Any] | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)

    def live(self) -> dict[str, Any]:
        sup = self.supervisor
        return {
            "status": "aborting" if sup.abort_reason is not None else "running",
            "phase": sup.phase,
            "activity": self.activity,
            "elapsed_seconds": round(time.monotonic() - self.started_mono, 3),
            "started_at": self.started_at,
            "interruption": sup.abort_reason,
            "source": self.source,
        }


class ExperimentService:
    """Runs experiments for the agent; every method is called on the agent's loop."""

    def __init__(
        self,
        settings: ExperimentSettings,
        data_dir: Path,
        *,
        base_dir: Path,
        env: Callable[[], Mapping[str, str]],
    ) -> None:
        self.settings = settings
        self.base_dir = base_dir
        self._env = env
        self.store = JournalStore(
            data_dir, max_runs=settings.max_runs, max_age_seconds=settings.max_age
        )
        self.tally = ExperimentTally()
        self._active: ActiveRun | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._validate_lock = asyncio.Lock()
        self._closed = False
        self.schedules = ScheduleLoop(settings.schedules, self.fire_schedule)
        for s in settings.schedules:
            self.tally.schedule_declared(s.name)

    # --- lifecycle ------------------------------------------------------------------

    async def start(self) -> list[str]:
        """Mark the partial journals of runners that died; apply retention. Returns their ids."""
        fixed = await asyncio.to_thread(self.store.reconcile)
        for run_id in fixed:
            log.warning("run %s lost its runner; its partial journal is marked as such", run_id)
        self.tally.reconciled += len(fixed)
        await asyncio.to_thread(self.store.prune)
        return fixed

    async def run(self) -> None:
        """Fire scheduled experiments until cancelled."""
        await self.schedules.run()

    def update(self, settings: ExperimentSettings) -> None:
        """Apply a reloaded config (the active run keeps its own settings)."""
        self.settings = settings
        self.store.max_runs = settings.max_runs
        self.store.max_age_seconds = settings.max_age
        for s in settings.schedules:
            self.tally.schedule_declared(s.name)
        self.schedules.update(settings.schedules)

    async def close(self) -> None:
        """Abort the active run, wait for its rollbacks, and cancel every owned task."""
        if self._closed:
            return
        self._closed = True
        active = self._active
        if active is not None:
            active.supervisor.abort(
                {"kind": "agent_shutdown", "message": "the agent is shutting down"}
            )
            limit = 2 * self.settings.rollback_grace + _CLOSE_MARGIN
            try:
                async with asyncio.timeout(limit):
                    await active.done.wait()
            except TimeoutError:
                log.error("run %s did not stop within %gs; cancelling it", active.run_id, limit)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # --- state ----------------------------------------------------------------------

    @property
    def active(self) -> ActiveRun | None:
        return self._active

    def stats(self) -> ExperimentStats:
        return self.tally.snapshot(running=self._active is not None)

    # --- experiments by name --------------------------------------------------------

    def experiments_dir(self) -> Path | None:
        if self.settings.dir is None:
            return None
        return self.base_dir / self.settings.dir

    def find_named(self, name: str) -> Path:
        """The file of experiment ``name`` in ``experiments.dir``; ExperimentInvalid if none."""
        where = self.experiments_dir()
        if where is None:
            raise ExperimentInvalid(
                [Problem("name", "experiments.dir is not configured", "experiment-name")]
            )
        if not _NAME.match(name) or ".." in name:
            raise ExperimentInvalid(
                [
                    Problem(
                        "name",
                        f"{name!r} is not an experiment name (letters, digits and _.-)",
                        "experiment-name",
                    )
                ]
            )
        for suffix in _SUFFIXES:
            path = where / f"{name}{suffix}"
            if path.is_file():
                return path
        raise ExperimentInvalid(
            [Problem("name", f"no experiment named {name!r} in {where}", "experiment-name")]
        )

    async def load_named(self, name: str) -> tuple[dict[str, Any], str]:
        path = self.find_named(name)
        return await asyncio.to_thread(load_experiment, path), str(path)

    async def _load_scheduled(self, schedule: ScheduleSettings) -> tuple[dict[str, Any], str]:
        if "/" in schedule.experiment:
            path = self.base_dir / schedule.experiment
            return await asyncio.to_thread(load_experiment, path), str(path)
        return await self.load_named(schedule.experiment)

    # --- runs -----------------------------------------------------------------------

    async def submit(
        self,
        experiment: dict[str, Any],
        *,
        source: str,
        origin: str = "api",
        config_vars: Mapping[str, Any] | None = None,
    ) -> ActiveRun:
        """Validate and start a run. Raises ExperimentInvalid (nothing ran) or RunActive."""
        if self._closed:
            raise ExperimentError("the agent is shutting down")
        settings = self.settings
        async with self._validate_lock:  # chaoslib's validation keeps a global cache
            await asyncio.to_thread(validate_experiment, experiment, settings.policy(), source)
        if self._active is not None:
            raise RunActive(self._active.run_id)
        env = dict(self._env())
        own_limit = parse_extension(experiment)[0].max_duration
        limits = [d for d in (settings.max_duration, own_limit) if d]
        options = RunOptions(
            config_vars=dict(config_vars or {}),
            max_duration=min(limits) if limits else None,
            rollback_grace=settings.rollback_grace,
            env=env,
            guardrails=tuple(settings.guardrails),
            agent_url=env.get("SEISMO_AGENT_URL"),
        )
        title = str(experiment.get("title") or "")
        active: ActiveRun | None = None

        def on_event(event: Mapping[str, Any]) -> None:
            if active is not None:
                self._on_event(active, event)

        supervisor = Supervisor(experiment, self.store, options, source=source, on_event=on_event)
        if self._active is not None:  # re-check: nothing above may yield, but be certain
            raise RunActive(self._active.run_id)
        run_id = supervisor.reserve()
        active = ActiveRun(
            run_id=run_id,
            title=title,
            source=origin,
            supervisor=supervisor,
            started_at=time.time(),
            started_mono=time.monotonic(),
        )
        self._active = active
        self._own(self._run(active), f"run-{run_id}")
        log.info("run %s started (%s, experiment %r)", run_id, origin, title)
        return active

    def abort(self, run_id: str, reason: Mapping[str, Any]) -> ActiveRun:
        """Abort the active run ``run_id``: KeyError if unknown, RunNotActive if finished."""
        active = self._active
        if active is None or active.run_id != run_id:
            self.store.run_dir(run_id)  # KeyError when there is no such run
            raise RunNotActive(f"run {run_id} is not running")
        active.supervisor.abort(reason)
        return active

    def _on_event(self, active: ActiveRun, event: Mapping[str, Any]) -> None:
        kind = event.get("event")
        if kind == "activity_started":
            active.activity = {
                "name": event.get("name"),
                "type": event.get("type"),
                "phase": event.get("phase"),
                "started": event.get("ts"),
            }
        elif kind == "activity_completed":
            active.activity = None
        elif kind == "guardrail_tripped":
            trip = event.get("trip") or {}
            self.tally.tripped(active.title, str(trip.get("guardrail", "")))

    async def _run(self, active: ActiveRun) -> None:
        try:
            try:
                outcome = await active.supervisor.run()
                journal = outcome.journal
            except Exception as exc:  # the runner could not start or be supervised
                log.exception("run %s failed", active.run_id)
                journal = await asyncio.to_thread(self._failed_journal, active.run_id, exc)
            ext = seismo_extension(journal) or {}
            self.tally.finished(
                active.title,
                str(journal.get("status") or "unknown"),
                bool(journal.get("deviated")),
                time.monotonic() - active.started_mono,
                time.time(),
            )
            log.info(
                "run %s finished: %s%s",
                active.run_id,
                journal.get("status"),
                f" ({(ext.get('interruption') or {}).get('kind')})"
                if ext.get("interruption")
                else "",
            )
        finally:
            self._active = None
            active.done.set()

    def _failed_journal(self, run_id: str, exc: Exception) -> dict[str, Any]:
        run_dir = self.store.run_dir(run_id)
        reason = {"kind": "runner_failed", "message": f"{type(exc).__name__}: {exc}"}
        journal = partial_journal(read_events(run_dir / "events.jsonl"), reason)
        journal["status"] = "aborted"
        self.store.write_journal(run_id, journal)
        return journal

    # --- schedules ------------------------------------------------------------------

    def fire_schedule(self, schedule: ScheduleSettings) -> None:
        """Start ``schedule``'s run now, honouring its concurrency policy (non-blocking)."""
        if self._closed:
            return
        self._own(self._fire(schedule), f"schedule-{schedule.name}")

    async def _fire(self, schedule: ScheduleSettings) -> None:
        active = self._active
        if active is not None:
            if schedule.concurrency_policy == "forbid":
                self.tally.skipped(schedule.name)
                log.info("schedule %s skipped: run %s is active", schedule.name, active.run_id)
                return
            log.info("schedule %s replaces run %s", schedule.name, active.run_id)
            active.supervisor.abort(
                {
                    "kind": "replaced",
                    "schedule": schedule.name,
                    "message": f"replaced by a run of schedule {schedule.name!r}",
                }
            )
            try:
                async with asyncio.timeout(2 * self.settings.rollback_grace + _CLOSE_MARGIN):
                    await active.done.wait()
            except TimeoutError:
                self.tally.schedule_failed(schedule.name)
                log.error("schedule %s: run %s did not stop", schedule.name, active.run_id)
                return
        try:
            experiment, source = await self._load_scheduled(schedule)
            await self.submit(
                experiment,
                source=source,
                origin=f"schedule:{schedule.name}",
                config_vars=schedule.vars,
            )
        except RunActive as exc:
            self.tally.skipped(schedule.name)
            log.info("schedule %s skipped: run %s is active", schedule.name, exc.run_id)
        except ExperimentError as exc:
            self.tally.schedule_failed(schedule.name)
            log.error("schedule %s: %s", schedule.name, exc)

    # --- tasks ----------------------------------------------------------------------

    def _own(self, coro: Any, name: str) -> None:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("%s failed", task.get_name(), exc_info=task.exception())
