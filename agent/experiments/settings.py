"""The ``experiments:`` section of the agent config (embedded by agent.config.Config).

    experiments:
      dir: /etc/seismo/experiments       # submit by name, and schedules by name
      allowed_modules: [agent.experiments.providers, chaosk8s, chaoslib]
      allow_process: false               # the process provider (argv-list form only)
      max_runs: 200                      # journal retention: count...
      max_age: 30d                       # ...and age
      rollback_grace: 2m                 # after an abort, how long rollbacks may take
      max_duration: 1h                   # the longest any run may take
      guardrails: [...]                  # apply to every run (the experiment extension's schema)
      schedules:
        - name: weekday-pod-kill
          experiment: pod-kill           # a name in `dir`, or a path (relative: to the config)
          cron: "0 10 * * mon-fri"       # five fields, UTC (agent.experiments.cron)
          concurrency_policy: forbid     # forbid: skip while a run is active; replace: abort it
          vars: {namespace: staging}
          enabled: true

agent.config embeds this model as-is, so its validation errors get ``file:line`` like every
other key. Defaults live here.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from agent.experiments.cron import CronExpression
from agent.experiments.extension import Guardrail
from agent.experiments.policy import DEFAULT_ALLOWED_MODULES, Policy
from probes.modules import Duration

__all__ = ["ExperimentSettings", "ScheduleSettings"]

_SCHEDULE_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,63}$")
_MODULE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ScheduleSettings(_Model):
    """An experiment that the agent runs on a cron schedule."""

    name: str
    experiment: str = Field(min_length=1)
    cron: str
    concurrency_policy: Literal["forbid", "replace"] = "forbid"
    vars: dict[str, Any] = Field(default_factory=dict)
    enabled: bool = True

    @field_validator("name")
    @classmethod
    def _name(cls, name: str) -> str:
        if not _SCHEDULE_NAME.match(name):
            raise ValueError(
                f"schedule name {name!r} must start with a letter or digit and use only "
                "letters, digits and _.- (at most 64 characters)"
            )
        return name

    @field_validator("cron")
    @classmethod
    def _cron(cls, cron: str) -> str:
        CronExpression.parse(cron)  # raises ValueError with the reason
        return cron

    def expression(self) -> CronExpression:
        return CronExpression.parse(self.cron)


class ExperimentSettings(_Model):
    dir: str | None = None
    allowed_modules: tuple[str, ...] = DEFAULT_ALLOWED_MODULES
    allow_process: bool = False
    max_runs: int = Field(default=200, ge=1, le=100_000)
    max_age: Duration = 30 * 86400.0
    rollback_grace: Duration = 120.0
    max_duration: Duration | None = 3600.0
    guardrails: list[Guardrail] = Field(default_factory=list)
    schedules: list[ScheduleSettings] = Field(default_factory=list)

    @field_validator("allowed_modules")
    @classmethod
    def _modules(cls, modules: tuple[str, ...]) -> tuple[str, ...]:
        for m in modules:
            if not _MODULE_NAME.match(m):
                raise ValueError(f"{m!r} is not a python module name (e.g. chaosk8s.pod)")
        return modules

    @model_validator(mode="after")
    def _consistent(self) -> ExperimentSettings:
        for field, value in (("max_age", self.max_age), ("rollback_grace", self.rollback_grace)):
            if value <= 0:
                raise ValueError(f"{field} must be greater than 0")
        if self.max_duration is not None and self.max_duration <= 0:
            raise ValueError("max_duration must be greater than 0 (or null for no limit)")
        names = [g.name for g in self.guardrails]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"guardrail names must be unique: {', '.join(dupes)}")
        seen: set[str] = set()
        for s in self.schedules:
            if s.name in seen:
                raise ValueError(f"duplicate schedule name {s.name!r}")
            seen.add(s.name)
            if self.dir is None and "/" not in s.experiment:
                raise ValueError(
                    f"schedule {s.name!r}: experiment {s.experiment!r} is a name, but "
                    "experiments.dir is not set (set it, or give a path)"
                )
        return self

    def policy(self) -> Policy:
        return Policy(allowed_modules=self.allowed_modules, allow_process=self.allow_process)
