"""The experiments/ catalog: every file validates, and several run end to end against the
demo HTTP app (the same app the agent embeds) on a loopback port."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.experiments.policy import Policy
from agent.experiments.validation import validate_file
from tests.agent.experiments.support import REPO, DemoTarget, run_seismo, seismo_env, seismo_ext

CATALOG = sorted((REPO / "experiments").glob("*.yaml"))


def test_catalog_has_at_least_five_experiments() -> None:
    assert len(CATALOG) >= 5


@pytest.mark.parametrize("path", CATALOG, ids=lambda p: p.name)
def test_catalog_experiment_validates(path: Path) -> None:
    experiment = validate_file(path, Policy())
    assert experiment["title"]


@pytest.mark.parametrize(
    ("name", "code", "degrades"),
    [
        ("http-outage-is-detected.yaml", 1, 1),
        ("http-recovers-after-restore.yaml", 0, 1),
        ("latency-within-budget.yaml", 0, 1),
        ("guardrail-aborts-outage.yaml", 3, 1),
    ],
)
async def test_catalog_experiment_runs(
    demo: DemoTarget, tmp_path: Path, name: str, code: int, degrades: int
) -> None:
    data = tmp_path / "data"
    env = seismo_env(SEISMO_DEMO_HTTP_URL=demo.base_url)
    proc, rc, out, err = await run_seismo(
        ["run", str(REPO / "experiments" / name), "--data-dir", str(data)], data, env
    )
    assert rc == code, out + err
    assert demo.count("POST", "/admin/degrade") == degrades
    assert demo.count("POST", "/admin/restore") >= 1  # the rollback ran
    journal = proc.journal()
    if code == 3:
        assert seismo_ext(journal)["interruption"]["guardrail"] == "healthz-availability"
