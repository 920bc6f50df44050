"""The one result type every probe kind returns, and the recorder that builds it.

A probe run records phases (``resolve``, ``connect``, ``tls``, ...), blackbox-style gauges
(``probe_http_status_code`` ...) and TLS facts into a :class:`Recorder`. The runner
(:func:`probes.run_probe`) turns the recorder into a frozen :class:`ProbeResult`.

Expected failures (NXDOMAIN, refused, a bad certificate, a 5xx) are data: a :class:`Reason`
from a closed set. Bugs are exceptions and are never turned into a reason here.

    rec = Recorder("http")
    with rec.phase("connect"):
        sock = await connect(...)
    rec.gauge("probe_http_status_code", 200, help="Response HTTP status code")
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import TracebackType
from typing import Any, NamedTuple, NoReturn

__all__ = [
    "TIMEOUT_REASONS",
    "CertInfo",
    "Measurement",
    "ProbeFailed",
    "ProbeResult",
    "Reason",
    "Recorder",
    "TLSInfo",
]


class Reason(StrEnum):
    """Why a probe run ended. ``SUCCESS`` or one failure reason from this closed set.

    The values are Prometheus label values (``reason=...``) and are documented in
    ``docs/reasons.md``; adding one is a public change.
    """

    SUCCESS = "success"
    # resolving the target's host name
    DNS_NXDOMAIN = "dns_nxdomain"
    DNS_NO_ADDRESS = "dns_no_address"
    DNS_RESOLVE_FAILED = "dns_resolve_failed"
    DNS_RESOLVE_TIMEOUT = "dns_resolve_timeout"
    # the TCP connection
    CONNECT_REFUSED = "connect_refused"
    CONNECT_TIMEOUT = "connect_timeout"
    CONNECT_UNREACHABLE = "connect_unreachable"
    CONNECTION_RESET = "connection_reset"
    CONNECTION_CLOSED = "connection_closed"
    # TLS
    TLS_HANDSHAKE_FAILED = "tls_handshake_failed"
    TLS_HANDSHAKE_TIMEOUT = "tls_handshake_timeout"
    TLS_CERT_EXPIRED = "tls_cert_expired"
    TLS_CERT_NOT_YET_VALID = "tls_cert_not_yet_valid"
    TLS_CERT_EXPIRING = "tls_cert_expiring"
    TLS_UNTRUSTED = "tls_untrusted"
    TLS_SELF_SIGNED = "tls_self_signed"
    TLS_HOSTNAME_MISMATCH = "tls_hostname_mismatch"
    TLS_REQUIRED = "tls_required"
    TLS_FORBIDDEN = "tls_forbidden"
    # HTTP
    HTTP_STATUS = "http_status"
    HTTP_VERSION = "http_version"
    HTTP_PROTOCOL_ERROR = "http_protocol_error"
    HTTP_TOO_MANY_REDIRECTS = "http_too_many_redirects"
    BODY_MISMATCH = "body_mismatch"
    HEADER_MISMATCH = "header_mismatch"
    BODY_TOO_LARGE = "body_too_large"
    # DNS probe (the target is a DNS server)
    DNS_RCODE = "dns_rcode"
    DNS_ANSWER_MISMATCH = "dns_answer_mismatch"
    DNS_PROTOCOL_ERROR = "dns_protocol_error"
    # TCP query_response
    TCP_EXPECT_MISMATCH = "tcp_expect_mismatch"
    # everything else
    TIMEOUT = "timeout"
    PROXY_ERROR = "proxy_error"
    CONFIG_ERROR = "config_error"
    UNSUPPORTED = "unsupported"
    INTERNAL_ERROR = "internal_error"


#: the reason a run gets when the scheduler's timeout fires during a phase
TIMEOUT_REASONS: Mapping[str | None, Reason] = {
    "resolve": Reason.DNS_RESOLVE_TIMEOUT,
    "connect": Reason.CONNECT_TIMEOUT,
    "tls": Reason.TLS_HANDSHAKE_TIMEOUT,
}


#: a gauge's identity in a :class:`Recorder`: its name and its labels, in order
GaugeKey = tuple[str, tuple[tuple[str, str], ...]]


class Measurement(NamedTuple):
    """One blackbox-style gauge sample, e.g. ``probe_http_status_code 200``.

    A named tuple, not a frozen dataclass: every probe builds about twenty, and a tuple is
    built in a third of the time.
    """

    name: str
    value: float
    labels: tuple[tuple[str, str], ...] = ()
    help: str = ""


@dataclass(frozen=True, slots=True)
class CertInfo:
    """Facts about one certificate of a presented chain. Times are Unix seconds."""

    subject: str
    issuer: str
    sans: tuple[str, ...]
    not_before: float
    not_after: float
    fingerprint_sha256: str
    serial: str
    #: the DNS names among ``sans`` (blackbox's ``subjectalternative`` label lists only these)
    dns_names: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "subject": self.subject,
            "issuer": self.issuer,
            "sans": list(self.sans),
            "not_before": self.not_before,
            "not_after": self.not_after,
            "fingerprint_sha256": self.fingerprint_sha256,
            "serial": self.serial,
        }


@dataclass(frozen=True, slots=True)
class TLSInfo:
    """What a TLS handshake showed. ``chain[0]`` is the leaf, as presented by the peer.

    ``verified`` says whether the chain verified against the configured trust;
    ``verify_error`` says why not (a TLS ``Reason``), ``None`` when it verified or
    verification was skipped (``insecure_skip_verify``).
    """

    version: str
    cipher: str
    server_name: str
    chain: tuple[CertInfo, ...]
    verified: bool
    verify_error: Reason | None = None
    verified_chain: tuple[CertInfo, ...] = ()

    @property
    def earliest_expiry(self) -> float | None:
        return min((c.not_after for c in self.chain), default=None)

    def to_json(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "cipher": self.cipher,
            "server_name": self.server_name,
            "verified": self.verified,
            "verify_error": self.verify_error.value if self.verify_error else None,
            "earliest_expiry": self.earliest_expiry,
            "chain": [c.to_json() for c in self.chain],
        }


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """The outcome of one probe run. Immutable; safe to share between tasks."""

    kind: str
    target: str
    reason: Reason
    detail: str
    duration_seconds: float
    phases: Mapping[str, float]
    measurements: tuple[Measurement, ...]
    tls: TLSInfo | None = None
    peer: str | None = None
    started_at: float = 0.0
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def success(self) -> bool:
        return self.reason is Reason.SUCCESS

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (used by the API, ``seismo probe --json`` and CTK providers)."""
        return {
            "kind": self.kind,
            "target": self.target,
            "success": self.success,
            "reason": self.reason.value,
            "detail": self.detail,
            "duration_seconds": self.duration_seconds,
            "phases": dict(self.phases),
            "peer": self.peer,
            "started_at": self.started_at,
            "tls": self.tls.to_json() if self.tls else None,
            "metrics": {_sample_key(m.name, m.labels): m.value for m in self.measurements},
            **({"extra": dict(self.extra)} if self.extra else {}),
        }


