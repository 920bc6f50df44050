"""The ``faults:`` section of the agent config: the blast-radius policy.

    faults:
      allowed_targets: ["netns:staging-*", "cgroup:/kubepods/besteffort"]
      max_concurrent: 5
      max_ttl: 30m
      default_ttl: 5m
      heartbeat_timeout: 30s

Nothing is allowed by default: with no ``allowed_targets`` every fault is refused.
"""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from probes.modules import Duration

__all__ = ["FaultSettings"]

_TARGET_PATTERN = re.compile(r"^(netns:[A-Za-z0-9_.*-]{1,64}|cgroup:/[A-Za-z0-9_./*-]{0,255})$")


class FaultSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    allowed_targets: list[str] = Field(default_factory=list)
    max_concurrent: int = Field(default=5, ge=1, le=100)
    max_ttl: Duration = 1800.0
    default_ttl: Duration = 300.0
    heartbeat_timeout: Duration = 30.0

    @field_validator("allowed_targets")
    @classmethod
    def _patterns(cls, values: list[str]) -> list[str]:
        for value in values:
            if not _TARGET_PATTERN.match(value):
                raise ValueError(
                    f"allowed target {value!r} must be netns:NAME or cgroup:/PATH "
                    "(NAME and PATH may use * as a wildcard)"
                )
        return values

    @model_validator(mode="after")
    def _ttls(self) -> FaultSettings:
        if not 0 < self.default_ttl <= self.max_ttl:
            raise ValueError(
                f"default_ttl {self.default_ttl:g}s must be > 0 and <= max_ttl {self.max_ttl:g}s"
            )
        if self.heartbeat_timeout < 1:
            raise ValueError("heartbeat_timeout must be at least 1s")
        return self
