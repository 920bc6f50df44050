"""The ``tls`` probe: one TLS handshake, and what it says about the certificate chain.

seismo's own prober (blackbox_exporter has none). The target is ``host:port``; the port
defaults to 443. The host name is the SNI and the name verified, unless
``tls.tls_config.server_name`` says otherwise.

Phases: ``resolve`` (skipped for IP literals), ``connect``, ``tls`` (the handshake).

When verification fails, the probe still reports the chain: it connects again and does a
second handshake that does not verify, then sets ``result.tls`` with ``verified=False``
and ``verify_error`` (the reason). The phase times stay those of the first attempt.

Metrics:

- blackbox's TLS set (see :func:`probes.certs.emit_tls_gauges`):
  ``probe_ssl_earliest_cert_expiry``, ``probe_ssl_last_chain_expiry_timestamp_seconds``,
  ``probe_ssl_last_chain_info{fingerprint_sha256,issuer,subject,subjectalternative}``,
  ``probe_tls_version_info{version}``, ``probe_tls_cipher_info{cipher}``;
- ``probe_dns_lookup_time_seconds``, ``probe_ip_protocol``, ``probe_ip_addr_hash``
  (as blackbox's tcp prober);
- ``probe_tls_duration_seconds{phase="resolve|connect|tls"}``: per-phase time, named like
  blackbox's ``probe_http_duration_seconds{phase}``; all three exist on every run;
- ``probe_tls_verified``: 1 when the chain and name verified, else 0;
- ``probe_tls_cert_expiry_timestamp_seconds{depth="0".."n"}``: ``notAfter`` of each presented
  certificate, the leaf at depth 0 (depth keeps the label set small and stable across
  renewals; the fingerprint lives in ``probe_ssl_last_chain_info``).

Outcomes: ``success``; the failure reasons of resolving and connecting (``dns_nxdomain``,
``connect_refused``, ``connect_timeout`` ...); ``tls_handshake_failed`` /
``tls_handshake_timeout``; a verification failure (``tls_cert_expired``,
``tls_cert_not_yet_valid``, ``tls_untrusted``, ``tls_self_signed``,
``tls_hostname_mismatch``) unless ``fail_if_not_verified: false``; ``tls_cert_expiring`` when a
presented certificate expires within ``fail_if_expires_within``; ``config_error`` for a bad
target or unreadable ``tls_config`` files.

Limits: a server that requires a client certificate rejects a missing one *during* a
TLS 1.2 handshake (``tls_handshake_failed``), but only *after* a TLS 1.3 handshake has
completed on the client side; a pure handshake probe cannot see that rejection without
sending data (blackbox_exporter's tcp prober cannot either).

    module = Module.model_validate({"prober": "tls", "tls": {"fail_if_expires_within": "14d"}})
    result = await run_probe(module, "example.com:443", timeout=5)
"""

from __future__ import annotations

import dataclasses
import time

from probes.certs import emit_tls_gauges
from probes.connection import Connector, split_host_port
from probes.modules import Module
from probes.result import ProbeFailed, Reason, Recorder

__all__ = ["VERIFY_REASONS", "probe"]

#: reasons that mean "the handshake worked, but the chain or name did not verify"
VERIFY_REASONS = frozenset(
    {
        Reason.TLS_CERT_EXPIRED,
        Reason.TLS_CERT_NOT_YET_VALID,
        Reason.TLS_UNTRUSTED,
        Reason.TLS_SELF_SIGNED,
        Reason.TLS_HOSTNAME_MISMATCH,
    }
)

_PHASES = ("resolve", "connect", "tls")


async def probe(target: str, module: Module, rec: Recorder, connector: Connector) -> None:
    """Probe ``target`` (``host[:port]``) with one TLS handshake."""
    try:
        try:
            host, port = split_host_port(target, default_port=443)
        except ValueError as exc:
            rec.fail(Reason.CONFIG_ERROR, str(exc))
        await _handshake(host, port, module, rec, connector)
    finally:
        # blackbox pre-creates its duration series; so does this probe, on every outcome
        for phase in _PHASES:
            rec.gauge(
                "probe_tls_duration_seconds",
                rec.phases.get(phase, 0.0),
                help="Duration of the TLS probe by phase",
                phase=phase,
            )


async def _handshake(
    host: str, port: int, module: Module, rec: Recorder, connector: Connector
) -> None:
    cfg = module.tls
    connector.ssl_context(cfg.tls_config)  # a bad tls_config fails before any traffic
    ip = await connector.resolve(host, rec, cfg.preferred_ip_protocol, cfg.ip_protocol_fallback)
    verify_failure: ProbeFailed | None = None
    stream = await connector.connect(ip, port, rec)
    try:
        await connector.start_tls(stream, cfg.tls_config, host, rec)
    except ProbeFailed as failed:
        if failed.reason not in VERIFY_REASONS:
            raise
        verify_failure = failed
    finally:
        stream.close()

    if verify_failure is not None:
        await _collect_unverified(host, port, ip, module, rec, connector, verify_failure)

    info = rec.tls
    assert info is not None  # start_tls sets it, or raised
    emit_tls_gauges(rec)
    rec.gauge(
        "probe_tls_verified",
        1 if info.verified else 0,
        help="Whether the TLS chain and host name verified (1) or not (0)",
    )
    for depth, cert in enumerate(info.chain):
        rec.gauge(
            "probe_tls_cert_expiry_timestamp_seconds",
            cert.not_after,
            help="notAfter of each presented certificate, by depth (0: the leaf)",
            depth=str(depth),
        )

    if verify_failure is not None and cfg.fail_if_not_verified:
        raise verify_failure
    earliest = info.earliest_expiry
    if cfg.fail_if_expires_within > 0 and earliest is not None:
        left = earliest - time.time()
        if left < cfg.fail_if_expires_within:
            rec.fail(
                Reason.TLS_CERT_EXPIRING,
                f"a certificate of the chain expires in {left / 86400:.1f} days "
                f"(fail_if_expires_within: {cfg.fail_if_expires_within / 86400:g} days)",
            )


async def _collect_unverified(
    host: str,
    port: int,
    ip: str,
    module: Module,
    rec: Recorder,
    connector: Connector,
    failure: ProbeFailed,
) -> None:
    """Handshake again without verifying, to report the chain that failed verification."""
    first_attempt = dict(rec.phases)
    try:
        stream = await connector.connect(ip, port, rec)
        try:
            await connector.start_tls(stream, module.tls.tls_config, host, rec, verify=False)
        finally:
            stream.close()
    except ProbeFailed:
        # the peer would not even complete an unverified handshake: the first reason
        # stands, without chain facts
        raise failure from None
    finally:
        # the phases describe the handshake that was judged, not the fact-finding one
        rec.phases.clear()
        rec.phases.update(first_attempt)
    assert rec.tls is not None
    rec.tls = dataclasses.replace(rec.tls, verified=False, verify_error=failure.reason)
