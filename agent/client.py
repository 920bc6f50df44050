"""A small synchronous client for the agent's JSON API (CLI commands and Chaos Toolkit
providers, which chaoslib calls synchronously).

The agent URL comes from the argument, else ``$SEISMO_AGENT_URL``, else the local default; the
token from the argument, else ``$SEISMO_TOKEN_FILE`` (a file) or ``$SEISMO_TOKEN``.

    client = AgentClient.from_env()
    status, doc = client.call("GET", "/api/v1/faults")
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["DEFAULT_AGENT_URL", "AgentClient", "AgentError", "resolve_agent_url"]

DEFAULT_AGENT_URL = "http://127.0.0.1:9115"


def resolve_agent_url(explicit: str | None, env: Mapping[str, str] | None = None) -> str:
    """The agent URL: the explicit one, else ``$SEISMO_AGENT_URL``, else the local default."""
    environ = os.environ if env is None else env
    return (explicit or environ.get("SEISMO_AGENT_URL") or DEFAULT_AGENT_URL).rstrip("/")


class AgentError(Exception):
    """The agent could not be reached, or answered with an error."""

    def __init__(self, status: int, problems: list[str]) -> None:
        super().__init__(
            f"agent answered {status}: " + "; ".join(problems) if status else "; ".join(problems)
        )
        self.status = status
        self.problems = problems


@dataclass(frozen=True, slots=True)
class AgentClient:
    url: str
    token: str | None = None
    timeout: float = 30.0

    @classmethod
    def from_env(
        cls,
        url: str | None = None,
        token: str | None = None,
        token_file: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> AgentClient:
        environ = os.environ if env is None else env
        base = resolve_agent_url(url, environ)
        if not base.startswith(("http://", "https://")):
            raise AgentError(0, [f"agent URL {base!r} must start with http:// or https://"])
        file = token_file or environ.get("SEISMO_TOKEN_FILE")
        if token is None and file:
            try:
                token = Path(file).read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise AgentError(0, [f"token file {file}: {exc.strerror or exc}"]) from None
        return cls(base, token or environ.get("SEISMO_TOKEN") or None)

    def call(self, method: str, path: str, body: Any = None) -> dict[str, Any]:
        """Send a JSON request; return the JSON answer. Raises AgentError on any failure."""
        data = None if body is None else json.dumps(body).encode()
        headers = {"Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        # the scheme was checked in from_env (http/https only)
        req = urllib.request.Request(  # noqa: S310
            self.url + path, data=data, headers=headers, method=method
        )
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:  # noqa: S310
                return _json(resp.read())
        except urllib.error.HTTPError as exc:
            payload = exc.read()
            try:
                problems = _json(payload).get("problems") or [payload.decode(errors="replace")]
            except ValueError:
                problems = [payload.decode(errors="replace").strip() or exc.reason]
            raise AgentError(exc.code, [str(p) for p in problems]) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise AgentError(0, [f"cannot reach the agent at {self.url}: {reason}"]) from None


def _json(raw: bytes) -> dict[str, Any]:
    doc = json.loads(raw.decode() or "{}")
    if not isinstance(doc, dict):
        raise ValueError("the agent's answer is not a JSON object")
    return doc
