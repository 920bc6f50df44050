"""The kill matrix: however a run stops, the rollbacks ran and the journal says why.

Each test runs ``seismo run`` in a subprocess (which runs chaostoolkit-lib in a runner
process of its own) against the loopback demo target. The rollback POSTs /admin/restore to
the target, which records it: that request is the proof that rollbacks ran. Tests
synchronise on requests arriving and on events in the fsynced event log, never on sleeps.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from tests.agent.experiments.support import (
    DemoTarget,
    base_experiment,
    degrade_action,
    hang_action,
    run_seismo,
    seismo_ext,
    start_seismo,
    write_experiment,
)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
async def test_signal_runs_rollbacks_and_records_the_signal(
    demo: DemoTarget, tmp_path: Path, sig: signal.Signals
) -> None:
    exp = write_experiment(
        tmp_path / "exp.yaml", base_experiment(demo.base_url, [degrade_action(), hang_action()])
    )
    data = tmp_path / "data"
    proc = await start_seismo(["run", str(exp), "--data-dir", str(data)], data)
    await demo.wait_for("GET", "/hang")
    proc.process.send_signal(sig)
    code, out, err = await proc.finish()

    assert code == 3, out + err
    assert demo.count("POST", "/admin/restore") == 1
    journal = proc.journal()
    assert journal["status"] == "interrupted"
    ext = seismo_ext(journal)
    assert ext["interruption"]["kind"] == "signal"
    assert ext["interruption"]["signal"] == sig.name
    assert ext["rollbacks"]["played"] is True
    assert [r["status"] for r in journal["rollbacks"]] == ["succeeded"]
    assert f"received {sig.name}" in out


async def test_guardrail_trip_interrupts_and_records_values(
    demo: DemoTarget, tmp_path: Path
) -> None:
    experiment = base_experiment(demo.base_url, [degrade_action(503), hang_action()])
    experiment["extensions"] = [
        {
            "name": "seismo",
            "guardrails": [
                {
                    "name": "healthz-availability",
                    "probe": {
                        "target": f"{demo.base_url}/healthz",
                        "module": {"prober": "http"},
                        "timeout": "2s",
                    },
                    "interval": "100ms",
                    "window": "10s",
                    "min_success_ratio": 0.99,
                }
            ],
        }
    ]
    exp = write_experiment(tmp_path / "exp.yaml", experiment)
    data = tmp_path / "data"
    _, code, out, err = await run_seismo(["run", str(exp), "--data-dir", str(data)], data)

    assert code == 3, out + err
    assert demo.count("POST", "/admin/restore") == 1
    journal = _only_journal(data)
    ext = seismo_ext(journal)
    trip = ext["interruption"]
    assert trip["kind"] == "guardrail"
    assert trip["guardrail"] == "healthz-availability"
    assert trip["condition"] == "min_success_ratio"
    assert trip["threshold"] == 0.99
    assert trip["observed"] < 0.99
    assert trip["stats"]["last_reason"] == "http_status"
    assert journal["status"] == "interrupted"
    assert "guardrail 'healthz-availability'" in out


async def test_probe_error_after_method_still_runs_rollbacks(
    demo: DemoTarget, tmp_path: Path
) -> None:
    # after the method the target answers slowly: the chaoslib http probe times out and
    # errors (Chaos Toolkit's default strategy would then skip the rollbacks)
    experiment = base_experiment(demo.base_url, [degrade_action(200, delay_ms=3000)])
    experiment["steady-state-hypothesis"]["probes"] = [
        {
            "type": "probe",
            "name": "healthz-fast",
            "tolerance": 200,
            "provider": {"type": "http", "url": "${base_url}/healthz", "timeout": 0.5},
        }
    ]
    exp = write_experiment(tmp_path / "exp.yaml", experiment)
    data = tmp_path / "data"
    _, code, out, err = await run_seismo(["run", str(exp), "--data-dir", str(data)], data)

    assert code == 1, out + err
    assert demo.count("POST", "/admin/restore") == 1
    journal = _only_journal(data)
    assert journal["status"] == "failed"
    assert journal["deviated"] is True
    ext = seismo_ext(journal)
    assert ext["rollbacks"]["played"] is True
    (error,) = ext["errors"]
    assert error["phase"] == "hypothesis_after"
    assert error["activity"] == "healthz-fast"
    assert "too long" in error["error"]


async def test_activity_timeout_of_a_python_provider_is_enforced(
    demo: DemoTarget, tmp_path: Path
) -> None:
    slow = {
        "type": "action",
        "name": "slow-python",
        "timeout": 1,
        "provider": {
            "type": "python",
            "module": "agent.experiments.providers",
            "func": "http",
            "arguments": {"target": "${base_url}/hang", "timeout": "60s"},
        },
    }
    exp = write_experiment(
        tmp_path / "exp.yaml", base_experiment(demo.base_url, [degrade_action(), slow])
    )
    data = tmp_path / "data"
    _, code, out, err = await run_seismo(["run", str(exp), "--data-dir", str(data)], data)

    assert code == 3, out + err
    assert demo.count("GET", "/hang") == 1
    assert demo.count("POST", "/admin/restore") == 1
    journal = _only_journal(data)
    ext = seismo_ext(journal)
    assert ext["interruption"]["kind"] == "activity_timeout"
    assert ext["interruption"]["activity"] == "slow-python"
    assert ext["interruption"]["timeout"] == 1
    (slow_run,) = [r for r in journal["run"] if r["activity"]["name"] == "slow-python"]
    assert slow_run["status"] == "failed"


async def test_sigkill_of_the_runner_recovers_rollbacks_and_marks_partial(
    demo: DemoTarget, tmp_path: Path
) -> None:
    exp = write_experiment(
        tmp_path / "exp.yaml", base_experiment(demo.base_url, [degrade_action(), hang_action()])
    )
    data = tmp_path / "data"
    proc = await start_seismo(["run", str(exp), "--data-dir", str(data)], data)
    started = await proc.wait_event("run_started")
    await demo.wait_for("GET", "/hang")
    os.kill(started["pid"], signal.SIGKILL)
    code, out, err = await proc.finish()

    assert code == 3, out + err
    assert demo.count("POST", "/admin/restore") == 1
    journal = proc.journal()
    ext = seismo_ext(journal)
    assert ext["partial"] is True
    assert ext["interruption"]["kind"] == "runner_lost"
    assert ext["interruption"]["signal"] == "SIGKILL"
    assert ext["rollbacks"]["recovered"] is True
    assert [r["activity"]["name"] for r in journal["run"]] == ["degrade"]
    assert [r["status"] for r in journal["rollbacks"]] == ["succeeded"]


async def test_sigkill_of_everything_leaves_a_readable_partial_journal(
    demo: DemoTarget, tmp_path: Path
) -> None:
    exp = write_experiment(
        tmp_path / "exp.yaml", base_experiment(demo.base_url, [degrade_action(), hang_action()])
    )
    data = tmp_path / "data"
    proc = await start_seismo(["run", str(exp), "--data-dir", str(data)], data)
    started = await proc.wait_event("run_started")
    await demo.wait_for("GET", "/hang")
    proc.process.kill()
    os.kill(started["pid"], signal.SIGKILL)
    await proc.finish()
    (run_dir,) = proc.run_dirs()
    assert not (run_dir / "journal.json").exists()

    _, code, out, _ = await run_seismo(["journal", "list", "--json", "--data-dir", str(data)], data)
    assert code == 0
    (summary,) = json.loads(out)
    assert summary["partial"] is True
    assert summary["status"] == "interrupted"

    _, code, out, _ = await run_seismo(
        ["journal", "show", run_dir.name, "--data-dir", str(data)], data
    )
    assert code == 0
    shown = json.loads(out)
    assert seismo_ext(shown)["partial"] is True
    assert [r["activity"]["name"] for r in shown["run"]] == ["degrade"]

    _, code, out, _ = await run_seismo(["journal", "reconcile", "--data-dir", str(data)], data)
    assert code == 0 and run_dir.name in out
    reconciled = json.loads((run_dir / "journal.json").read_text())
    assert seismo_ext(reconciled)["interruption"]["kind"] == "runner_lost"
    assert reconciled["status"] == "interrupted"


async def test_max_duration_interrupts_and_runs_rollbacks(demo: DemoTarget, tmp_path: Path) -> None:
    exp = write_experiment(
        tmp_path / "exp.yaml", base_experiment(demo.base_url, [degrade_action(), hang_action()])
    )
    data = tmp_path / "data"
    _, code, out, err = await run_seismo(
        ["run", str(exp), "--data-dir", str(data), "--max-duration", "2s"], data
    )
    assert code == 3, out + err
    assert demo.count("POST", "/admin/restore") == 1
    ext = seismo_ext(_only_journal(data))
    assert ext["interruption"]["kind"] == "max_duration"


async def test_never_strategy_is_respected(demo: DemoTarget, tmp_path: Path) -> None:
    exp = write_experiment(
        tmp_path / "exp.yaml", base_experiment(demo.base_url, [degrade_action(), hang_action()])
    )
    data = tmp_path / "data"
    proc = await start_seismo(
        ["run", str(exp), "--data-dir", str(data), "--rollback-strategy", "never"], data
    )
    await demo.wait_for("GET", "/hang")
    proc.process.send_signal(signal.SIGINT)
    code, out, err = await proc.finish()
    assert code == 3, out + err
    assert demo.count("POST", "/admin/restore") == 0
    assert seismo_ext(proc.journal())["rollbacks"]["played"] is False


def _only_journal(data: Path) -> dict[str, object]:
    (run_dir,) = sorted((data / "runs").iterdir())
    journal = json.loads((run_dir / "journal.json").read_text())
    assert isinstance(journal, dict)
    return journal
