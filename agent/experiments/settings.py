"""The ``experiments:`` section of the agent config (embedded by agent.config.Config).

Extend this model for experiment settings (allowlists, schedules, limits); agent.config
embeds it as-is, so its validation errors get ``file:line`` like every other key.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class ExperimentSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    dir: str | None = None
