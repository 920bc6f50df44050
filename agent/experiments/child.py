"""The runner process: one experiment, run by chaoslib on this process's main thread.

Started by the supervisor as ``python -m agent.experiments.child``; reads a :class:`RunSpec`
from the first line of stdin, streams events to ``events.jsonl`` (fsynced) and mirrors them
on stdout, and writes ``journal.json`` at the end. This code is plain synchronous Python on
purpose: chaoslib is synchronous, installs signal handlers (main thread only) and keeps
global state, which is why it gets a process of its own.

What this process changes in chaoslib's behaviour, and why:

- Interruptions (SIGINT, SIGTERM, SIGUSR2, an ``interrupt`` command, an activity timeout)
  raise :class:`Interrupted`, a ``SystemExit``. chaoslib's own SIGTERM handler raises
  ``InterruptExecution``, an ``Exception`` that a python provider's error handling turns
  into a mere failed activity, so the run would go on. ``SystemExit`` cannot be swallowed
  there, and chaoslib answers it with status ``interrupted`` and its rollback logic.
- The rollback strategy ``default`` is given to chaoslib as ``always``. If, after the run,
  rollbacks are due but were not played (strategy ``deviated``, an unexpected error), they
  are played here.
- While rollbacks run, signals are recorded and ignored: a second Ctrl-C must not cut them.
- Activity ``timeout`` (and a python provider's ``timeout``) is enforced with ``SIGALRM``
  for activities on the main thread.
- Secrets are redacted from everything written.
"""

from __future__ import annotations

import copy
import logging
import os
import signal
import sys
import threading
import traceback
from collections.abc import Mapping
from pathlib import Path
from types import FrameType
from typing import IO, Any

from agent.experiments.events import EventLog
from agent.experiments.journal import applied_faults, exit_code, new_extension
from agent.experiments.redaction import Redactor, mask_secret_definitions
from agent.experiments.spec import RunSpec, effective_rollback_strategy
from agent.experiments.store import atomic_write_json

__all__ = ["Interrupted", "main"]

from chaoslib.run import RunEventHandler

logger = logging.getLogger("seismo.runner")


class Interrupted(SystemExit):
    """Interrupts chaoslib from the main thread; ``SystemExit`` so providers cannot eat it."""

    def __init__(self, reason: Mapping[str, Any]) -> None:
        super().__init__(20)  # chaoslib: any code but 30 keeps rollbacks
        self.reason = dict(reason)


class RunState:
    """What the handlers, the signal handlers and the command thread share."""

    def __init__(self, log: EventLog, redactor: Redactor, ext: dict[str, Any]) -> None:
        self.log = log
        self.redactor = redactor
        self.ext = ext
        self.phase = "starting"
        self.journal: dict[str, Any] | None = None
        self.configuration: dict[str, Any] | None = None
        self.secrets: dict[str, Any] | None = None
        self.rollbacks_started = False
        self.timer_activity: tuple[str, float] | None = None
        self._pending: dict[str, Any] | None = None
        # re-entrant: a signal handler on the main thread may need it while the main
        # thread holds it (record_interruption)
        self._lock = threading.RLock()

    @property
    def protected(self) -> bool:
        """True while an interruption must not cut what runs (rollbacks, the end)."""
        return self.phase in ("rollbacks", "finishing")

    def record_interruption(self, reason: Mapping[str, Any]) -> None:
        with self._lock:
            if self.ext["interruption"] is None:
                self.ext["interruption"] = dict(reason)
                self.log.emit("interrupt", reason=dict(reason), phase=self.phase)

    def request(self, reason: Mapping[str, Any]) -> None:
        with self._lock:
            self._pending = dict(reason)

    def take_pending(self) -> dict[str, Any] | None:
        with self._lock:
            pending, self._pending = self._pending, None
            return pending

    def emit(self, event: str, **payload: Any) -> None:
        self.log.emit(event, **self.redactor.redact(payload))


def _error_line(run: Mapping[str, Any]) -> str:
    exc = run.get("exception")
    if isinstance(exc, list) and exc:
        return str(exc[-1]).strip()
    return str(exc or "failed")


