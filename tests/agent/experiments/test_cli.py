"""``seismo validate`` / ``seismo run`` input handling, secrets redaction, journals."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.agent.experiments.support import (
    DemoTarget,
    base_experiment,
    degrade_action,
    run_seismo,
    seismo_env,
    seismo_ext,
    write_experiment,
)

MINIMAL: dict[str, Any] = {"title": "t", "description": "d", "method": []}


def _with_method(activity: dict[str, Any]) -> dict[str, Any]:
    return {**MINIMAL, "method": [activity]}


def _python(module: str, func: str = "getcwd") -> dict[str, Any]:
    return {
        "type": "action",
        "name": "act",
        "provider": {"type": "python", "module": module, "func": func},
    }


def _process(arguments: Any) -> dict[str, Any]:
    return {
        "type": "action",
        "name": "proc",
        "provider": {"type": "process", "path": "true", "arguments": arguments},
    }


INVALID = [
    pytest.param(
        "title: [unclosed\n", [], "line 2: YAML syntax error", "[syntax]", id="yaml-syntax"
    ),
    pytest.param(
        {"description": "no title", "method": []},
        [],
        "requires a title",
        "[chaostoolkit-schema]",
        id="schema",
    ),
    pytest.param(
        _with_method(_python("chaoslib.nope")),
        [],
        "cannot be imported",
        "[unknown-module]",
        id="unknown-module",
    ),
    pytest.param(
        _with_method(_python("os")),
        [],
        "method[0] action 'act': python module 'os'",
        "[provider-allowlist]",
        id="disallowed-module",
    ),
    pytest.param(
        _with_method(_process(["-x"])),
        [],
        "method[0] action 'proc'",
        "[process-disabled]",
        id="process-disabled",
    ),
    pytest.param(
        _with_method(_process("-x; rm -rf /")),
        ["--allow-process"],
        "argv form",
        "[process-argv]",
        id="process-shell-string",
    ),
    pytest.param(
        {**MINIMAL, "extensions": [{"name": "seismo", "guardrails": [{"name": "g"}]}]},
        [],
        "exactly one of 'check' or 'probe'",
        "[seismo-extension]",
        id="bad-guardrail",
    ),
]


@pytest.mark.parametrize(("content", "flags", "message", "rule"), INVALID)
@pytest.mark.parametrize("command", ["validate", "run"])
async def test_invalid_experiments_exit_2_without_a_run(
    tmp_path: Path, content: Any, flags: list[str], message: str, rule: str, command: str
) -> None:
    path = tmp_path / "exp.yaml"
    if isinstance(content, str):
        path.write_text(content)
    else:
        write_experiment(path, content)
    data = tmp_path / "data"
    args = [command, str(path), *flags]
    if command == "run":
        args += ["--data-dir", str(data)]
    _, code, out, err = await run_seismo(args, data)
    assert code == 2, out + err
    assert message in err
    assert rule in err
    assert str(path) in err
    assert not (data / "runs").exists()


async def test_validate_accepts_a_valid_experiment(tmp_path: Path) -> None:
    path = write_experiment(
        tmp_path / "exp.yaml", _with_method(_python("chaoslib.exit", "exit_gracefully"))
    )
    _, code, out, _ = await run_seismo(["validate", str(path)], tmp_path / "data")
    assert code == 0
    assert "valid experiment 't'" in out


async def test_allow_module_extends_the_allowlist(tmp_path: Path) -> None:
    path = write_experiment(tmp_path / "exp.yaml", _with_method(_python("os.path", "basename")))
    _, code, _, err = await run_seismo(["validate", str(path)], tmp_path / "data")
    assert code == 2 and "[provider-allowlist]" in err
    _, code, _, err = await run_seismo(
        ["validate", str(path), "--allow-module", "os.path"], tmp_path / "data"
    )
    # allowed now; chaoslib then checks the signature (basename needs an argument)
    assert "[provider-allowlist]" not in err


async def test_secrets_never_reach_journal_event_log_or_output(
    demo: DemoTarget, tmp_path: Path
) -> None:
    inline, from_env = "inline-s3cret-value", "env-s3cret-value"
    experiment = base_experiment(demo.base_url, [])
    experiment["secrets"] = {
        "api": {"token": inline, "other": {"type": "env", "key": "SEISMO_TEST_SECRET"}}
    }
    # unreachable URLs that carry the secrets: chaoslib puts them in its error messages
    for name, ref in (("leak-inline", "${token}"), ("leak-env", "${other}")):
        experiment["method"].append(
            {
                "type": "action",
                "name": name,
                "provider": {
                    "type": "http",
                    "secrets": ["api"],
                    "url": f"http://127.0.0.1:1/{ref}",
                    "headers": {"Authorization": f"Bearer {ref}"},
                    "timeout": 5,
                },
            }
        )
    exp = write_experiment(tmp_path / "exp.yaml", experiment)
    data = tmp_path / "data"
    journal_copy = tmp_path / "journal.json"
    proc, code, out, err = await run_seismo(
        ["run", str(exp), "--data-dir", str(data), "--journal", str(journal_copy)],
        data,
        seismo_env(SEISMO_TEST_SECRET=from_env),
    )
    assert code == 0, out + err
    journal = proc.journal()
    leak_runs = [r for r in journal["run"] if r["activity"]["name"].startswith("leak")]
    assert [r["status"] for r in leak_runs] == ["failed", "failed"]
    assert "***" in leak_runs[0]["exception"][-1]
    assert journal["experiment"]["secrets"]["api"]["token"] == "***"
    files = [journal_copy, *proc.run_dirs()[0].iterdir()]
    assert {f.name for f in files} >= {"events.jsonl", "journal.json", "chaostoolkit.log"}
    for f in files:
        text = f.read_text()
        assert inline not in text, f
        assert from_env not in text, f
    assert inline not in out + err and from_env not in out + err


async def test_journal_extension_records_identity_and_version(
    demo: DemoTarget, tmp_path: Path
) -> None:
    exp = write_experiment(
        tmp_path / "exp.yaml", base_experiment(demo.base_url, [degrade_action(200)])
    )
    data = tmp_path / "data"
    env = seismo_env(SEISMO_REGION="eu-west", SEISMO_ZONE="eu-west-1a", SEISMO_NODE="node-7")
    proc, code, out, err = await run_seismo(["run", str(exp), "--data-dir", str(data)], data, env)
    assert code == 0, out + err
    journal = proc.journal()
    ext = seismo_ext(journal)
    assert ext["agent"] == {"region": "eu-west", "zone": "eu-west-1a", "node": "node-7"}
    assert ext["version"]
    assert ext["faults"] == []
    assert ext["interruption"] is None
    assert ext["partial"] is False
    # the standard Chaos Toolkit journal keys are all there
    for key in (
        "chaoslib-version",
        "platform",
        "node",
        "experiment",
        "start",
        "end",
        "duration",
        "status",
        "deviated",
        "steady_states",
        "run",
        "rollbacks",
    ):
        assert key in journal
    # live progress: each activity with its status and duration
    assert "action 'degrade' succeeded in" in out
    assert "probe 'healthz-ok' succeeded in" in out
    _, code, listing, _ = await run_seismo(["journal", "list", "--data-dir", str(data)], data)
    assert code == 0 and proc.run_dirs()[0].name in listing and "completed" in listing


async def test_dry_actions_skips_the_fault(demo: DemoTarget, tmp_path: Path) -> None:
    exp = write_experiment(
        tmp_path / "exp.yaml", base_experiment(demo.base_url, [degrade_action()])
    )
    data = tmp_path / "data"
    _, code, out, err = await run_seismo(
        ["run", str(exp), "--data-dir", str(data), "--dry", "actions"], data
    )
    assert code == 0, out + err
    assert demo.count("POST", "/admin/degrade") == 0
    assert demo.count("GET", "/healthz") == 2


async def test_var_overrides_configuration(demo: DemoTarget, tmp_path: Path) -> None:
    exp = write_experiment(
        tmp_path / "exp.yaml", base_experiment("http://127.0.0.1:1", [degrade_action(200)])
    )
    data = tmp_path / "data"
    _, code, out, err = await run_seismo(
        ["run", str(exp), "--data-dir", str(data), "--var", f"base_url={demo.base_url}"], data
    )
    assert code == 0, out + err
    assert demo.count("POST", "/admin/degrade") == 1


async def test_deviation_exits_1_and_rollbacks_run(demo: DemoTarget, tmp_path: Path) -> None:
    exp = write_experiment(
        tmp_path / "exp.yaml", base_experiment(demo.base_url, [degrade_action()])
    )
    data = tmp_path / "data"
    proc, code, out, err = await run_seismo(["run", str(exp), "--data-dir", str(data)], data)
    # nothing in the method heals the target, so the after-hypothesis sees the 503
    assert code == 1, out + err
    journal = proc.journal()
    assert journal["deviated"] is True
    assert demo.count("POST", "/admin/restore") == 1
    assert json.loads((proc.run_dirs()[0] / "journal.json").read_text())["status"] == "completed"
