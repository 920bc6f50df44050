"""Rendering probe results for a person at a terminal (``seismo probe``).

print(format_result(result, module_name="http_2xx"))
"""

from __future__ import annotations

import datetime as dt
import time

from probes.result import CertInfo, ProbeResult

__all__ = ["format_result"]

_PHASE_ORDER = ("resolve", "connect", "tls", "processing", "transfer", "request")
_SHOWN_GAUGES = {
    "probe_http_status_code": "status",
    "probe_http_version": "http version",
    "probe_http_redirects": "redirects",
    "probe_http_content_length": "content length",
    "probe_http_uncompressed_body_length": "body length",
    "probe_dns_answer_rrs": "answer RRs",
    "probe_dns_authority_rrs": "authority RRs",
    "probe_dns_additional_rrs": "additional RRs",
    "probe_dns_serial": "SOA serial",
}


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:9.3f} ms"


def _when(ts: float, now: float) -> str:
    day = dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    days = (ts - now) / 86400
    rel = f"in {days:.0f} days" if days >= 0 else f"{-days:.0f} days ago"
    return f"{day} ({rel})"


def _cert_lines(depth: int, cert: CertInfo, now: float) -> list[str]:
    lines = [
        f"    [{depth}] {cert.subject}",
        f"        issuer   {cert.issuer}",
        f"        expires  {_when(cert.not_after, now)}",
    ]
    if cert.sans:
        lines.append(f"        SANs     {', '.join(cert.sans)}")
    lines.append(f"        sha256   {cert.fingerprint_sha256}")
    return lines


def format_result(result: ProbeResult, module_name: str = "") -> str:
    """A multi-line report: verdict, phase timings, key gauges, TLS facts."""
    verdict = "OK" if result.success else f"FAILED  reason={result.reason.value}"
    head = f"{result.kind} probe of {result.target}"
    if module_name:
        head += f" (module {module_name})"
    lines = [head, f"  result   {verdict}  in {result.duration_seconds * 1000:.3f} ms"]
    if result.detail:
        lines.append(f"  detail   {result.detail}")
    if result.peer:
        lines.append(f"  peer     {result.peer}")
    phases = sorted(
        result.phases.items(),
        key=lambda kv: _PHASE_ORDER.index(kv[0]) if kv[0] in _PHASE_ORDER else 99,
    )
    if phases:
        lines.append("  phases")
        lines.extend(f"    {name:<11}{_ms(seconds)}" for name, seconds in phases)
    shown = [
        (label, m.value)
        for m in result.measurements
        for name, label in _SHOWN_GAUGES.items()
        # a failed run's zeros (no response) say nothing; a success's zeros do
        if m.name == name and not m.labels and (result.success or m.value != 0)
    ]
    for label, value in shown:
        lines.append(f"  {label:<15}{value:g}")
    tls = result.tls
    if tls is not None:
        state = (
            "verified"
            if tls.verified
            else (f"NOT verified: {tls.verify_error.value}" if tls.verify_error else "not verified")
        )
        lines.append(f"  tls      {tls.version} {tls.cipher}, {state}")
        if tls.server_name:
            lines.append(f"           server name {tls.server_name}")
        now = time.time()
        if tls.chain:
            lines.append("  chain")
            for depth, cert in enumerate(tls.chain):
                lines.extend(_cert_lines(depth, cert, now))
    return "\n".join(lines)
