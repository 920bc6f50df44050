"""Fault kinds. Each module defines one or more :class:`FaultKind` objects; ``KINDS`` maps
their names to them. A kind turns validated parameters and a resolved target into a
:class:`~agent.faults.steps.Plan` (apply steps and their exact inverse); it never touches
the node itself.
"""

from __future__ import annotations

from collections.abc import Mapping

from agent.faults.kinds.base import FaultKind, Invalid, Refused

__all__ = ["FaultKind", "Invalid", "Refused", "all_kinds"]


def all_kinds() -> Mapping[str, FaultKind]:
    """Every fault kind seismo knows, by name."""
    kinds: list[FaultKind] = []
    for module in _modules():
        kinds.extend(module.KINDS)
    return {k.name: k for k in kinds}


def _modules() -> list:  # type: ignore[type-arg]
    # imported here so a kind module's heavy imports load only when faults are used
    from agent.faults.kinds import dns, http, latency, network, process, stress

    return [network, latency, dns, http, process, stress]
