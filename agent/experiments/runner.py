"""The supervisor: runs one experiment in a runner process of its own and watches it.

The supervisor is async (one event loop, owned by the caller: the CLI's ``asyncio.run`` or
the agent's loop). It starts ``python -m agent.experiments.child`` in a new session (so a
terminal's Ctrl-C reaches only the supervisor, which decides what to forward), hands it the
:class:`RunSpec` on stdin, reads its events from stdout, and meanwhile:

- evaluates the experiment's guardrails (until rollbacks start);
- enforces the maximum run duration;
- turns :meth:`Supervisor.abort` (a signal, an API call, a guardrail) into an ``interrupt``
  command, then waits up to ``rollback_grace`` for rollbacks to finish before it kills;
- when the runner dies without a journal (SIGKILL, a crash), plays the rollbacks in a fresh
  recovery process and writes the partial journal from the event log.

    supervisor = Supervisor(experiment, store, RunOptions(), on_event=print)
    outcome = await supervisor.run()
    sys.exit(outcome.exit_code)
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import signal
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.client import AgentClient, AgentError
from agent.experiments.errors import ExperimentInvalid, Problem, RunnerFailed
from agent.experiments.events import read_events
from agent.experiments.extension import Guardrail, SeismoExtension, parse_extension
from agent.experiments.journal import agent_identity, exit_code, partial_journal, seismo_extension
from agent.experiments.spec import RunSpec, effective_rollback_strategy, resolve_runtime
from agent.experiments.store import JournalStore, atomic_write_json
from agent.experiments.watch import measure_baselines, watch

__all__ = ["RunOptions", "RunOutcome", "Supervisor"]

EVENT_LINE_LIMIT = 16 * 1024 * 1024
#: seconds between fault heartbeats (the agent's faults.heartbeat_timeout defaults to 30 s)
HEARTBEAT_PERIOD = 5.0

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RunOptions:
    """How to run. ``None`` strategies fall back to the experiment's ``runtime`` block."""

    dry: str | None = None
    config_vars: Mapping[str, Any] = field(default_factory=dict)
    var_files: tuple[str, ...] = ()
    hypothesis_strategy: str | None = None
    hypothesis_frequency: float | None = None
    fail_fast: bool | None = None
    rollback_strategy: str | None = None
    max_duration: float | None = None
    journal_path: Path | None = None
    rollback_grace: float = 120.0
    python: str = sys.executable
    env: Mapping[str, str] | None = None
    #: guardrails of the operator (agent config), watched next to the experiment's own
    guardrails: tuple[Guardrail, ...] = ()
    #: the agent URL for ``check`` guardrails that name none (the agent itself, in the agent)
    agent_url: str | None = None


@dataclass(frozen=True, slots=True)
class RunOutcome:
    run_id: str
    journal: dict[str, Any]
    exit_code: int
    journal_file: Path


def _substitute_guardrails(
    ext: SeismoExtension, experiment: Mapping[str, Any], options: RunOptions
) -> SeismoExtension:
    """Resolve ``${name}`` in guardrail targets, checks and agent URLs from the experiment's
    configuration (with ``--var`` overrides), as chaoslib does for activities; then add the
    operator's guardrails, named ``agent:<name>``."""
    operator = [
        g.model_copy(
            update={"name": f"agent:{g.name}", "agent_url": g.agent_url or options.agent_url}
        )
        for g in options.guardrails
    ]
    if not ext.guardrails:
        return ext.model_copy(update={"guardrails": operator}) if operator else ext
    from chaoslib import substitute
    from chaoslib.configuration import load_configuration

    try:
        config = load_configuration(
            dict(experiment.get("configuration") or {}), dict(options.config_vars)
        )
    except Exception as exc:  # chaoslib raises InvalidExperiment for a missing env key
        raise ExperimentInvalid([Problem("configuration", str(exc), "configuration")]) from exc

    def sub(value: str | None) -> str | None:
        return None if value is None else str(substitute(value, config, {}))

    guardrails = []
    for g in ext.guardrails:
        update: dict[str, Any] = {
            "check": sub(g.check),
            "agent_url": sub(g.agent_url) or options.agent_url,
        }
        if g.probe is not None:
            update["probe"] = g.probe.model_copy(update={"target": sub(g.probe.target)})
        guardrails.append(g.model_copy(update=update))
    return ext.model_copy(update={"guardrails": [*guardrails, *operator]})


