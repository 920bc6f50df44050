"""Live progress of a run on a terminal: one line per activity, with status and duration.

printer = ProgressPrinter(sys.stdout)
supervisor = Supervisor(..., on_event=printer)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TextIO

__all__ = ["ProgressPrinter"]

_PHASES = {
    "hypothesis_before": "steady-state hypothesis (before the method)",
    "method": "method",
    "hypothesis_after": "steady-state hypothesis (after the method)",
    "hypothesis_during": "steady-state hypothesis (during the method)",
    "rollbacks": "rollbacks",
}


class ProgressPrinter:
    """Renders supervisor events as lines of text."""

    def __init__(self, out: TextIO) -> None:
        self.out = out

    def __call__(self, event: Mapping[str, Any]) -> None:
        line = self.render(event)
        if line is not None:
            self.out.write(line + "\n")
            self.out.flush()

    def render(self, event: Mapping[str, Any]) -> str | None:
        kind = event.get("event")
        if kind == "spawned":
            return f"seismo: run {event.get('run_id')} started (runner pid {event.get('pid')})"
        if kind == "run_started":
            title = ((event.get("journal") or {}).get("experiment") or {}).get("title", "")
            return f"seismo: experiment {title!r}"
        if kind == "phase" and event.get("state") == "started":
            phase = str(event.get("phase"))
            return f"-- {_PHASES.get(phase, phase)}"
        if kind == "activity_started" and event.get("background"):
            return f"   {event.get('type')} {event.get('name')!r} started in the background"
        if kind == "activity_completed":
            run = event.get("run") or {}
            activity = run.get("activity") or {}
            status = run.get("status", "?")
            duration = run.get("duration")
            took = f" in {duration:.3f}s" if isinstance(duration, int | float) else ""
            mark = "ok  " if status == "succeeded" else "FAIL"
            tol = ""
            if run.get("tolerance_met") is False:
                tol = " (tolerance not met)"
            line = (
                f"   [{mark}] {activity.get('type')} {activity.get('name')!r} {status}{took}{tol}"
            )
            if status != "succeeded" and run.get("exception"):
                line += f"\n          {str(run['exception'][-1]).strip()}"
            return line
        if kind == "hypothesis":
            state = event.get("state") or {}
            met = state.get("steady_state_met")
            when = event.get("when")
            return f"   steady state ({when}): {'met' if met else 'NOT met'}"
        if kind == "interrupt":
            reason = event.get("reason") or {}
            return f"!! interrupted: {reason.get('message') or reason.get('kind')}"
        if kind == "guardrail_tripped":
            return f"!! {(event.get('trip') or {}).get('message')}"
        if kind == "signal_ignored":
            return f"   ({event.get('signal')} ignored: rollbacks are running)"
        if kind == "rollbacks_forced":
            return "   seismo plays the rollbacks (the run was interrupted or failed)"
        if kind in ("recovery", "escalation") and event.get("message"):
            return f"!! {event.get('message')}"
        if kind == "outcome":
            return _verdict(event)
        return None


def _verdict(event: Mapping[str, Any]) -> str:
    code = event.get("exit_code")
    status = event.get("status")
    if code == 0:
        verdict = "completed: the steady state held"
    elif code == 1:
        verdict = "deviated" if event.get("deviated") else f"{status}"
        verdict = f"{verdict}: the steady state did not hold or an activity failed"
    else:
        reason = event.get("interruption") or {}
        verdict = f"{status}: {reason.get('message') or reason.get('kind') or 'aborted'}"
        rollbacks = event.get("rollbacks") or {}
        played = rollbacks.get("played") or rollbacks.get("recovered")
        verdict += " (rollbacks were played)" if played else " (NO rollbacks were played)"
    return f"seismo: {verdict} (exit {code})\nseismo: journal {event.get('journal_file')}"
