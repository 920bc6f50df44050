"""The ``seismo`` command line. One ``asyncio.run`` lives here and nowhere else.

    seismo agent [--config FILE] [--listen HOST:PORT] [--data-dir DIR]
    seismo check-config FILE
    seismo probe MODULE|KIND TARGET [--config FILE] [--json]

Each subcommand sets ``func`` on its parser; ``func(args) -> int`` is the exit status.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from agent import __version__
from agent.experiments import commands as experiment_commands


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="seismo", description="Chaos engineering and synthetic probing agent."
    )
    parser.add_argument("--version", action="version", version=f"seismo {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    experiment_commands.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    status: int = args.func(args)
    return status


if __name__ == "__main__":
    sys.exit(main())
