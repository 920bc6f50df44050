"""The probe library's public surface is small and pinned; it never imports the agent."""

import subprocess
import sys

import probes


def test_public_names_are_pinned() -> None:
    assert sorted(probes.__all__) == [
        "CertInfo",
        "Connector",
        "Measurement",
        "Module",
        "ProbeResult",
        "Reason",
        "TLSInfo",
        "run_probe",
    ]
    for name in probes.__all__:
        assert getattr(probes, name) is not None


def test_probes_never_imports_agent() -> None:
    code = (
        "import sys, probes, probes.http, probes.dns, probes.tls, probes.tcp; "
        "print(sorted(m for m in sys.modules if m == 'agent' or m.startswith('agent.')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
