"""dns fault kinds (being written)."""

from __future__ import annotations

from agent.faults.kinds.base import FaultKind

KINDS: list[FaultKind] = []
