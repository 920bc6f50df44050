"""probes.errors is the one place foreign exceptions become reasons; pin the mapping.

The enumeration tests fail when a new exception class appears (a library upgrade, a new
import in a probe) that ``translate`` does not map, and when a bug type gets swallowed.
"""

from __future__ import annotations

import asyncio
import errno
import ssl
import zlib
from collections.abc import Iterator

import dns.asyncquery
import dns.asyncresolver
import dns.exception
import dns.message
import dns.name
import dns.query
import dns.rdata
import dns.resolver
import httptools
import pytest

from probes.errors import VERIFY_CODE_REASONS, describe, translate
from probes.result import Reason

PHASES = ("resolve", "connect", "tls", "query_response", None)


def subclasses(*roots: type[BaseException]) -> Iterator[type[BaseException]]:
    seen: set[type[BaseException]] = set()
    stack = list(roots)
    while stack:
        cls = stack.pop()
        if cls in seen:
            continue
        seen.add(cls)
        yield cls
        stack.extend(cls.__subclasses__())


def instance(cls: type[BaseException]) -> BaseException:
    """An instance of ``cls``; classes whose __init__ wants arguments get built bare."""
    if issubclass(cls, ssl.SSLCertVerificationError):
        exc = cls(1, "certificate verify failed")
        exc.verify_code = 20  # type: ignore[attr-defined]
        exc.verify_message = "unable to get local issuer certificate"  # type: ignore[attr-defined]
        return exc
    if issubclass(cls, asyncio.IncompleteReadError):
        return cls(b"", 10)
    if issubclass(cls, asyncio.LimitOverrunError):
        return cls("limit", 10)
    for args in ((), ("x",), (1,), (1, "x")):
        try:
            exc = cls(*args)
            str(exc)  # some classes only fail once described
        except Exception:
            continue
        return exc
    return cls.__new__(cls)


# what the probes can raise from the network, resolving, TLS and HTTP parsing
FOREIGN_ROOTS: tuple[type[BaseException], ...] = (
    ssl.SSLError,
    OSError,  # socket.gaierror, ConnectionError, TimeoutError, ...
    dns.exception.DNSException,
    httptools.HttpParserError,
    asyncio.IncompleteReadError,
    asyncio.LimitOverrunError,
    EOFError,
    zlib.error,  # decompressing a response body
)

# the libraries the probes talk to the network through; OSError subclasses of other
# libraries (urllib, ...) are not raised by probe code
PROBE_LIBRARIES = {
    "builtins",
    "socket",
    "ssl",
    "_ssl",
    "asyncio",
    "dns",
    "httptools",
    "zlib",
}
FOREIGN = sorted(
    {c for c in subclasses(*FOREIGN_ROOTS) if c.__module__.split(".")[0] in PROBE_LIBRARIES},
    key=lambda c: f"{c.__module__}.{c.__qualname__}",
)


@pytest.mark.parametrize("cls", FOREIGN, ids=lambda c: f"{c.__module__}.{c.__qualname__}")
@pytest.mark.parametrize("phase", PHASES)
def test_every_foreign_exception_is_mapped(cls: type[BaseException], phase: str | None) -> None:
    failed = translate(instance(cls), phase)
    assert failed is not None, f"{cls.__qualname__} raised in {phase} has no reason"
    assert failed.reason is not Reason.SUCCESS
    assert failed.detail


BUGS: tuple[type[BaseException], ...] = (
    KeyError,
    AttributeError,
    TypeError,
    ValueError,
    AssertionError,
    IndexError,
    ZeroDivisionError,
    RuntimeError,
    NotImplementedError,
    asyncio.InvalidStateError,
    asyncio.CancelledError,  # never a reason: cancellation must propagate
)


@pytest.mark.parametrize("cls", BUGS, ids=lambda c: c.__qualname__)
def test_bugs_are_not_translated(cls: type[BaseException]) -> None:
    for phase in PHASES:
        assert translate(instance(cls), phase) is None


