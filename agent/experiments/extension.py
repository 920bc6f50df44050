"""The ``seismo`` extension of an experiment: guardrails and a maximum run duration.

Declared in the experiment's standard ``extensions`` list, so Chaos Toolkit ignores it::

    extensions:
      - name: seismo
        max_duration: 10m
        guardrails:
          - name: checkout-availability
            check: checkout            # a continuous check of the agent (live results)
            window: 30s
            min_success_ratio: 0.95
          - name: homepage-latency
            probe:                     # or a probe the runner runs itself
              target: http://127.0.0.1:18080/
              module: {prober: http}
              timeout: 2s
            interval: 1s
            window: 10s
            max_p95_ms: 500
            max_p95_ratio_to_baseline: 3

Unknown keys are errors. Defaults live here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from agent.experiments.errors import Problem
from probes.modules import Duration, Module

__all__ = ["Guardrail", "ProbeSource", "SeismoExtension", "parse_extension"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ProbeSource(_Model):
    """A probe the supervising runner runs itself, with a blackbox module."""

    target: str = Field(min_length=1)
    module: Module
    timeout: Duration = 5.0


class Guardrail(_Model):
    """An abort condition, evaluated continuously while the run goes on."""

    name: str = Field(min_length=1)
    check: str | None = None
    probe: ProbeSource | None = None
    agent_url: str | None = None
    window: Duration = 30.0
    interval: Duration = Field(default=1.0, gt=0)
    min_samples: int = Field(default=1, ge=1)
    min_success_ratio: float | None = Field(default=None, ge=0, le=1)
    max_p95_ms: float | None = Field(default=None, gt=0)
    max_p95_ratio_to_baseline: float | None = Field(default=None, gt=0)
    baseline_samples: int = Field(default=5, ge=1, le=100)

    @model_validator(mode="after")
    def _source_and_condition(self) -> Guardrail:
        if (self.check is None) == (self.probe is None):
            raise ValueError("a guardrail needs exactly one of 'check' or 'probe'")
        if (
            self.min_success_ratio is None
            and self.max_p95_ms is None
            and self.max_p95_ratio_to_baseline is None
        ):
            raise ValueError(
                "a guardrail needs a condition: min_success_ratio, max_p95_ms "
                "or max_p95_ratio_to_baseline"
            )
        if self.window <= 0:
            raise ValueError("window must be positive")
        return self

    @property
    def source(self) -> str:
        if self.check is not None:
            return f"check {self.check!r}"
        assert self.probe is not None
        return f"{self.probe.module.prober} probe of {self.probe.target}"


class SeismoExtension(_Model):
    name: Literal["seismo"] = "seismo"
    guardrails: list[Guardrail] = Field(default_factory=list)
    max_duration: Duration | None = None

    @model_validator(mode="after")
    def _unique_names(self) -> SeismoExtension:
        names = [g.name for g in self.guardrails]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"guardrail names must be unique: {', '.join(dupes)}")
        return self


def parse_extension(experiment: Mapping[str, Any]) -> tuple[SeismoExtension, list[Problem]]:
    """The experiment's ``seismo`` extension (defaults when absent), and its problems."""
    extensions = experiment.get("extensions")
    if not isinstance(extensions, list):
        return SeismoExtension(), []
    for i, ext in enumerate(extensions):
        if isinstance(ext, Mapping) and ext.get("name") == "seismo":
            try:
                return SeismoExtension.model_validate(dict(ext)), []
            except ValidationError as exc:
                problems = [
                    Problem(
                        f"extensions[{i}] (seismo)." + ".".join(str(p) for p in err["loc"]),
                        err["msg"],
                        "seismo-extension",
                    )
                    for err in exc.errors()
                ]
                return SeismoExtension(), problems
    return SeismoExtension(), []
