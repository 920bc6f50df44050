"""The ``seismo`` command line. One ``asyncio.run`` per command lives here.

    seismo agent [--config FILE] [--listen HOST:PORT] [--data-dir DIR]
    seismo check-config FILE
    seismo probe MODULE|KIND TARGET [--config FILE] [--json] [--timeout S]

Each subcommand sets ``func`` on its parser; ``func(args) -> int`` is the exit status.
Exit status 2 means bad input (config, arguments), with ``file:line`` errors on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from agent import __version__
from agent.config import Config, ConfigError, load_config, parse_config
from agent.experiments import commands as experiment_commands
from agent.faults import commands as fault_commands

__all__ = ["build_parser", "default_data_dir", "main"]

EXIT_OK, EXIT_FAILED, EXIT_INVALID = 0, 1, 2


def default_data_dir() -> Path:
    return Path(os.environ.get("SEISMO_DATA_DIR", "seismo-data"))


def _listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise argparse.ArgumentTypeError(
            f"--listen {text!r}: expected HOST:PORT, e.g. 0.0.0.0:9115"
        )
    return host.strip("[]"), int(port)


def _use_uvloop() -> None:
    """uvloop when installed (``pip install seismo[fast]``); asyncio's loop otherwise."""
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def cmd_agent(args: argparse.Namespace) -> int:
    from agent.daemon import Agent

    agent = Agent(
        config_path=args.config,
        data_dir=args.data_dir,
        listen=args.listen,
        announce=lambda line: print(line, flush=True),
    )
    _use_uvloop()
    try:
        asyncio.run(agent.run(handle_signals=True))
    except ConfigError as exc:
        for line in exc.errors:
            print(line, file=sys.stderr)
        return EXIT_INVALID
    except OSError as exc:
        print(f"seismo agent: cannot start: {exc}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def cmd_check_config(args: argparse.Namespace) -> int:
    try:
        config, warnings = load_config(args.file)
    except ConfigError as exc:
        for line in exc.errors:
            print(line, file=sys.stderr)
        return EXIT_INVALID
    for w in warnings:
        print(w, file=sys.stderr)
    print(f"{args.file}: OK ({len(config.modules)} modules, {len(config.checks)} checks)")
    return EXIT_OK


def _probe_config(args: argparse.Namespace) -> Config:
    if args.config is not None:
        return load_config(args.config)[0]
    from agent.daemon import embedded_config_text

    # the embedded default's modules, with placeholder demo values
    env = {
        **os.environ,
        "DEMO_HTTP_PORT": "18080",
        "DEMO_HTTPS_PORT": "18443",
        "DEMO_DNS_PORT": "15353",
        "DEMO_CA_FILE": str(default_data_dir() / "demo" / "ca.pem"),
    }
    return parse_config(embedded_config_text(), "<embedded default>", env)[0]


def cmd_probe(args: argparse.Namespace) -> int:
    from agent.console import format_result
    from probes import Module, run_probe
    from probes.modules import SUPPORTED_PROBERS

    try:
        config = _probe_config(args)
    except ConfigError as exc:
        for line in exc.errors:
            print(line, file=sys.stderr)
        return EXIT_INVALID
    module = config.modules.get(args.module)
    if module is None:
        if args.module not in SUPPORTED_PROBERS:
            known = ", ".join(sorted(config.modules))
            print(
                f"seismo probe: {args.module!r} is neither a module ({known}) nor a probe kind "
                f"({', '.join(SUPPORTED_PROBERS)})",
                file=sys.stderr,
            )
            return EXIT_INVALID
        raw: dict[str, object] = {"prober": args.module}
        if args.module == "dns":
            raw["dns"] = {"query_name": args.query_name, "query_type": args.query_type}
        try:
            module = Module.model_validate(raw)
        except ValueError as exc:
            print(f"seismo probe: {exc}", file=sys.stderr)
            return EXIT_INVALID
    timeout = args.timeout or module.timeout or 10.0
    _use_uvloop()
    result = asyncio.run(run_probe(module, args.target, timeout))
    if args.json:
        print(json.dumps(result.to_json(), indent=2, default=str))
    else:
        print(
            format_result(result, module_name=args.module if args.module in config.modules else "")
        )
    return EXIT_OK if result.success else EXIT_FAILED


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="seismo", description="Chaos engineering and synthetic probing agent."
    )
    parser.add_argument("--version", action="version", version=f"seismo {__version__}")
    parser.add_argument(
        "--log-level",
        default=os.environ.get("SEISMO_LOG_LEVEL", "info"),
        choices=["debug", "info", "warning", "error"],
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("agent", help="run the agent daemon")
    p.add_argument(
        "--config", type=Path, default=None, help="config file (default: the embedded demo config)"
    )
    p.add_argument(
        "--listen",
        type=_listen,
        default=("127.0.0.1", 9115),
        help="HOST:PORT to serve on (default 127.0.0.1:9115)",
    )
    p.add_argument(
        "--data-dir",
        type=Path,
        default=default_data_dir(),
        help="state directory (default $SEISMO_DATA_DIR or ./seismo-data)",
    )
    p.set_defaults(func=cmd_agent)

    p = sub.add_parser("check-config", help="validate a config file")
    p.add_argument("file", type=Path)
    p.set_defaults(func=cmd_check_config)

    p = sub.add_parser("probe", help="run one probe now")
    p.add_argument("module", metavar="MODULE|KIND")
    p.add_argument("target")
    p.add_argument("--config", type=Path, default=None)
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument(
        "--timeout", type=float, default=None, help="seconds (default: the module's, or 10)"
    )
    p.add_argument("--query-name", default=".", help="dns kind only: the name to query")
    p.add_argument("--query-type", default="A", help="dns kind only: the record type")
    p.set_defaults(func=cmd_probe)

    experiment_commands.register(sub)
    fault_commands.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    status: int = args.func(args)
    return status


if __name__ == "__main__":
    sys.exit(main())
