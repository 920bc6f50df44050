"""Certificate facts (being written)."""

from __future__ import annotations

import ssl

from probes.result import Recorder, TLSInfo


def tls_info(sslobj: ssl.SSLObject, server_name: str, *, verified: bool) -> TLSInfo:
    return TLSInfo(
        version=sslobj.version() or "", cipher=(sslobj.cipher() or ("",))[0],
        server_name=server_name, chain=(), verified=verified,
    )


def emit_tls_gauges(rec: Recorder) -> None:
    """Set blackbox's TLS gauges (probe_ssl_earliest_cert_expiry, ...) from ``rec.tls``."""
