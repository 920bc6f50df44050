"""Validate an experiment: seismo's policy first, then the seismo extension, then chaoslib.

The order matters: chaoslib's validation imports python provider modules, so a module that
the policy refuses must never reach it.

    experiment = validate_file(Path("exp.yaml"), Policy())   # raises ExperimentInvalid
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from agent.experiments.errors import ExperimentInvalid, Problem
from agent.experiments.extension import parse_extension
from agent.experiments.loader import load_experiment
from agent.experiments.policy import Policy, check_policy

__all__ = ["validate_experiment", "validate_file"]


def validate_file(path: Path, policy: Policy) -> dict[str, Any]:
    """Load and validate the experiment at ``path``; return it."""
    experiment = load_experiment(path)
    validate_experiment(experiment, policy, source=str(path))
    return experiment


def validate_experiment(experiment: Mapping[str, Any], policy: Policy, source: str = "") -> None:
    """Raise :class:`ExperimentInvalid` with every problem found, or return."""
    problems = check_policy(experiment, policy)
    _, ext_problems = parse_extension(experiment)
    problems.extend(ext_problems)
    if problems:
        raise ExperimentInvalid(problems, source)
    _chaoslib_validate(experiment, source)


def _chaoslib_validate(experiment: Mapping[str, Any], source: str) -> None:
    from chaoslib.caching import clear_cache
    from chaoslib.exceptions import ChaosException
    from chaoslib.experiment import ensure_experiment_is_valid

    # chaoslib logs "Validating..." at INFO on its own logger; the CLI prints our verdict.
    logging.getLogger("chaostoolkit").setLevel(logging.WARNING)
    try:
        # a deep copy: chaoslib's validation may mutate (tolerance probes, caches)
        ensure_experiment_is_valid(copy.deepcopy(dict(experiment)))
    except ChaosException as exc:
        raise ExperimentInvalid([Problem("", str(exc), "chaostoolkit-schema")], source) from exc
    except (AttributeError, TypeError, KeyError) as exc:
        # chaoslib assumes well-typed input and crashes on, e.g., a string where a list belongs
        raise ExperimentInvalid(
            [
                Problem(
                    "", f"malformed experiment ({type(exc).__name__}: {exc})", "chaostoolkit-schema"
                )
            ],
            source,
        ) from exc
    finally:
        clear_cache()
