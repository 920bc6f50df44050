"""The ONE place where foreign exceptions become probe failure reasons.

    OSError (errno)                 -> connect_refused | connect_unreachable | connection_reset ...
      ... reset/closed during "tls" -> tls_handshake_failed (the peer refused the handshake)
    ssl.SSLCertVerificationError    -> tls_cert_expired | tls_cert_not_yet_valid | tls_self_signed
                                       | tls_untrusted | tls_hostname_mismatch (by OpenSSL code)
    ssl.SSLError                    -> tls_handshake_failed
    dns.resolver.NXDOMAIN           -> dns_nxdomain           (resolving the target host)
    dns.resolver.NoAnswer           -> dns_no_address
    dns.exception.DNSException      -> dns_resolve_failed / dns_protocol_error
    httptools.HttpParserError       -> http_protocol_error
    zlib.error                      -> http_protocol_error (corrupt compressed body)
    EOFError / IncompleteReadError  -> connection_closed
    TimeoutError (socket level)     -> the phase's timeout reason

Anything else is a bug and propagates. ``tests/probes/test_errors.py`` fails when an
exception type that the probes can raise is left unmapped.
"""

from __future__ import annotations

import asyncio
import errno
import ssl
import zlib

import dns.exception
import dns.resolver
import httptools

from probes.result import TIMEOUT_REASONS, ProbeFailed, Reason

__all__ = ["VERIFY_CODE_REASONS", "describe", "translate"]

#: OpenSSL X509_V_ERR_* codes -> reason
VERIFY_CODE_REASONS: dict[int, Reason] = {
    9: Reason.TLS_CERT_NOT_YET_VALID,  # X509_V_ERR_CERT_NOT_YET_VALID
    10: Reason.TLS_CERT_EXPIRED,  # X509_V_ERR_CERT_HAS_EXPIRED
    18: Reason.TLS_SELF_SIGNED,  # X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT
    19: Reason.TLS_SELF_SIGNED,  # X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN
    2: Reason.TLS_UNTRUSTED,  # X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT
    7: Reason.TLS_UNTRUSTED,  # X509_V_ERR_CERT_SIGNATURE_FAILURE
    13: Reason.TLS_CERT_NOT_YET_VALID,  # X509_V_ERR_ERROR_IN_CERT_NOT_BEFORE_FIELD
    14: Reason.TLS_CERT_EXPIRED,  # X509_V_ERR_ERROR_IN_CERT_NOT_AFTER_FIELD
    22: Reason.TLS_UNTRUSTED,  # X509_V_ERR_CERT_CHAIN_TOO_LONG
    23: Reason.TLS_UNTRUSTED,  # X509_V_ERR_CERT_REVOKED
    25: Reason.TLS_UNTRUSTED,  # X509_V_ERR_PATH_LENGTH_EXCEEDED
    20: Reason.TLS_UNTRUSTED,  # X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY
    21: Reason.TLS_UNTRUSTED,  # X509_V_ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE
    24: Reason.TLS_UNTRUSTED,  # X509_V_ERR_INVALID_CA
    26: Reason.TLS_UNTRUSTED,  # X509_V_ERR_INVALID_PURPOSE
    27: Reason.TLS_UNTRUSTED,  # X509_V_ERR_CERT_UNTRUSTED
    28: Reason.TLS_UNTRUSTED,  # X509_V_ERR_CERT_REJECTED
    62: Reason.TLS_HOSTNAME_MISMATCH,  # X509_V_ERR_HOSTNAME_MISMATCH
    63: Reason.TLS_HOSTNAME_MISMATCH,  # X509_V_ERR_EMAIL_MISMATCH
    64: Reason.TLS_HOSTNAME_MISMATCH,  # X509_V_ERR_IP_ADDRESS_MISMATCH
}