class Supervisor:
    """Runs one experiment; :meth:`abort` may be called at any time from the same loop."""

    def __init__(
        self,
        experiment: Mapping[str, Any],
        store: JournalStore,
        options: RunOptions,
        *,
        source: str = "",
        on_event: Callable[[Mapping[str, Any]], None] | None = None,
    ) -> None:
        self.experiment = dict(experiment)
        self.store = store
        self.options = options
        self.source = source
        self.on_event = on_event
        ext, problems = parse_extension(experiment)
        try:
            strategy, frequency, fail_fast, rollbacks = resolve_runtime(
                experiment,
                hypothesis_strategy=options.hypothesis_strategy,
                hypothesis_frequency=options.hypothesis_frequency,
                fail_fast=options.fail_fast,
                rollback_strategy=options.rollback_strategy,
            )
        except ValueError as exc:
            problems.append(Problem("runtime", str(exc), "runtime"))
        if problems:
            raise ExperimentInvalid(problems, source)
        self.extension: SeismoExtension = _substitute_guardrails(ext, experiment, options)
        self._strategy = (strategy, frequency, fail_fast, rollbacks)
        self.run_id: str | None = None
        self.phase = "pending"
        self.abort_reason: dict[str, Any] | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._rollbacks_started = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._baselines: dict[str, float | None] = {}
        self._run_dir: Path | None = None

    # -- public -----------------------------------------------------------------------

    def abort(self, reason: Mapping[str, Any]) -> None:
        """Interrupt the run (once): the runner plays rollbacks, then stops.

        Before the runner is spawned, the reason is kept and sent as soon as it is."""
        if self.abort_reason is not None or self.phase == "finished":
            return
        self.abort_reason = dict(reason)
        if self._proc is not None:
            self._interrupt()

    def reserve(self) -> str:
        """Create the run's directory now and return its id (``run()`` uses it)."""
        if self.run_id is None:
            self.run_id, self._run_dir = self.store.create_run()
        return self.run_id

    def _interrupt(self) -> None:
        self._send({"cmd": "interrupt", "reason": self.abort_reason})
        task = asyncio.get_running_loop().create_task(self._escalate())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def run(self) -> RunOutcome:
        """Run to the end; return the journal and the exit code."""
        guardrails = self.extension.guardrails
        if any(g.max_p95_ratio_to_baseline is not None for g in guardrails):
            self._baselines = await measure_baselines(guardrails)
            self._notify({"event": "baselines", "baselines": self._baselines})
        self.reserve()
        run_id, run_dir = self.run_id, self._run_dir
        assert run_id is not None and run_dir is not None
        spec = self._spec(run_id, run_dir)
        try:
            await self._supervise(spec, run_dir)
        finally:
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
        journal = self._final_journal(run_id, run_dir)
        if journal is None:
            journal = await self._recover(spec, run_dir)
        journal_file = run_dir / "journal.json"
        if self.options.journal_path is not None:
            atomic_write_json(self.options.journal_path, journal)
            journal_file = self.options.journal_path
        self.store.prune()
        code = exit_code(journal)
        self.phase = "finished"
        self._notify(
            {
                "event": "outcome",
                "run_id": run_id,
                "exit_code": code,
                "status": journal.get("status"),
                "deviated": journal.get("deviated"),
                "journal_file": str(journal_file),
                "rollbacks": (seismo_extension(journal) or {}).get("rollbacks"),
                "interruption": (seismo_extension(journal) or {}).get("interruption"),
            }
        )
        return RunOutcome(run_id, journal, code, journal_file)

    # -- internals --------------------------------------------------------------------

    def _spec(self, run_id: str, run_dir: Path, mode: str = "run") -> RunSpec:
        strategy, frequency, fail_fast, rollbacks = self._strategy
        return RunSpec(
            run_id=run_id,
            run_dir=str(run_dir),
            experiment=self.experiment,
            source=self.source,
            mode="recover" if mode == "recover" else "run",
            dry=self.options.dry,
            hypothesis_strategy=strategy,
            hypothesis_frequency=frequency,
            fail_fast=fail_fast,
            rollback_strategy=rollbacks,
            config_vars=dict(self.options.config_vars),
            var_files=list(self.options.var_files),
            agent=agent_identity(self.options.env),
        )

    async def _spawn(self, spec: RunSpec, run_dir: Path) -> asyncio.subprocess.Process:
        env = dict(os.environ if self.options.env is None else self.options.env)
        env["SEISMO_RUN_ID"] = spec.run_id  # owns the node faults this run applies
        log_fd = os.open(run_dir / "runner.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            try:
                proc = await asyncio.create_subprocess_exec(
                    self.options.python,
                    "-m",
                    "agent.experiments.child",
                    stdin=asyncio.subprocess.PIPE,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=log_fd,
                    env=env,
                    start_new_session=True,
                    limit=EVENT_LINE_LIMIT,
                )
            except OSError as exc:
                raise RunnerFailed(f"cannot start the runner process: {exc}") from exc
        finally:
            os.close(log_fd)
        assert proc.stdin is not None
        proc.stdin.write(spec.to_line().encode("utf-8"))
        with contextlib.suppress(ConnectionError):
            await proc.stdin.drain()
        return proc

    async def _supervise(self, spec: RunSpec, run_dir: Path) -> None:
        proc = await self._spawn(spec, run_dir)
        self._proc = proc
        self.phase = "starting"
        self._notify(
            {"event": "spawned", "run_id": spec.run_id, "pid": proc.pid, "run_dir": str(run_dir)}
        )
        if self.abort_reason is not None:  # aborted before the runner existed
            self._interrupt()
        helpers: list[asyncio.Task[None]] = []
        if self.extension.guardrails:
            helpers.append(asyncio.create_task(self._guard()))
        max_duration = self.options.max_duration or self.extension.max_duration
        if max_duration:
            helpers.append(asyncio.create_task(self._deadline(max_duration)))
        helpers.append(asyncio.create_task(self._heartbeat(spec.run_id)))
        reader = asyncio.create_task(self._read_events(proc))
        try:
            await proc.wait()
            # a grandchild holding stdout must not hold us: bound the tail of the stream
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(reader), timeout=5.0)
        finally:
            for task in (*helpers, reader):
                task.cancel()
            await asyncio.gather(*helpers, reader, return_exceptions=True)
            if proc.returncode is None:  # we are being cancelled: never leave it behind
                self._kill(proc)
                await proc.wait()

    async def _read_events(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        while line := await proc.stdout.readline():
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                continue
            if not isinstance(event, dict):
                continue
            if event.get("event") == "phase" and event.get("state") == "started":
                self.phase = str(event.get("phase"))
                if self.phase == "rollbacks":
                    self._rollbacks_started.set()
            self._notify(event)

    async def _guard(self) -> None:
        watcher = asyncio.create_task(watch(self.extension.guardrails, self._baselines))
        stopper = asyncio.create_task(self._rollbacks_started.wait())
        try:
            await asyncio.wait({watcher, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopper.cancel()
            if not watcher.done():
                watcher.cancel()
            await asyncio.gather(watcher, stopper, return_exceptions=True)
        if watcher.cancelled():
            return
        exc = watcher.exception()
        if exc is not None:
            self.abort({"kind": "guardrail_error", "message": f"a guardrail failed: {exc!r}"})
            return
        trip = watcher.result()
        self._notify({"event": "guardrail_tripped", "trip": trip.to_json()})
        self.abort(trip.to_json())

    async def _heartbeat(self, run_id: str) -> None:
        """Tell the agent this run is alive, so it keeps the run's node faults.

        If this supervisor dies, the heartbeats stop and the agent's dead man's switch
        reverts the run's faults. Without a token there can be no faults: nothing to send.
        """
        env = os.environ if self.options.env is None else self.options.env
        if not (env.get("SEISMO_TOKEN") or env.get("SEISMO_TOKEN_FILE")):
            return
        try:
            client = AgentClient.from_env(env=env)
        except AgentError as exc:
            log.warning("run %s: no fault heartbeats: %s", run_id, exc)
            return
        client = dataclasses.replace(client, timeout=HEARTBEAT_PERIOD)
        while True:
            try:
                await asyncio.to_thread(
                    client.call, "POST", "/api/v1/faults/heartbeat", {"owner": f"run:{run_id}"}
                )
            except AgentError as exc:
                log.debug("run %s: heartbeat not delivered: %s", run_id, exc)
            await asyncio.sleep(HEARTBEAT_PERIOD)

    async def _deadline(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
        self.abort(
            {
                "kind": "max_duration",
                "max_duration": seconds,
                "message": f"the run exceeded its maximum duration of {seconds:g}s",
            }
        )

    async def _escalate(self) -> None:
        proc = self._proc
        if proc is None:
            return
        try:
            await asyncio.wait_for(proc.wait(), timeout=self.options.rollback_grace)
        except TimeoutError:
            self._notify(
                {
                    "event": "escalation",
                    "message": "the runner did not stop within "
                    f"{self.options.rollback_grace:g}s; killing it",
                }
            )
            self._kill(proc)

    @staticmethod
    def _kill(proc: asyncio.subprocess.Process) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)

    def _send(self, command: Mapping[str, Any]) -> None:
        proc = self._proc
        if proc is None or proc.stdin is None or proc.stdin.is_closing():
            return
        with contextlib.suppress(ConnectionError, RuntimeError):
            proc.stdin.write((json.dumps(command) + "\n").encode("utf-8"))

    def _notify(self, event: Mapping[str, Any]) -> None:
        if self.on_event is not None:
            self.on_event(event)

    def _final_journal(self, run_id: str, run_dir: Path) -> dict[str, Any] | None:
        path = run_dir / "journal.json"
        if not path.is_file():
            return None
        data = json.loads(path.read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else None

    async def _recover(self, spec: RunSpec, run_dir: Path) -> dict[str, Any]:
        """The runner died without a journal: play rollbacks again, write the partial one."""
        proc = self._proc
        rc = proc.returncode if proc is not None else None
        reason: dict[str, Any] = {"kind": "runner_lost", "returncode": rc}
        if rc is not None and rc < 0:
            name = signal.Signals(-rc).name
            reason.update(signal=name, message=f"the runner process was killed by {name}")
        else:
            reason["message"] = f"the runner process exited ({rc}) without a journal"
        if self.abort_reason is not None:
            reason["after"] = self.abort_reason
        events = read_events(run_dir / "events.jsonl")
        done = any(
            e.get("event") == "phase"
            and e.get("phase") == "rollbacks"
            and e.get("state") == "completed"
            for e in events
        )
        recovered = False
        if effective_rollback_strategy(self._strategy[3]) != "never" and not done:
            self._notify({"event": "recovery", "message": "playing the rollbacks again"})
            proc = await self._spawn(self._spec(spec.run_id, run_dir, "recover"), run_dir)
            self._proc = proc
            reader = asyncio.create_task(self._read_events(proc))
            try:
                await asyncio.wait_for(proc.wait(), timeout=self.options.rollback_grace)
                recovered = proc.returncode == 0
            except TimeoutError:
                self._kill(proc)
                await proc.wait()
            finally:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(reader), timeout=5.0)
                reader.cancel()
                await asyncio.gather(reader, return_exceptions=True)
        events = read_events(run_dir / "events.jsonl")
        journal = partial_journal(events, reason)
        ext = seismo_extension(journal)
        if ext is not None:
            if not (ext.get("interruption") or {}).get("kind"):
                ext["interruption"] = reason
            ext["runner_lost"] = reason
            ext["rollbacks"]["recovered"] = recovered
        journal["status"] = "interrupted"
        self.store.write_journal(spec.run_id, journal)
        return journal
