"""seismo's own safety rules for experiments, checked BEFORE chaoslib sees them.

chaoslib's validation imports every python provider module, and importing is running code,
so the allowlist must be enforced first. Rules (the name in brackets appears in messages):

- ``[provider-allowlist]`` a python provider (activity, tolerance or control) must come from an
  allowed module: by default seismo's own providers, ``chaosk8s`` and ``chaoslib``.
- ``[unknown-module]`` an allowed module must also be importable.
- ``[process-disabled]`` the ``process`` provider is refused unless the policy enables it.
- ``[process-argv]`` when enabled, only its argv-list form: a string of arguments is run by a
  shell in chaoslib, and a shell in a privileged agent is how a cluster gets taken over.

    problems = check_policy(experiment, Policy())
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from agent.experiments.errors import Problem

__all__ = ["DEFAULT_ALLOWED_MODULES", "Policy", "check_policy", "iter_activities"]

DEFAULT_ALLOWED_MODULES: tuple[str, ...] = (
    "agent.experiments.providers",
    "agent.faults.providers",
    "chaosk8s",
    "chaoslib",
)


@dataclass(frozen=True, slots=True)
class Policy:
    """What an experiment may run. ``allowed_modules`` match a module or any module under it."""

    allowed_modules: tuple[str, ...] = DEFAULT_ALLOWED_MODULES
    allow_process: bool = False

    def module_allowed(self, module: str) -> bool:
        return any(module == m or module.startswith(m + ".") for m in self.allowed_modules)


def _label(where: str, activity: Mapping[str, Any]) -> str:
    kind = activity.get("type", "activity")
    name = activity.get("name")
    return f"{where} {kind} {name!r}" if name else f"{where} {kind}"


def iter_activities(experiment: Mapping[str, Any]) -> Iterator[tuple[str, Mapping[str, Any]]]:
    """Yield ``(where, activity)`` for every activity, tolerance probe and control."""
    hypo = experiment.get("steady-state-hypothesis")
    if isinstance(hypo, Mapping):
        for i, probe in enumerate(_as_list(hypo.get("probes"))):
            yield _label(f"steady-state-hypothesis.probes[{i}]", probe), probe
            tolerance = probe.get("tolerance")
            if isinstance(tolerance, Mapping) and "provider" in tolerance:
                yield _label(f"steady-state-hypothesis.probes[{i}].tolerance", tolerance), tolerance
    for section in ("method", "rollbacks"):
        for i, activity in enumerate(_as_list(experiment.get(section))):
            yield _label(f"{section}[{i}]", activity), activity
    for i, control in enumerate(_as_list(experiment.get("controls"))):
        yield f"controls[{i}] {control.get('name')!r}", control


def _as_list(value: Any) -> list[Mapping[str, Any]]:
    if not isinstance(value, list):
        return []
    return [v for v in value if isinstance(v, Mapping)]


def check_policy(experiment: Mapping[str, Any], policy: Policy) -> list[Problem]:
    """Every policy problem of ``experiment`` (empty when it may run)."""
    problems: list[Problem] = []
    for where, activity in iter_activities(experiment):
        provider = activity.get("provider")
        if not isinstance(provider, Mapping):
            continue
        kind = provider.get("type")
        if kind == "python":
            problems.extend(_check_python(where, provider, policy))
        elif kind == "process":
            problems.extend(_check_process(where, provider, policy))
    return problems


def _check_python(where: str, provider: Mapping[str, Any], policy: Policy) -> list[Problem]:
    module = provider.get("module")
    if not isinstance(module, str) or not module:
        return []  # chaoslib's validation names this one
    if not policy.module_allowed(module):
        allowed = ", ".join(policy.allowed_modules)
        return [
            Problem(
                where,
                f"python module {module!r} is not allowed (allowed: {allowed}); "
                "an operator can add it to the allowlist",
                "provider-allowlist",
            )
        ]
    try:
        found = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        return [Problem(where, f"python module {module!r} cannot be imported", "unknown-module")]
    return []


def _check_process(where: str, provider: Mapping[str, Any], policy: Policy) -> list[Problem]:
    if not policy.allow_process:
        return [
            Problem(
                where,
                "the process provider is disabled (enable it with --allow-process)",
                "process-disabled",
            )
        ]
    arguments = provider.get("arguments", [])
    if not isinstance(arguments, list) or not all(
        isinstance(a, str | int | float) for a in arguments
    ):
        return [
            Problem(
                where,
                "process arguments must be a list of strings (argv form); "
                "a string would be run by a shell",
                "process-argv",
            )
        ]
    return []