def _sample_key(name: str, labels: tuple[tuple[str, str], ...]) -> str:
    if not labels:
        return name
    inner = ",".join(f'{k}="{v}"' for k, v in labels)
    return f"{name}{{{inner}}}"


class ProbeFailed(Exception):
    """Raised inside a probe to end the run with an expected failure ``reason``."""

    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail


class _Phase:
    """The context manager behind :meth:`Recorder.phase` (a class: it runs on every probe).

    On a clean exit the phase's time is added and ``current_phase`` cleared. On an
    ``Exception`` the time is added, ``current_phase`` stays set, and a foreign exception is
    translated into a ``ProbeFailed``. On a ``BaseException`` that is not an ``Exception``
    (cancellation, the timeout) nothing is added and ``current_phase`` stays set, so the
    timeout can be blamed on this phase.
    """

    __slots__ = ("_name", "_rec", "_start")

    def __init__(self, rec: Recorder, name: str) -> None:
        self._rec = rec
        self._name = name
        self._start = 0.0

    def __enter__(self) -> None:
        rec, name = self._rec, self._name
        phases = rec.phases
        if name not in phases:
            phases[name] = 0.0
        rec.current_phase = name
        self._start = time.perf_counter()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            rec = self._rec
            rec.phases[self._name] += time.perf_counter() - self._start
            rec.current_phase = None
            return
        if not isinstance(exc, Exception):
            return
        self._rec.phases[self._name] += time.perf_counter() - self._start
        if isinstance(exc, ProbeFailed):
            return
        from probes.errors import translate  # local: errors imports this module

        failure = translate(exc, self._name)
        if failure is not None:
            raise failure from exc


class Recorder:
    """Collects phases, gauges and TLS facts while one probe runs.

    Phase times accumulate (an HTTP probe that follows a redirect adds both requests'
    ``connect`` times, as blackbox_exporter does). ``current_phase`` stays set when a phase
    is cancelled, so a timeout can be blamed on the phase it hit.
    """

    __slots__ = ("_gauges", "current_phase", "extra", "kind", "peer", "phases", "tls")

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.phases: dict[str, float] = {}
        # (name, labels) -> (value, help); Measurements are built once, in finish(): a probe
        # sets about twice as many gauges as it reports (precreated, then overwritten)
        self._gauges: dict[GaugeKey, tuple[float, str]] = {}
        self.tls: TLSInfo | None = None
        self.peer: str | None = None
        self.current_phase: str | None = None
        self.extra: dict[str, Any] = {}

    def phase(self, name: str) -> _Phase:
        """Time a phase; translate foreign exceptions raised in it into a ``ProbeFailed``."""
        return _Phase(self, name)

    def gauge(self, name: str, value: float, help: str = "", **labels: str) -> None:
        """Set a blackbox-style gauge (overwrites an earlier value with the same labels)."""
        self._gauges[(name, tuple(labels.items()))] = (float(value), help)

    def preset(self, gauges: Mapping[GaugeKey, tuple[float, str]]) -> None:
        """Set many gauges at once, from a prober's table of ``(name, labels) -> (value, help)``.

        One dict update instead of a call per gauge: a prober's precreated zeros are a
        constant table (built once at import).
        """
        self._gauges.update(gauges)

    def value(self, name: str, **labels: str) -> float | None:
        entry = self._gauges.get((name, tuple(labels.items())))
        return None if entry is None else entry[0]

    def fail(self, reason: Reason, detail: str) -> NoReturn:
        raise ProbeFailed(reason, detail)

    def finish(
        self, target: str, reason: Reason, detail: str, duration: float, started_at: float
    ) -> ProbeResult:
        self.gauge(
            "probe_success",
            1 if reason is Reason.SUCCESS else 0,
            help="Displays whether or not the probe was a success",
        )
        self.gauge(
            "probe_duration_seconds",
            duration,
            help="Returns how long the probe took to complete in seconds",
        )
        make = Measurement._make
        return ProbeResult(
            kind=self.kind,
            target=target,
            reason=reason,
            detail=detail,
            duration_seconds=duration,
            phases=dict(self.phases),
            measurements=tuple(
                [make((n, v, labels, h)) for (n, labels), (v, h) in self._gauges.items()]
            ),
            tls=self.tls,
            peer=self.peer,
            started_at=started_at,
            extra=dict(self.extra),
        )
