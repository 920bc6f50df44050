"""Chaos Toolkit journals with seismo's extension, partial journals and exit codes.

The journal is the standard Chaos Toolkit journal (``chaos report`` reads it). seismo adds
one entry to its ``extensions`` list::

    {"name": "seismo", "version": "0.1.0", "run_id": "...",
     "agent": {"region": "eu-west", "zone": "a", "node": "n1"},
     "interruption": null | {"kind": "signal"|"guardrail"|"activity_timeout"|"max_duration"
                             |"runner_lost"|"abort", ...},
     "errors": [{"phase": "hypothesis_after", "activity": "homepage", "error": "..."}],
     "faults": [], "partial": false,
     "rollbacks": {"requested": "default", "effective": "always", "played": true,
                   "recovered": false}}

    code = exit_code(journal)   # 0 ok, 1 deviated/failed, 3 interrupted/aborted
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from agent import __version__

__all__ = [
    "EXIT_DEVIATED",
    "EXIT_INTERRUPTED",
    "EXIT_INVALID",
    "EXIT_OK",
    "agent_identity",
    "applied_faults",
    "exit_code",
    "new_extension",
    "partial_journal",
    "seismo_extension",
]

EXIT_OK = 0
EXIT_DEVIATED = 1
EXIT_INVALID = 2
EXIT_INTERRUPTED = 3


def agent_identity(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The agent identity from ``SEISMO_REGION``/``ZONE``/``NODE`` (empty when unset)."""
    environ = os.environ if env is None else env
    return {k: environ.get(f"SEISMO_{k.upper()}", "") for k in ("region", "zone", "node")}


def applied_faults(journal: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The node faults the run applied through ``agent.faults.providers.apply_fault``."""
    out: list[dict[str, Any]] = []
    for run in journal.get("run") or []:
        activity = run.get("activity") or {}
        provider = activity.get("provider") or {}
        output = run.get("output")
        if (
            provider.get("module") == "agent.faults.providers"
            and provider.get("func") == "apply_fault"
            and isinstance(output, dict)
            and "id" in output
        ):
            out.append({k: output.get(k) for k in ("id", "kind", "target", "expires_at")})
    return out


def new_extension(
    run_id: str, requested: str, effective: str, agent: Mapping[str, str]
) -> dict[str, Any]:
    return {
        "name": "seismo",
        "version": __version__,
        "run_id": run_id,
        "agent": dict(agent),
        "interruption": None,
        "errors": [],
        "faults": [],
        "partial": False,
        "rollbacks": {
            "requested": requested,
            "effective": effective,
            "played": False,
            "recovered": False,
        },
    }


def seismo_extension(journal: Mapping[str, Any]) -> dict[str, Any] | None:
    """The seismo entry of the journal's ``extensions``, or None."""
    for ext in journal.get("extensions") or []:
        if isinstance(ext, dict) and ext.get("name") == "seismo":
            return ext
    return None


def exit_code(journal: Mapping[str, Any]) -> int:
    """0 completed and not deviated; 1 deviated or failed; 3 interrupted or aborted."""
    ext = seismo_extension(journal) or {}
    status = journal.get("status")
    if ext.get("interruption") or ext.get("partial") or status in ("interrupted", "aborted"):
        return EXIT_INTERRUPTED
    before = (journal.get("steady_states") or {}).get("before") or {}
    if journal.get("deviated") or status != "completed" or before.get("steady_state_met") is False:
        return EXIT_DEVIATED
    return EXIT_OK


_PHASE_KEYS = {"hypothesis_before": "before", "hypothesis_after": "after"}


def partial_journal(
    events: Sequence[Mapping[str, Any]], reason: Mapping[str, Any] | None
) -> dict[str, Any]:
    """Rebuild a journal from a (possibly cut) event log, marked ``partial``.

    ``reason`` is the interruption to record when the log has none (e.g. runner_lost).
    """
    journal: dict[str, Any] = {}
    ext: dict[str, Any] | None = None
    runs: dict[str, list[dict[str, Any]]] = {"method": [], "rollbacks": []}
    hypo_runs: dict[str, list[dict[str, Any]]] = {"before": [], "after": []}
    states: dict[str, Any] = {"before": None, "after": None, "during": []}
    interruption: Any = None
    finished: Mapping[str, Any] | None = None
    for ev in events:
        kind = ev.get("event")
        if kind == "run_started":
            journal = dict(ev.get("journal") or {})
            ext = dict(ev.get("extension") or {})
        elif kind == "activity_completed":
            phase = str(ev.get("phase"))
            run = dict(ev.get("run") or {})
            if phase in runs:
                runs[phase].append(run)
            elif phase in _PHASE_KEYS:
                hypo_runs[_PHASE_KEYS[phase]].append(run)
        elif kind == "hypothesis":
            when = ev.get("when")
            if when == "during":
                states["during"].append(ev.get("state"))
            elif when in ("before", "after"):
                states[str(when)] = ev.get("state")
        elif kind == "interrupt" and interruption is None:
            interruption = ev.get("reason")
        elif kind == "run_finished":
            finished = ev
    for when in ("before", "after"):
        if states[when] is None and hypo_runs[when]:
            states[when] = {"steady_state_met": None, "probes": hypo_runs[when]}
    last_ts = events[-1].get("ts") if events else None
    journal.update(
        {
            "steady_states": states,
            "run": runs["method"],
            "rollbacks": runs["rollbacks"],
            "status": (finished or {}).get("status") or "interrupted",
            "deviated": bool((finished or {}).get("deviated", False)),
            "end": last_ts,
        }
    )
    start = journal.get("start")
    if isinstance(start, str) and isinstance(last_ts, str):
        with contextlib.suppress(ValueError):
            journal["duration"] = (
                datetime.fromisoformat(last_ts) - datetime.fromisoformat(start)
            ).total_seconds()
    ext = ext or {"name": "seismo", "version": __version__, "errors": [], "faults": []}
    ext["partial"] = True
    ext["interruption"] = interruption or (dict(reason) if reason else None)
    rb = dict(ext.get("rollbacks") or {})
    rb["played"] = bool(runs["rollbacks"])
    ext["rollbacks"] = rb
    journal["extensions"] = [ext]
    return journal
