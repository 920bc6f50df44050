"""What the supervising process tells the runner process: one JSON line on its stdin.

The spec carries the experiment itself (with its inline secrets), so it travels over a pipe
and is never written to disk. Later lines on the same stdin are commands
(``{"cmd": "interrupt", "reason": {...}}``).

    spec = RunSpec(run_id=..., run_dir=..., experiment=..., ...)
    line = spec.to_line(); RunSpec.from_line(line) == spec
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

__all__ = [
    "HYPOTHESIS_STRATEGIES",
    "ROLLBACK_STRATEGIES",
    "RunSpec",
    "effective_rollback_strategy",
    "resolve_runtime",
]

ROLLBACK_STRATEGIES = ("default", "always", "never", "deviated")
HYPOTHESIS_STRATEGIES = (
    "default",
    "before-method-only",
    "after-method-only",
    "during-method-only",
    "continuously",
)
DRY_MODES = ("probes", "actions", "activities", "pause")


def effective_rollback_strategy(requested: str) -> str:
    """The strategy handed to chaoslib. seismo's ``default`` is chaoslib's ``always``:
    chaoslib's ``default`` skips rollbacks when a run is interrupted or failed."""
    return {"default": "always"}.get(requested, requested)


@dataclass(frozen=True, slots=True)
class RunSpec:
    run_id: str
    run_dir: str
    experiment: dict[str, Any]
    source: str = ""
    mode: Literal["run", "recover"] = "run"
    dry: str | None = None
    hypothesis_strategy: str = "default"
    hypothesis_frequency: float = 1.0
    fail_fast: bool = False
    fail_fast_ratio: float = 0.0
    rollback_strategy: str = "default"
    config_vars: dict[str, Any] = field(default_factory=dict)
    var_files: list[str] = field(default_factory=list)
    agent: dict[str, str] = field(default_factory=dict)

    def to_line(self) -> str:
        return json.dumps(asdict(self), default=str) + "\n"

    @classmethod
    def from_line(cls, line: str) -> RunSpec:
        data = json.loads(line)
        if not isinstance(data, dict):
            raise ValueError("the run spec must be a JSON object")
        return cls(**data)


def resolve_runtime(
    experiment: Mapping[str, Any],
    *,
    hypothesis_strategy: str | None,
    hypothesis_frequency: float | None,
    fail_fast: bool | None,
    rollback_strategy: str | None,
) -> tuple[str, float, bool, str]:
    """Merge the experiment's ``runtime`` block with the command line (which wins).

    Returns ``(hypothesis_strategy, frequency, fail_fast, rollback_strategy)``; raises
    ``ValueError`` naming the bad key.
    """
    runtime = experiment.get("runtime") or {}
    if not isinstance(runtime, Mapping):
        raise ValueError("runtime must be a mapping")
    hypo = runtime.get("hypothesis") or {}
    rollbacks = runtime.get("rollbacks") or {}
    strategy = hypothesis_strategy or str(hypo.get("strategy", "default"))
    if strategy not in HYPOTHESIS_STRATEGIES:
        raise ValueError(
            f"runtime.hypothesis.strategy {strategy!r} is not one of "
            + ", ".join(HYPOTHESIS_STRATEGIES)
        )
    frequency = (
        hypothesis_frequency if hypothesis_frequency is not None else hypo.get("frequency", 1.0)
    )
    if isinstance(frequency, bool) or not isinstance(frequency, int | float) or frequency <= 0:
        raise ValueError(f"runtime.hypothesis.frequency {frequency!r} must be a positive number")
    ff = fail_fast if fail_fast is not None else bool(hypo.get("fail_fast", False))
    rb = rollback_strategy or str(rollbacks.get("strategy", "default"))
    if rb not in ROLLBACK_STRATEGIES:
        raise ValueError(
            f"runtime.rollbacks.strategy {rb!r} is not one of " + ", ".join(ROLLBACK_STRATEGIES)
        )
    return strategy, float(frequency), ff, rb
