"""``seismo submit``: run an experiment on an agent and follow it from here.

    seismo submit EXP --agent URL --token-file F [--var KEY[:TYPE]=VALUE]... [--quiet]

``EXP`` is a local experiment file (sent to the agent), or else the name of an experiment
in the agent's ``experiments.dir``. The run's events are polled from
``GET /api/v1/runs/{id}/events`` and printed as ``seismo run`` prints them; the final state
comes from ``GET /api/v1/runs/{id}``. Ctrl-C asks the agent to abort the run, and the
command goes on following it until the rollbacks are done (a second Ctrl-C stops following;
the agent still finishes the abort).

Exit codes: the run's (0 completed, 1 deviated or failed, 3 interrupted or aborted); 2 when
the agent refused the submission (invalid experiment, no or wrong token, a run already
active) or could not be reached.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any, TextIO

import httpx

from agent.client import AgentClient, AgentError
from agent.experiments.journal import EXIT_INTERRUPTED, EXIT_INVALID, seismo_extension
from agent.experiments.progress import ProgressPrinter

__all__ = ["cmd_submit", "register"]

POLL_INTERVAL = 0.5
REQUEST_TIMEOUT = 10.0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    s = sub.add_parser("submit", help="run an experiment on an agent and follow it")
    s.add_argument("experiment", help="an experiment file, or a name in the agent's dir")
    s.add_argument(
        "--agent",
        default=None,
        metavar="URL",
        help="the agent (default: $SEISMO_AGENT_URL or http://127.0.0.1:9115)",
    )
    s.add_argument(
        "--token-file",
        type=Path,
        default=None,
        metavar="FILE",
        help="the API bearer token (default: $SEISMO_TOKEN_FILE, or $SEISMO_TOKEN itself)",
    )
    s.add_argument("--var", action="append", default=[], metavar="KEY[:TYPE]=VALUE")
    s.add_argument("--quiet", action="store_true", help="print only the verdict")
    s.set_defaults(func=cmd_submit)


class _Refused(Exception):
    """The submission did not start a run (exit 2)."""


def _body(args: argparse.Namespace) -> dict[str, Any]:
    from chaoslib import convert_vars

    try:
        config_vars = dict(convert_vars(args.var))
    except ValueError as exc:
        raise _Refused("--var needs KEY[:TYPE]=VALUE (TYPE: str, int, float, bytes)") from exc
    path = Path(args.experiment)
    if path.is_file():
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise _Refused(f"{path}: cannot read: {exc}") from exc
        return {"experiment": text, "vars": config_vars, "source": str(path)}
    return {"name": args.experiment, "vars": config_vars}


def _refusal(resp: httpx.Response) -> str:
    try:
        doc = resp.json()
    except ValueError:
        return f"the agent answered {resp.status_code}: {resp.text.strip()}"
    lines = [f"the agent answered {resp.status_code}: {doc.get('error', '')}"]
    for p in doc.get("problems") or []:
        where = f"{p.get('where')}: " if p.get("where") else ""
        lines.append(f"  {where}{p.get('message')} [{p.get('rule')}]")
    if doc.get("active_run_id"):
        lines.append(f"  active run: {doc['active_run_id']}")
    return "\n".join(lines)


class _Follower:
    def __init__(self, client: httpx.Client, run_id: str, out: TextIO, quiet: bool) -> None:
        self.client = client
        self.run_id = run_id
        self.printer = ProgressPrinter(out)
        self.out = out
        self.quiet = quiet
        self.seq = -1

    def events(self) -> None:
        """Print the events that are new since the last call."""
        if self.quiet:
            return
        resp = self.client.get(
            f"/api/v1/runs/{self.run_id}/events", params={"after": str(self.seq)}
        )
        resp.raise_for_status()
        for event in resp.json().get("events", []):
            self.seq = max(self.seq, int(event.get("seq", self.seq)))
            self.printer(event)

    def poll(self) -> dict[str, Any] | None:
        """Print new events; return the run document once it has finished."""
        self.events()
        resp = self.client.get(f"/api/v1/runs/{self.run_id}")
        resp.raise_for_status()
        doc: dict[str, Any] = resp.json()
        return None if doc.get("live") else doc

    def abort(self) -> None:
        resp = self.client.post(f"/api/v1/runs/{self.run_id}/abort")
        if resp.status_code == 202:
            self.out.write("seismo: abort requested; waiting for the rollbacks to finish\n")
        elif resp.status_code != 409:  # 409: it has just finished
            self.out.write(f"seismo: {_refusal(resp)}\n")
        self.out.flush()

    def verdict(self, doc: dict[str, Any]) -> int:
        journal = doc.get("journal") or {}
        ext = seismo_extension(journal) or {}
        raw = doc.get("exit_code")
        code = int(raw) if isinstance(raw, int) else EXIT_INTERRUPTED
        line = self.printer.render(
            {
                "event": "outcome",
                "exit_code": code,
                "status": doc.get("status"),
                "deviated": doc.get("deviated"),
                "rollbacks": ext.get("rollbacks"),
                "interruption": ext.get("interruption"),
                "journal_file": f"{self.client.base_url}/api/v1/runs/{self.run_id}",
            }
        )
        if line:
            self.out.write(line + "\n")
            self.out.flush()
        return code


def cmd_submit(args: argparse.Namespace) -> int:
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per poll otherwise
    try:
        agent = AgentClient.from_env(
            args.agent, token_file=str(args.token_file) if args.token_file else None
        )
        body = _body(args)
    except AgentError as exc:
        print(f"seismo submit: {'; '.join(exc.problems)}", file=sys.stderr)
        return EXIT_INVALID
    except _Refused as exc:
        print(f"seismo submit: {exc}", file=sys.stderr)
        return EXIT_INVALID
    url, token = agent.url, agent.token
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    with httpx.Client(base_url=url, headers=headers, timeout=REQUEST_TIMEOUT) as client:
        try:
            resp = client.post("/api/v1/runs", content=json.dumps(body))
        except httpx.HTTPError as exc:
            print(f"seismo submit: cannot reach the agent at {url}: {exc}", file=sys.stderr)
            return EXIT_INVALID
        if resp.status_code != 202:
            print(f"seismo submit: {_refusal(resp)}", file=sys.stderr)
            return EXIT_INVALID
        run_id = str(resp.json()["run_id"])
        print(f"seismo: run {run_id} submitted to {url}", flush=True)
        return _follow(_Follower(client, run_id, sys.stdout, args.quiet))


def _follow(follower: _Follower) -> int:
    aborting = False
    while True:
        try:
            try:
                doc = follower.poll()
            except httpx.HTTPError as exc:
                print(f"seismo submit: lost the agent: {exc}; retrying", file=sys.stderr)
                doc = None
            if doc is not None:
                follower.events()  # those written between the two requests
                return follower.verdict(doc)
            time.sleep(POLL_INTERVAL)
        except KeyboardInterrupt:
            if aborting:
                print(
                    f"seismo submit: stopped following; the agent finishes the abort of "
                    f"run {follower.run_id}",
                    file=sys.stderr,
                )
                return EXIT_INTERRUPTED
            aborting = True
            try:
                follower.abort()
            except httpx.HTTPError as exc:
                print(f"seismo submit: cannot send the abort: {exc}", file=sys.stderr)
                return EXIT_INTERRUPTED
