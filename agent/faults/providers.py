"""Chaos Toolkit actions for node faults, applied through the agent (which owns the ledger).

    method:
      - type: action
        name: add-latency
        provider:
          type: python
          module: agent.faults.providers
          func: apply_fault
          arguments:
            kind: network_latency
            target: netns:checkout
            params: {delay_ms: 300, port: 8080}
            ttl: 5m
    rollbacks:
      - type: action
        name: remove-faults
        provider: {type: python, module: agent.faults.providers, func: revert_run_faults}

Under ``seismo run``/``seismo submit`` the runner sets ``SEISMO_RUN_ID``: faults are owned by
``run:<id>``, the runner sends heartbeats, and the agent reverts them if the run dies (dead
man's switch), on top of the TTL. Under plain ``chaos run`` they are owned by ``api`` and
bounded by their TTL. The agent URL and token come from the arguments or from
``SEISMO_AGENT_URL`` and ``SEISMO_TOKEN_FILE`` / ``SEISMO_TOKEN``.
"""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import quote

from agent.client import AgentClient

__all__ = ["active_faults", "apply_fault", "revert_fault", "revert_run_faults", "run_owner"]


def run_owner() -> str:
    """The owner of faults applied from this process: ``run:<id>`` under seismo's runner."""
    run_id = os.environ.get("SEISMO_RUN_ID")
    return f"run:{run_id}" if run_id else "api"


def apply_fault(
    kind: str,
    target: str,
    params: dict[str, Any] | None = None,
    ttl: str | float = "5m",
    agent_url: str | None = None,
    token_file: str | None = None,
) -> dict[str, Any]:
    """Apply one fault on the agent's node. Returns the fault (its ``id`` is for the journal)."""
    client = AgentClient.from_env(agent_url, token_file=token_file)
    return client.call(
        "POST",
        "/api/v1/faults",
        {
            "kind": kind,
            "target": target,
            "params": params or {},
            "ttl": ttl,
            "owner": run_owner(),
        },
    )


def revert_fault(
    fault_id: str, agent_url: str | None = None, token_file: str | None = None
) -> dict[str, Any]:
    """Revert one fault by id (idempotent)."""
    client = AgentClient.from_env(agent_url, token_file=token_file)
    return client.call("DELETE", f"/api/v1/faults/{quote(fault_id, safe='')}")


def revert_run_faults(
    agent_url: str | None = None, token_file: str | None = None
) -> dict[str, Any]:
    """Revert every fault this run applied (the rollback that needs no ids)."""
    owner = run_owner()
    client = AgentClient.from_env(agent_url, token_file=token_file)
    if owner == "api":
        raise RuntimeError(
            "revert_run_faults needs SEISMO_RUN_ID (run under seismo run/submit); "
            "use revert_fault with an id instead"
        )
    return client.call("DELETE", f"/api/v1/faults?owner={quote(owner, safe='')}")


def active_faults(agent_url: str | None = None) -> list[dict[str, Any]]:
    """The faults active on the agent's node (a probe)."""
    faults = AgentClient.from_env(agent_url).call("GET", "/api/v1/faults")["faults"]
    return list(faults)