@pytest.mark.parametrize(
    ("exc", "phase", "reason"),
    [
        (ConnectionRefusedError(errno.ECONNREFUSED, "refused"), "connect", Reason.CONNECT_REFUSED),
        (OSError(errno.ENETUNREACH, "unreachable"), "connect", Reason.CONNECT_UNREACHABLE),
        (OSError(errno.EHOSTUNREACH, "no route"), "connect", Reason.CONNECT_UNREACHABLE),
        (
            ConnectionResetError(errno.ECONNRESET, "reset"),
            "query_response",
            Reason.CONNECTION_RESET,
        ),
        (ConnectionResetError(errno.ECONNRESET, "reset"), "tls", Reason.TLS_HANDSHAKE_FAILED),
        (OSError(errno.ECONNRESET, "reset"), "tls", Reason.TLS_HANDSHAKE_FAILED),
        (BrokenPipeError(errno.EPIPE, "pipe"), "query_response", Reason.CONNECTION_RESET),
        (TimeoutError(), "connect", Reason.CONNECT_TIMEOUT),
        (TimeoutError(), "tls", Reason.TLS_HANDSHAKE_TIMEOUT),
        (TimeoutError(), "resolve", Reason.DNS_RESOLVE_TIMEOUT),
        (TimeoutError(), "query_response", Reason.TIMEOUT),
        (ssl.SSLError(1, "handshake failure"), "tls", Reason.TLS_HANDSHAKE_FAILED),
        (ssl.SSLEOFError(8, "eof"), "tls", Reason.TLS_HANDSHAKE_FAILED),
        (ssl.SSLEOFError(8, "eof"), "query_response", Reason.CONNECTION_CLOSED),
        (asyncio.IncompleteReadError(b"", 4), "query_response", Reason.CONNECTION_CLOSED),
        (asyncio.LimitOverrunError("long", 1), "query_response", Reason.BODY_TOO_LARGE),
        (dns.resolver.NXDOMAIN(), "resolve", Reason.DNS_NXDOMAIN),
        (dns.resolver.NoAnswer(), "resolve", Reason.DNS_NO_ADDRESS),
        (dns.exception.Timeout(), "resolve", Reason.DNS_RESOLVE_TIMEOUT),
        (httptools.HttpParserInvalidStatusError("bad"), "transfer", Reason.HTTP_PROTOCOL_ERROR),
        (zlib.error("invalid block type"), "transfer", Reason.HTTP_PROTOCOL_ERROR),
    ],
    ids=repr,
)
def test_mapping(exc: BaseException, phase: str, reason: Reason) -> None:
    failed = translate(exc, phase)
    assert failed is not None
    assert failed.reason is reason
    assert failed.detail.startswith(f"{phase}: ")


@pytest.mark.parametrize(("code", "reason"), sorted(VERIFY_CODE_REASONS.items()))
def test_verify_codes(code: int, reason: Reason) -> None:
    exc = ssl.SSLCertVerificationError(1, "certificate verify failed")
    exc.verify_code = code
    exc.verify_message = "x"
    failed = translate(exc, "tls")
    assert failed is not None and failed.reason is reason


def test_unknown_verify_code_is_untrusted() -> None:
    exc = ssl.SSLCertVerificationError(1, "certificate verify failed")
    exc.verify_code = 9999
    exc.verify_message = "new in OpenSSL 9"
    failed = translate(exc, "tls")
    assert failed is not None and failed.reason is Reason.TLS_UNTRUSTED
    assert "new in OpenSSL 9" in failed.detail


def test_verify_codes_cover_the_tls_reasons() -> None:
    assert {
        Reason.TLS_CERT_EXPIRED,
        Reason.TLS_CERT_NOT_YET_VALID,
        Reason.TLS_SELF_SIGNED,
        Reason.TLS_UNTRUSTED,
        Reason.TLS_HOSTNAME_MISMATCH,
    } == set(VERIFY_CODE_REASONS.values())


def test_describe_is_bounded() -> None:
    assert len(describe(OSError("x" * 10_000))) <= 300
    assert describe(KeyError()) == "KeyError"


def test_dns_modules_in_use_are_enumerated() -> None:
    # these modules define DNSException subclasses the dns probe and the resolver raise;
    # importing them above is what puts their classes into FOREIGN
    for module in (dns.query, dns.asyncquery, dns.message, dns.name, dns.rdata, dns.asyncresolver):
        assert module is not None
    assert dns.message.ShortHeader in FOREIGN
    assert dns.name.EmptyLabel in FOREIGN
