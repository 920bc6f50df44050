"""seismo's probe library: HTTP, DNS, TLS and TCP probes with one result type.

Importable on its own; it never imports ``agent``.

    from probes import Module, run_probe
    module = Module.model_validate({"prober": "http"})
    result = await run_probe(module, "http://127.0.0.1:8080/", timeout=5)
    print(result.success, result.reason, result.phases)
"""

from probes.connection import Connector
from probes.modules import Module
from probes.result import CertInfo, Measurement, ProbeResult, Reason, TLSInfo
from probes.runner import run_probe

__all__ = [
    "CertInfo",
    "Connector",
    "Measurement",
    "Module",
    "ProbeResult",
    "Reason",
    "TLSInfo",
    "run_probe",
]
