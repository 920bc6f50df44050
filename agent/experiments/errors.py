"""Errors of the experiment runner. The tree::

    ExperimentError
     ├── ExperimentInvalid   the experiment (or its run options) is not acceptable: exit 2, no run
     └── RunnerFailed        the runner process could not be started or supervised

Expected outcomes of a run (deviated, interrupted, aborted) are never exceptions: they are
journal statuses and exit codes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["ExperimentError", "ExperimentInvalid", "Problem", "RunnerFailed"]


@dataclass(frozen=True, slots=True)
class Problem:
    """One reason an experiment is refused: where it is, what is wrong and which rule says so.

    ``where`` names the activity (``method[1] action 'degrade'``) or the line of a YAML error.
    """

    where: str
    message: str
    rule: str

    def render(self, source: str) -> str:
        prefix = f"{source}: " if source else ""
        where = f"{self.where}: " if self.where else ""
        return f"{prefix}{where}{self.message} [{self.rule}]"


class ExperimentError(Exception):
    """Base class of the runner's errors."""


class ExperimentInvalid(ExperimentError):
    """The experiment is refused before anything runs. Carries every problem found."""

    def __init__(self, problems: Sequence[Problem], source: str = "") -> None:
        self.problems = tuple(problems)
        self.source = source
        super().__init__("\n".join(p.render(source) for p in self.problems))


class RunnerFailed(ExperimentError):
    """The runner process could not be started or supervised."""
