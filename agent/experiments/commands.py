"""CLI subcommands for experiments (``validate``, ``run``, ``journal``)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the experiment subcommands to the ``seismo`` parser."""
