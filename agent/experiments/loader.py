"""Read a Chaos Toolkit experiment (YAML or JSON) into a dict, with line-aware errors.

experiment = load_experiment(Path("experiments/http-degrade.yaml"))
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from agent.experiments.errors import ExperimentInvalid, Problem

__all__ = ["load_experiment", "parse_experiment"]


def load_experiment(path: Path) -> dict[str, Any]:
    """Read and parse the experiment file at ``path``; raise :class:`ExperimentInvalid`."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ExperimentInvalid(
            [Problem("", f"cannot read the experiment: {exc.strerror}", "readable")], str(path)
        ) from exc
    return parse_experiment(text, str(path))


def parse_experiment(text: str, source: str = "") -> dict[str, Any]:
    """Parse experiment text: JSON when it starts with ``{``, YAML otherwise."""
    data: Any
    if text.lstrip().startswith("{"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ExperimentInvalid(
                [Problem(f"line {exc.lineno}", f"JSON syntax error: {exc.msg}", "syntax")], source
            ) from exc
    else:
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f"line {mark.line + 1}" if mark is not None else ""
            problem = getattr(exc, "problem", None) or str(exc)
            raise ExperimentInvalid(
                [Problem(where, f"YAML syntax error: {problem}", "syntax")], source
            ) from exc
    if not isinstance(data, dict):
        raise ExperimentInvalid(
            [
                Problem(
                    "", "an experiment must be a mapping (title, description, method...)", "schema"
                )
            ],
            source,
        )
    return data
