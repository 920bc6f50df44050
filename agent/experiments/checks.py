"""Live results of the agent's continuous checks, as served by the agent.

``GET {agent_url}/api/v1/checks/{name}/summary?window=30s`` returns::

    {"check": "homepage", "window_seconds": 30.0, "count": 29, "success_ratio": 0.97,
     "latency_seconds": {"p50": 0.01, "p95": 0.04, "p99": 0.05}, "last_reason": "http_status"}

    summary = CheckSummary.from_json(payload)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

__all__ = ["CheckSummary", "summary_url"]


def summary_url(agent_url: str, check: str, window_seconds: float) -> str:
    return (
        f"{agent_url.rstrip('/')}/api/v1/checks/{quote(check, safe='')}/summary"
        f"?window={window_seconds:g}s"
    )


def _float_or_none(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{value!r} is not a number")
    return float(value)


@dataclass(frozen=True, slots=True)
class CheckSummary:
    """A check's results over a window. Ratios and quantiles are None without samples."""

    check: str
    window_seconds: float
    count: int
    success_ratio: float | None
    p50_seconds: float | None
    p95_seconds: float | None
    p99_seconds: float | None
    last_reason: str | None

    @classmethod
    def from_json(cls, data: Any) -> CheckSummary:
        """Parse the agent's JSON; raise ``ValueError`` naming the bad field."""
        if not isinstance(data, Mapping):
            raise ValueError("the check summary must be a JSON object")
        try:
            latency = data.get("latency_seconds") or {}
            if not isinstance(latency, Mapping):
                raise ValueError("latency_seconds must be an object")
            count = data["count"]
            if isinstance(count, bool) or not isinstance(count, int):
                raise ValueError("count must be an integer")
            last_reason = data.get("last_reason")
            return cls(
                check=str(data["check"]),
                window_seconds=float(data["window_seconds"]),
                count=count,
                success_ratio=_float_or_none(data.get("success_ratio")),
                p50_seconds=_float_or_none(latency.get("p50")),
                p95_seconds=_float_or_none(latency.get("p95")),
                p99_seconds=_float_or_none(latency.get("p99")),
                last_reason=None if last_reason is None else str(last_reason),
            )
        except KeyError as exc:
            raise ValueError(f"the check summary lacks {exc.args[0]!r}") from exc

    def to_json(self) -> dict[str, Any]:
        return {
            "check": self.check,
            "window_seconds": self.window_seconds,
            "count": self.count,
            "success_ratio": self.success_ratio,
            "latency_seconds": {
                "p50": self.p50_seconds,
                "p95": self.p95_seconds,
                "p99": self.p99_seconds,
            },
            "last_reason": self.last_reason,
        }