class Streamer(RunEventHandler):  # type: ignore[misc]
    """chaoslib event handler: streams each step to the event log, tracks the phase."""

    def __init__(self, state: RunState, experiment: Mapping[str, Any]) -> None:
        self.state = state
        hypo = experiment.get("steady-state-hypothesis") or {}
        self.hypo_ids = {id(p) for p in hypo.get("probes", [])}

    def _phase(self, name: str, state: str = "started") -> None:
        if state == "started":
            self.state.phase = name
        self.state.emit("phase", phase=name, state=state)

    def _activity_phase(self, activity: Mapping[str, Any]) -> str:
        if (
            threading.current_thread() is not threading.main_thread()
            and id(activity) in self.hypo_ids
        ):
            return "hypothesis_during"
        return self.state.phase

    def started(self, experiment: dict[str, Any], journal: dict[str, Any]) -> None:
        self.state.journal = journal

    def running(
        self,
        experiment: dict[str, Any],
        journal: dict[str, Any],
        configuration: dict[str, Any],
        secrets: dict[str, Any],
        schedule: Any,
        settings: Any,
    ) -> None:
        self.state.configuration = configuration
        self.state.secrets = secrets
        # chaoslib's exit_signals() just replaced ours; take SIGTERM and SIGUSR2 back.
        signal.signal(signal.SIGTERM, self.state_handler)
        signal.signal(signal.SIGUSR2, self.state_handler)

    state_handler: Any = None  # set by main(): the process's signal handler

    def start_hypothesis_before(self, experiment: Any) -> None:
        self._phase("hypothesis_before")

    def hypothesis_before_completed(self, experiment: Any, state: Any, journal: Any) -> None:
        self.state.emit("hypothesis", when="before", state=state)

    def start_continuous_hypothesis(self, frequency: int) -> None:
        self.state.emit("phase", phase="hypothesis_during", state="started", frequency=frequency)

    def continuous_hypothesis_iteration(self, iteration_index: int, state: Any) -> None:
        self.state.emit("hypothesis", when="during", index=iteration_index, state=state)

    def start_method(self, experiment: Any) -> None:
        self._phase("method")

    def method_completed(self, experiment: Any, state: Any = None) -> None:
        self._phase("method", "completed")

    def start_hypothesis_after(self, experiment: Any) -> None:
        self._phase("hypothesis_after")

    def hypothesis_after_completed(self, experiment: Any, state: Any, journal: Any) -> None:
        self.state.emit("hypothesis", when="after", state=state)

    def start_rollbacks(self, experiment: Any) -> None:
        self.state.rollbacks_started = True
        self._phase("rollbacks")

    def rollbacks_completed(self, experiment: Any, journal: Any) -> None:
        self._phase("rollbacks", "completed")
        self.state.phase = "finishing"

    def start_activity(self, activity: dict[str, Any]) -> None:
        phase = self._activity_phase(activity)
        provider = activity.get("provider") or {}
        self.state.emit(
            "activity_started",
            phase=phase,
            name=activity.get("name"),
            type=activity.get("type"),
            provider=provider.get("type"),
            background=bool(activity.get("background")),
        )
        if threading.current_thread() is threading.main_thread():
            timeout = activity.get("timeout")
            if timeout is None and provider.get("type") == "python":
                timeout = provider.get("timeout")
            if isinstance(timeout, int | float) and not isinstance(timeout, bool) and timeout > 0:
                self.state.timer_activity = (str(activity.get("name")), float(timeout))
                signal.setitimer(signal.ITIMER_REAL, float(timeout))

    def activity_completed(self, activity: dict[str, Any], run: dict[str, Any]) -> None:
        if threading.current_thread() is threading.main_thread():
            signal.setitimer(signal.ITIMER_REAL, 0)
            self.state.timer_activity = None
        phase = self._activity_phase(activity)
        if "status" not in run:  # cut by an interruption
            run["status"] = "failed"
            reason = self.state.ext.get("interruption") or {}
            run["exception"] = [
                f"seismo: interrupted ({reason.get('message', reason.get('kind'))})"
            ]
        if run.get("status") == "failed":
            self.state.ext["errors"].append(
                self.state.redactor.redact(
                    {"phase": phase, "activity": activity.get("name"), "error": _error_line(run)}
                )
            )
        self.state.emit("activity_completed", phase=phase, run=run)


def _make_signal_handler(state: RunState) -> Any:
    def handler(signum: int, frame: FrameType | None) -> None:
        if state.log.writing():  # interrupted mid-record: finish the record, then handle
            state.log.defer_signal(signum)
            return
        if signum == signal.SIGALRM:
            current = state.timer_activity
            name, timeout = current if current else ("?", 0.0)
            reason = {
                "kind": "activity_timeout",
                "activity": name,
                "timeout": timeout,
                "phase": state.phase,
                "message": f"activity {name!r} exceeded its timeout of {timeout:g}s",
            }
            if state.protected:
                from chaoslib.exceptions import ActivityFailed

                state.emit("activity_timeout", reason=reason)
                raise ActivityFailed(f"{reason['message']} (enforced by seismo)")
            state.record_interruption(reason)
            raise Interrupted(reason)
        name = signal.Signals(signum).name
        reason = state.take_pending() or {
            "kind": "signal",
            "signal": name,
            "message": f"received {name}",
        }
        if state.protected:
            state.emit("signal_ignored", signal=name, phase=state.phase, reason=reason)
            return
        state.record_interruption(reason)
        raise Interrupted(reason)

    return handler


