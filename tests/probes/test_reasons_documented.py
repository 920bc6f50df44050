"""The failure reasons are a closed, documented set."""

from pathlib import Path

from probes.result import Reason

DOC = Path(__file__).parent.parent.parent / "docs" / "reasons.md"


def test_every_reason_is_documented_and_nothing_else() -> None:
    text = DOC.read_text()
    documented = {line.split("`")[1] for line in text.splitlines() if line.startswith("| `")}
    assert documented == {r.value for r in Reason}
