"""``seismo faults``: list, apply and clear faults on an agent; clear them locally without one.

seismo faults list [--agent URL]
seismo faults apply KIND TARGET [-p key=value]... [--ttl 60s] [--agent URL] [--token-file F]
seismo faults clear [ID] [--agent URL] [--token-file F]          the kill switch
seismo faults clear --local [--data-dir DIR] [--config FILE]     the agent is down: revert
                                                                 from its ledger directly
seismo faults capabilities                                       what this node can apply
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import yaml

from agent.client import AgentClient, AgentError

__all__ = ["register"]

EXIT_OK, EXIT_FAILED, EXIT_INVALID = 0, 1, 2


def _client(args: argparse.Namespace) -> AgentClient:
    return AgentClient.from_env(args.agent, token_file=args.token_file)


def _print_faults(faults: list[dict[str, Any]]) -> None:
    if not faults:
        print("no active faults")
        return
    for f in faults:
        mode = f" mode={f['facts']['mode']}" if f.get("facts", {}).get("mode") else ""
        print(
            f"{f['id']}  {f['kind']}  {f['target']}  owner={f['owner']}  "
            f"state={f['state']}{mode}  params={json.dumps(f['params'], sort_keys=True)}"
        )


def cmd_list(args: argparse.Namespace) -> int:
    doc = _client(args).call("GET", "/api/v1/faults")
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        _print_faults(doc["faults"])
        missing = doc["capabilities"]["missing"]
        if missing:
            print("not available on this node: " + ", ".join(sorted(missing)))
    return EXIT_OK


def _params(items: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"-p {item!r}: expected key=value")
        out[key] = yaml.safe_load(value) if value else ""
    return out


def cmd_apply(args: argparse.Namespace) -> int:
    try:
        params = _params(args.param)
    except ValueError as exc:
        print(f"seismo faults apply: {exc}", file=sys.stderr)
        return EXIT_INVALID
    body = {"kind": args.kind, "target": args.target, "params": params}
    if args.ttl:
        body["ttl"] = args.ttl
    doc = _client(args).call("POST", "/api/v1/faults", body)
    _print_faults([doc])
    return EXIT_OK


def cmd_clear(args: argparse.Namespace) -> int:
    if args.local:
        return asyncio.run(_clear_local(args))
    client = _client(args)
    if args.id:
        doc = client.call("DELETE", f"/api/v1/faults/{args.id}")
        print(
            f"reverted {doc['id']}"
            if doc["state"] == "reverted"
            else f"{doc['id']}: {doc['state']}"
        )
        return EXIT_OK if doc["state"] == "reverted" else EXIT_FAILED
    doc = client.call("DELETE", "/api/v1/faults")
    for f in doc["reverted"]:
        print(f"reverted {f['id']}  {f['kind']}  {f['target']}")
    print(f"{len(doc['reverted'])} faults reverted")
    return EXIT_OK


async def _clear_local(args: argparse.Namespace) -> int:
    from agent.config import ConfigError, load_config
    from agent.faults.engine import FaultEngine
    from agent.faults.kinds import all_kinds
    from agent.faults.ledger import Ledger, ledger_path
    from agent.faults.preflight import Capabilities
    from agent.faults.settings import FaultSettings
    from agent.faults.targets import TargetResolver

    settings = FaultSettings()
    if args.config is not None:
        try:
            settings = load_config(args.config)[0].faults
        except ConfigError as exc:
            for line in exc.errors:
                print(line, file=sys.stderr)
            return EXIT_INVALID
    engine = FaultEngine(
        Ledger(ledger_path(args.data_dir)),
        TargetResolver(settings.allowed_targets),
        settings,
        Capabilities(frozenset()),
        all_kinds(),
    )
    reverted = await engine.reconcile()
    for entry in reverted:
        print(f"reverted {entry.id}  {entry.kind}  {entry.target}  ({entry.state})")
    left = engine.active()
    for entry in left:
        print(f"NOT reverted {entry.id}  {entry.kind}  {entry.target}", file=sys.stderr)
    print(f"{len(reverted) - len(left)} faults reverted from {ledger_path(args.data_dir)}")
    return EXIT_FAILED if left else EXIT_OK


def cmd_capabilities(args: argparse.Namespace) -> int:
    from agent.faults.preflight import ALL_CAPABILITIES, detect

    caps = asyncio.run(detect())
    for name in ALL_CAPABILITIES:
        print(
            f"{'yes' if caps.has(name) else 'no ':<4} {name}"
            + (f"  ({caps.details[name]})" if name in caps.details else "")
        )
    return EXIT_OK


def _guard(func: Any) -> Any:
    def run(args: argparse.Namespace) -> int:
        try:
            status: int = func(args)
        except AgentError as exc:
            prefix = f"agent answered {exc.status}: " if exc.status else ""
            for problem in exc.problems:
                print(f"seismo faults: {prefix}{problem}", file=sys.stderr)
            return EXIT_INVALID if exc.status == 400 else EXIT_FAILED
        return status

    return run


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from agent.cli import default_data_dir

    faults = sub.add_parser("faults", help="list, apply and clear node faults")
    fsub = faults.add_subparsers(dest="faults_command", required=True, metavar="ACTION")

    def agent_args(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--agent",
            default=None,
            help="agent URL (default $SEISMO_AGENT_URL or http://127.0.0.1:9115)",
        )
        p.add_argument(
            "--token-file", default=None, help="bearer token file (default $SEISMO_TOKEN_FILE)"
        )

    p = fsub.add_parser("list", help="active faults on an agent")
    agent_args(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_guard(cmd_list))

    p = fsub.add_parser("apply", help="apply a fault through an agent")
    p.add_argument("kind")
    p.add_argument("target", help="netns:NAME or cgroup:/PATH (must be allowed by the agent)")
    p.add_argument("-p", "--param", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--ttl", default=None, help="e.g. 60s (default: the agent's faults.default_ttl)")
    agent_args(p)
    p.set_defaults(func=_guard(cmd_apply))

    p = fsub.add_parser("clear", help="revert faults now (the kill switch)")
    p.add_argument("id", nargs="?", default=None, help="one fault id (default: all)")
    p.add_argument(
        "--local",
        action="store_true",
        help="no agent: revert everything in the ledger of --data-dir directly",
    )
    p.add_argument("--data-dir", type=Path, default=default_data_dir())
    p.add_argument(
        "--config",
        type=Path,
        default=None,
        help="with --local: the agent config, to sweep orphans in allowed targets",
    )
    agent_args(p)
    p.set_defaults(func=_guard(cmd_clear))

    p = fsub.add_parser("capabilities", help="what faults this node can apply (preflight)")
    p.set_defaults(func=cmd_capabilities)
