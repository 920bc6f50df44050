"""CLI subcommands for experiments: ``validate``, ``run`` and ``journal list|show|reconcile``.

    seismo validate EXP [--allow-process] [--allow-module M]...
    seismo run EXP [--journal PATH] [--dry MODE] [--var k=v]... [--var-file F]
                   [--rollback-strategy S] [--hypothesis-strategy S] [--hypothesis-frequency S]
                   [--max-duration S] [--data-dir DIR]
    seismo journal list|show ID|reconcile [--data-dir DIR] [--json]
    seismo submit EXP --agent URL --token-file F [--var k=v]...   (agent.experiments.submit)

Exit codes: 0 completed and not deviated; 1 deviated or failed; 2 invalid input;
3 interrupted or aborted (after rollbacks).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from pathlib import Path
from typing import Any

from agent.experiments.errors import ExperimentInvalid, RunnerFailed
from agent.experiments.journal import EXIT_INTERRUPTED, EXIT_INVALID
from agent.experiments.policy import DEFAULT_ALLOWED_MODULES, Policy
from agent.experiments.progress import ProgressPrinter
from agent.experiments.runner import RunOptions, Supervisor
from agent.experiments.spec import DRY_MODES, HYPOTHESIS_STRATEGIES, ROLLBACK_STRATEGIES
from agent.experiments.store import JournalStore, default_data_dir
from agent.experiments.submit import register as register_submit
from agent.experiments.validation import validate_file
from probes.modules import parse_duration

__all__ = ["register"]


def _duration(value: str) -> float:
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _policy_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--allow-module",
        action="append",
        default=[],
        metavar="MODULE",
        help="also allow python providers from MODULE (default allowlist: "
        + ", ".join(DEFAULT_ALLOWED_MODULES)
        + ")",
    )
    p.add_argument(
        "--allow-process",
        action="store_true",
        help="allow the process provider (argv-list form only)",
    )


def _data_dir_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="where runs and journals live (default: $SEISMO_DATA_DIR or ./seismo-data)",
    )


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the experiment subcommands to the ``seismo`` parser."""
    v = sub.add_parser("validate", help="validate a Chaos Toolkit experiment")
    v.add_argument("experiment", type=Path)
    _policy_args(v)
    v.set_defaults(func=cmd_validate)

    r = sub.add_parser("run", help="run a Chaos Toolkit experiment safely")
    r.add_argument("experiment", type=Path)
    r.add_argument("--journal", type=Path, default=None, help="also write the journal here")
    r.add_argument("--dry", choices=DRY_MODES, default=None)
    r.add_argument("--var", action="append", default=[], metavar="KEY[:TYPE]=VALUE")
    r.add_argument("--var-file", action="append", default=[], metavar="FILE")
    r.add_argument("--rollback-strategy", choices=ROLLBACK_STRATEGIES, default=None)
    r.add_argument("--hypothesis-strategy", choices=HYPOTHESIS_STRATEGIES, default=None)
    r.add_argument("--hypothesis-frequency", type=_duration, default=None, metavar="SECONDS")
    r.add_argument("--fail-fast", action="store_true", default=None)
    r.add_argument("--max-duration", type=_duration, default=None, metavar="DURATION")
    r.add_argument(
        "--rollback-grace",
        type=_duration,
        default=120.0,
        metavar="DURATION",
        help="after an interruption, how long rollbacks may take before the runner is killed",
    )
    _policy_args(r)
    _data_dir_arg(r)
    r.set_defaults(func=cmd_run)

    j = sub.add_parser("journal", help="list and show experiment journals")
    jsub = j.add_subparsers(dest="journal_command", required=True, metavar="ACTION")
    jl = jsub.add_parser("list", help="list runs")
    jl.add_argument("--json", action="store_true")
    _data_dir_arg(jl)
    jl.set_defaults(func=cmd_journal_list)
    js = jsub.add_parser("show", help="print a run's journal (partial while running or lost)")
    js.add_argument("run_id")
    _data_dir_arg(js)
    js.set_defaults(func=cmd_journal_show)
    jr = jsub.add_parser("reconcile", help="mark the runs whose runner died as partial")
    _data_dir_arg(jr)
    jr.set_defaults(func=cmd_journal_reconcile)

    register_submit(sub)