def _read_commands(stream: IO[str], state: RunState) -> None:
    """Command channel: interrupt requests from the supervisor (a daemon thread)."""
    import json

    for line in stream:
        try:
            command = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(command, dict) and command.get("cmd") == "interrupt":
            reason = command.get("reason") or {"kind": "abort", "message": "aborted"}
            state.request(reason)
            # To the MAIN thread: os.kill() lets the kernel pick any thread (often this one),
            # and then the main thread's blocking call (an HTTP action waiting on a socket)
            # is not interrupted, so the Python handler would run only when that call returns.
            main = threading.main_thread().ident
            assert main is not None
            signal.pthread_kill(main, signal.SIGTERM)


class _RedactingFilter(logging.Filter):
    def __init__(self, redactor: Redactor) -> None:
        super().__init__()
        self.redactor = redactor

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = self.redactor.text(record.getMessage())
        record.args = ()
        if record.exc_info:
            record.exc_text = self.redactor.text(
                "".join(traceback.format_exception(*record.exc_info))
            )
            record.exc_info = None
        return True


def _setup_logging(run_dir: Path, redactor: Redactor) -> None:
    handler = logging.FileHandler(run_dir / "chaostoolkit.log", encoding="utf-8")
    handler.setFormatter(logging.Formatter("[%(asctime)s %(levelname)s] %(message)s"))
    handler.addFilter(_RedactingFilter(redactor))
    for name in ("chaostoolkit", "seismo"):
        lg = logging.getLogger(name)
        lg.setLevel(logging.INFO)
        lg.addHandler(handler)
        lg.propagate = False


def _load_vars(spec: RunSpec) -> tuple[dict[str, Any], dict[str, Any]]:
    from chaoslib import merge_vars

    config_vars, secret_vars = merge_vars(spec.config_vars, spec.var_files)
    return dict(config_vars), dict(secret_vars)


def _loaded_secrets(spec: RunSpec, config_vars: Any, secret_vars: Any) -> Any:
    from chaoslib.configuration import load_configuration
    from chaoslib.secret import load_secrets

    # chaoslib pops used keys out of the vars it is given: hand it copies
    configuration = load_configuration(
        spec.experiment.get("configuration", {}), copy.deepcopy(config_vars)
    )
    return load_secrets(
        spec.experiment.get("secrets", {}), configuration, copy.deepcopy(secret_vars)
    )


def _play_rollbacks(
    state: RunState, streamer: Streamer, experiment: dict[str, Any], dry: Any, runs: list[Any]
) -> None:
    from chaoslib.run import EventHandlerRegistry, apply_rollbacks, get_background_pools

    registry = EventHandlerRegistry()
    registry.register(streamer)
    _, pool = get_background_pools(experiment)
    streamer.start_rollbacks(experiment)
    try:
        apply_rollbacks(
            experiment, state.configuration or {}, state.secrets or {}, pool, dry, registry, runs
        )
    finally:
        streamer.rollbacks_completed(experiment, None)


def _rollbacks_due(spec: RunSpec, state: RunState, journal: Mapping[str, Any]) -> bool:
    if state.rollbacks_started or state.configuration is None:
        return False
    strategy = effective_rollback_strategy(spec.rollback_strategy)
    if strategy == "never":
        return False
    troubled = state.ext["interruption"] is not None or journal.get("status") in (
        "failed",
        "aborted",
        "interrupted",
    )
    return strategy == "always" or troubled or bool(journal.get("deviated"))


def _finish(spec: RunSpec, state: RunState, journal: dict[str, Any], experiment: Any) -> int:
    state.phase = "finishing"
    if state.ext["interruption"] is not None and journal.get("status") not in (
        "interrupted",
        "aborted",
    ):
        journal["status"] = "interrupted"
    if journal.get("status") not in ("completed", "failed", "aborted", "interrupted"):
        journal["status"] = "completed"
    state.ext["rollbacks"]["played"] = state.rollbacks_started
    state.ext["faults"] = applied_faults(journal)
    journal_experiment = dict(journal.get("experiment") or experiment)
    journal_experiment.pop("dry", None)
    if "secrets" in journal_experiment:
        journal_experiment["secrets"] = mask_secret_definitions(journal_experiment["secrets"])
    journal["experiment"] = journal_experiment
    extensions = [e for e in journal.get("extensions") or [] if isinstance(e, dict)]
    journal["extensions"] = [*extensions, state.ext]
    final = state.redactor.redact(journal)
    atomic_write_json(Path(spec.run_dir) / "journal.json", final)
    code = exit_code(final)
    state.emit("run_finished", status=final["status"], deviated=final["deviated"], exit_code=code)
    return code