_ERRNO_REASONS: dict[int, Reason] = {
    errno.ECONNREFUSED: Reason.CONNECT_REFUSED,
    errno.ENETUNREACH: Reason.CONNECT_UNREACHABLE,
    errno.EHOSTUNREACH: Reason.CONNECT_UNREACHABLE,
    errno.EADDRNOTAVAIL: Reason.CONNECT_UNREACHABLE,
    errno.ENETDOWN: Reason.CONNECT_UNREACHABLE,
    errno.EAFNOSUPPORT: Reason.CONNECT_UNREACHABLE,
    errno.ECONNRESET: Reason.CONNECTION_RESET,
    errno.ECONNABORTED: Reason.CONNECTION_RESET,
    errno.EPIPE: Reason.CONNECTION_RESET,
    errno.ETIMEDOUT: Reason.CONNECT_TIMEOUT,
}


def describe(exc: BaseException) -> str:
    """A short, human description of ``exc`` for ``detail`` (never used as a label)."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"certificate verify failed: {exc.verify_message}"
    text = str(exc) or type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def translate(exc: BaseException, phase: str | None) -> ProbeFailed | None:
    """Map an exception raised during ``phase`` to a ``ProbeFailed``; ``None`` for bugs."""
    reason = _reason(exc, phase)
    if reason is None:
        return None
    return ProbeFailed(reason, f"{phase}: {describe(exc)}" if phase else describe(exc))


def _reason(exc: BaseException, phase: str | None) -> Reason | None:
    # order matters: SSLCertVerificationError < SSLError < OSError
    if isinstance(exc, ssl.SSLCertVerificationError):
        return VERIFY_CODE_REASONS.get(exc.verify_code, Reason.TLS_UNTRUSTED)
    if isinstance(exc, ssl.SSLError):
        if isinstance(exc, ssl.SSLZeroReturnError | ssl.SSLEOFError):
            return Reason.CONNECTION_CLOSED if phase != "tls" else Reason.TLS_HANDSHAKE_FAILED
        return Reason.TLS_HANDSHAKE_FAILED
    if isinstance(exc, TimeoutError):
        # a socket-level timeout, not the scheduler's (that one cancels, see probes.runner)
        return TIMEOUT_REASONS.get(phase, Reason.TIMEOUT)
    if isinstance(exc, ConnectionRefusedError):
        return Reason.CONNECT_REFUSED
    if isinstance(exc, ConnectionResetError | BrokenPipeError | ConnectionAbortedError):
        # a peer that resets while we handshake is refusing TLS (e.g. mTLS without a
        # client certificate, or a plain-text service): say so, like SSLEOFError above
        return Reason.TLS_HANDSHAKE_FAILED if phase == "tls" else Reason.CONNECTION_RESET
    if isinstance(exc, asyncio.IncompleteReadError | EOFError):
        return Reason.CONNECTION_CLOSED
    if isinstance(exc, asyncio.LimitOverrunError):
        return Reason.BODY_TOO_LARGE
    if isinstance(exc, dns.resolver.NXDOMAIN):
        return Reason.DNS_NXDOMAIN if phase == "resolve" else Reason.DNS_RCODE
    if isinstance(exc, dns.resolver.NoAnswer | dns.resolver.NoNameservers):
        return Reason.DNS_NO_ADDRESS if phase == "resolve" else Reason.DNS_RCODE
    if isinstance(exc, dns.exception.Timeout):
        return Reason.DNS_RESOLVE_TIMEOUT if phase == "resolve" else Reason.TIMEOUT
    if isinstance(exc, dns.exception.DNSException):
        return Reason.DNS_RESOLVE_FAILED if phase == "resolve" else Reason.DNS_PROTOCOL_ERROR
    if isinstance(exc, httptools.HttpParserError | zlib.error):
        return Reason.HTTP_PROTOCOL_ERROR  # a malformed response, or a corrupt compressed body
    if isinstance(exc, OSError):
        if exc.errno in _ERRNO_REASONS:
            reason = _ERRNO_REASONS[exc.errno]
            if phase == "tls" and reason is Reason.CONNECTION_RESET:
                return Reason.TLS_HANDSHAKE_FAILED
            return reason
        if phase == "resolve":
            return Reason.DNS_RESOLVE_FAILED
        return Reason.CONNECT_UNREACHABLE if phase == "connect" else Reason.CONNECTION_RESET
    return None