def _policy(args: argparse.Namespace) -> Policy:
    return Policy(
        allowed_modules=(*DEFAULT_ALLOWED_MODULES, *args.allow_module),
        allow_process=bool(args.allow_process),
    )


def _store(args: argparse.Namespace) -> JournalStore:
    return JournalStore(args.data_dir or default_data_dir())


def cmd_validate(args: argparse.Namespace) -> int:
    try:
        experiment = validate_file(args.experiment, _policy(args))
    except ExperimentInvalid as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_INVALID
    print(f"{args.experiment}: valid experiment {experiment.get('title')!r}")
    return 0


def _config_vars(raw: list[str]) -> dict[str, Any]:
    from chaoslib import convert_vars

    try:
        return dict(convert_vars(raw))
    except ValueError as exc:
        raise ExperimentInvalid([], "--var") from exc


def cmd_run(args: argparse.Namespace) -> int:
    try:
        experiment = validate_file(args.experiment, _policy(args))
        try:
            config_vars = _config_vars(args.var)
        except ExperimentInvalid:
            print("--var needs KEY[:TYPE]=VALUE (TYPE: str, int, float, bytes)", file=sys.stderr)
            return EXIT_INVALID
        for var_file in args.var_file:
            if not Path(var_file).is_file():
                print(f"--var-file {var_file}: no such file", file=sys.stderr)
                return EXIT_INVALID
        options = RunOptions(
            dry=args.dry,
            config_vars=config_vars,
            var_files=tuple(args.var_file),
            hypothesis_strategy=args.hypothesis_strategy,
            hypothesis_frequency=args.hypothesis_frequency,
            fail_fast=args.fail_fast,
            rollback_strategy=args.rollback_strategy,
            max_duration=args.max_duration,
            journal_path=args.journal,
            rollback_grace=args.rollback_grace,
        )
        supervisor = Supervisor(
            experiment,
            _store(args),
            options,
            source=str(args.experiment),
            on_event=ProgressPrinter(sys.stdout),
        )
    except ExperimentInvalid as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_INVALID
    try:
        return asyncio.run(_run(supervisor))
    except RunnerFailed as exc:
        print(f"seismo: {exc}", file=sys.stderr)
        return EXIT_INTERRUPTED


async def _run(supervisor: Supervisor) -> int:
    loop = asyncio.get_running_loop()

    def on_signal(sig: signal.Signals) -> None:
        if supervisor.abort_reason is None:
            supervisor.abort(
                {"kind": "signal", "signal": sig.name, "message": f"received {sig.name}"}
            )
        else:
            print(
                f"seismo: {sig.name} received again; waiting for the rollbacks to finish",
                file=sys.stderr,
            )

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal, sig)
    try:
        outcome = await supervisor.run()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    return outcome.exit_code


def cmd_journal_list(args: argparse.Namespace) -> int:
    runs = _store(args).runs()
    if args.json:
        print(json.dumps([r.to_json() for r in runs], indent=2))
        return 0
    if not runs:
        print("no runs")
        return 0
    print(f"{'RUN ID':<32} {'STATUS':<12} {'DEVIATED':<8} {'PARTIAL':<7} TITLE")
    for r in runs:
        print(f"{r.run_id:<32} {r.status:<12} {r.deviated!s:<8} {r.partial!s:<7} {r.title}")
    return 0


def cmd_journal_show(args: argparse.Namespace) -> int:
    store = _store(args)
    try:
        journal = store.load(args.run_id)
    except KeyError:
        print(f"no run {args.run_id!r} in {store.runs_dir}", file=sys.stderr)
        return EXIT_INVALID
    print(json.dumps(journal, indent=2, default=str))
    return 0


def cmd_journal_reconcile(args: argparse.Namespace) -> int:
    for run_id in _store(args).reconcile():
        print(f"{run_id}: runner lost; partial journal written")
    return 0