def _run(spec: RunSpec, state: RunState, streamer: Streamer, vars_: tuple[Any, Any]) -> int:
    from chaoslib.experiment import run_experiment
    from chaoslib.run import initialize_run_journal
    from chaoslib.types import Dry, Schedule, Strategy

    experiment = copy.deepcopy(spec.experiment)
    dry = Dry.from_string(spec.dry) if spec.dry else None
    if dry is not None:
        experiment["dry"] = dry
    streamer.hypo_ids = {
        id(p) for p in (experiment.get("steady-state-hypothesis") or {}).get("probes", [])
    }
    skeleton = initialize_run_journal(experiment)
    skeleton_exp = dict(skeleton["experiment"])
    skeleton_exp.pop("dry", None)
    skeleton_exp["secrets"] = mask_secret_definitions(skeleton_exp.get("secrets", {}))
    skeleton["experiment"] = skeleton_exp
    state.emit("run_started", pid=os.getpid(), journal=skeleton, extension=state.ext)
    settings = {
        "runtime": {"rollbacks": {"strategy": effective_rollback_strategy(spec.rollback_strategy)}}
    }
    schedule = Schedule(
        continuous_hypothesis_frequency=spec.hypothesis_frequency,
        fail_fast=spec.fail_fast,
        fail_fast_ratio=spec.fail_fast_ratio,
    )
    journal: dict[str, Any]
    try:
        journal = run_experiment(
            experiment,
            settings=settings,
            experiment_vars=vars_,
            strategy=Strategy.from_string(spec.hypothesis_strategy),
            schedule=schedule,
            event_handlers=[streamer],
        )
    except Interrupted as exc:  # raised outside chaoslib's own try (set-up, clean-up)
        state.record_interruption(exc.reason)
        journal = state.journal or skeleton
        journal["status"] = "interrupted"
    except Exception as exc:  # chaoslib crashed (e.g. a tolerance raised)
        logger.exception("the run ended with an unexpected error")
        journal = state.journal or skeleton
        journal["status"] = "aborted"
        state.ext["errors"].append(
            state.redactor.redact({"phase": state.phase, "activity": None, "error": repr(exc)})
        )
    state.phase = "finishing"
    if _rollbacks_due(spec, state, journal):
        state.emit("rollbacks_forced", reason="seismo plays rollbacks after a troubled run")
        runs: list[Any] = journal.setdefault("rollbacks", [])
        _play_rollbacks(state, streamer, experiment, dry, runs)
    return _finish(spec, state, journal, experiment)


def _recover(spec: RunSpec, state: RunState, streamer: Streamer, vars_: tuple[Any, Any]) -> int:
    """Play the rollbacks of a run whose runner died (SIGKILL, crash)."""
    from chaoslib.configuration import load_configuration, load_dynamic_configuration
    from chaoslib.secret import load_secrets

    experiment = copy.deepcopy(spec.experiment)
    config_vars, secret_vars = vars_
    configuration = load_configuration(
        experiment.get("configuration", {}), copy.deepcopy(config_vars)
    )
    secrets = load_secrets(experiment.get("secrets", {}), configuration, copy.deepcopy(secret_vars))
    state.configuration = load_dynamic_configuration(configuration, secrets)
    state.secrets = secrets
    state.emit("recovery", state="started")
    runs: list[Any] = []
    _play_rollbacks(state, streamer, experiment, None, runs)
    state.emit("recovery", state="completed", rollbacks=len(runs))
    return 0


def main() -> int:
    # Events go to the original stdout; everything else printed (providers, chaoslib) to
    # stderr, which the supervisor sends to runner.log.
    events_out = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
    os.dup2(2, 1)
    spec = RunSpec.from_line(sys.stdin.readline())
    run_dir = Path(spec.run_dir)
    config_vars, secret_vars = _load_vars(spec)
    try:
        loaded = _loaded_secrets(spec, config_vars, secret_vars)
    except Exception:  # chaoslib reports it again, in the journal, during the run
        loaded = {}
    redactor = Redactor.from_secrets(loaded, secret_vars)
    _setup_logging(run_dir, redactor)
    ext = new_extension(
        spec.run_id,
        spec.rollback_strategy,
        effective_rollback_strategy(spec.rollback_strategy),
        spec.agent,
    )
    with EventLog.open(run_dir / "events.jsonl", mirror=events_out) as log:
        state = RunState(log, redactor, ext)
        handler = _make_signal_handler(state)
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR2, signal.SIGALRM):
            signal.signal(sig, handler)
        streamer = Streamer(state, spec.experiment)
        streamer.state_handler = handler
        threading.Thread(
            target=_read_commands, args=(sys.stdin, state), name="commands", daemon=True
        ).start()
        if spec.mode == "recover":
            state.phase = "rollbacks"
            return _recover(spec, state, streamer, (config_vars, secret_vars))
        return _run(spec, state, streamer, (config_vars, secret_vars))


if __name__ == "__main__":
    sys.exit(main())
