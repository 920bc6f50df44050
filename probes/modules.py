"""Typed probe modules: blackbox_exporter's module schema, plus seismo's additions.

An existing ``blackbox.yml`` validates unchanged. Unknown keys are errors. seismo adds:

- the ``tls`` prober (a pure handshake probe) with ``tls:`` settings;
- ``dns.transport_protocol: https`` (DNS-over-HTTPS) and ``dns.doh_path``;
- ``http.max_redirects``.

Defaults live here, in the models, so probe code never guesses.

    module = Module.model_validate({"prober": "http", "http": {"method": "HEAD"}})
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

import dns.exception
import dns.rcode
import dns.rdataclass
import dns.rdatatype
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

__all__ = [
    "KINDS",
    "SUPPORTED_PROBERS",
    "DNSProbe",
    "GRPCProbe",
    "HTTPProbe",
    "HeaderMatch",
    "ICMPProbe",
    "Module",
    "QueryResponse",
    "RRValidator",
    "TCPProbe",
    "TLSConfig",
    "TLSProbe",
    "parse_duration",
    "parse_size",
]

SUPPORTED_PROBERS = ("http", "tcp", "dns", "tls")
KINDS = (*SUPPORTED_PROBERS, "icmp", "grpc")

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|us|µs|ns|s|m|h|d|w|y)")
_UNIT_SECONDS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
    "d": 86400.0,
    "w": 604800.0,
    "y": 31536000.0,
}


def parse_duration(value: Any) -> float:
    """Parse a Prometheus duration (``5s``, ``1m30s``, ``250ms``) or a number of seconds.

    >>> parse_duration("1m30s")
    90.0
    """
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a duration (use e.g. 5s, 250ms, 1m30s)")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError(f"duration {value!r} must not be negative")
        return float(value)
    if not isinstance(value, str):
        raise ValueError(f"{value!r} is not a duration (use e.g. 5s, 250ms, 1m30s)")
    text = value.strip()
    pos, total = 0, 0.0
    for m in _DURATION_PART.finditer(text):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNIT_SECONDS[m.group(2)]
        pos = m.end()
    if pos != len(text) or not text:
        raise ValueError(f"{value!r} is not a duration (use e.g. 5s, 250ms, 1m30s)")
    return total


_SIZE = re.compile(r"^(\d+(?:\.\d+)?)\s*([KMGT]i?B|B)?$", re.IGNORECASE)
_SIZE_UNIT = {
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}


def parse_size(value: Any) -> int:
    """Parse a byte size (``10MB``, ``512KiB``, ``1024``); blackbox's ``body_size_limit``."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a size (use e.g. 10MB, 512KiB)")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"size {value!r} must not be negative")
        return value
    m = _SIZE.match(str(value).strip())
    if not m:
        raise ValueError(f"{value!r} is not a size (use e.g. 10MB, 512KiB)")
    unit = (m.group(2) or "B").lower()
    return int(float(m.group(1)) * _SIZE_UNIT[unit])


def _check_regex(value: str) -> str:
    try:
        re.compile(value)
    except re.error as exc:
        raise ValueError(f"{value!r} is not a valid regular expression: {exc}") from exc
    return value


Duration = Annotated[float, BeforeValidator(parse_duration)]
Size = Annotated[int, BeforeValidator(parse_size)]
Regex = Annotated[str, BeforeValidator(_check_regex)]
IPProtocol = Literal["ip4", "ip6", "tcp4", "tcp6", "udp4", "udp6", "ip", ""]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class TLSConfig(_Model):
    """Prometheus common ``tls_config``."""

    insecure_skip_verify: bool = False
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    ca: str | None = None
    cert: str | None = None
    key: str | None = None
    server_name: str | None = None
    min_version: Literal["TLS10", "TLS11", "TLS12", "TLS13"] | None = None
    max_version: Literal["TLS10", "TLS11", "TLS12", "TLS13"] | None = None

    @model_validator(mode="after")
    def _pairs(self) -> TLSConfig:
        if (self.cert_file or self.cert) and not (self.key_file or self.key):
            raise ValueError("a client certificate (cert_file) needs its key_file")
        if (self.key_file or self.key) and not (self.cert_file or self.cert):
            raise ValueError("key_file needs its cert_file")
        return self


class BasicAuth(_Model):
    username: str = ""
    password: str | None = None
    password_file: str | None = None


class Authorization(_Model):
    type: str = "Bearer"
    credentials: str | None = None
    credentials_file: str | None = None


class OAuth2(_Model):
    client_id: str
    client_secret: str | None = None
    client_secret_file: str | None = None
    scopes: list[str] = Field(default_factory=list)
    token_url: str
    endpoint_params: dict[str, str] = Field(default_factory=dict)
    tls_config: TLSConfig = TLSConfig()
    proxy_url: str | None = None


class HeaderMatch(_Model):
    header: str
    regexp: Regex
    allow_missing: bool = False


class HTTPProbe(_Model):
    valid_status_codes: list[int] = Field(default_factory=list)  # empty: 2xx
    valid_http_versions: list[str] = Field(default_factory=list)
    method: str = "GET"
    headers: dict[str, str] = Field(default_factory=dict)
    body: str | None = None
    body_file: str | None = None
    body_size_limit: Size = 0
    compression: Literal["", "gzip", "br", "deflate", "identity"] = ""
    follow_redirects: bool = True
    no_follow_redirects: bool | None = None  # deprecated blackbox spelling
    max_redirects: int = Field(default=10, ge=0, le=100)  # seismo
    fail_if_ssl: bool = False
    fail_if_not_ssl: bool = False
    fail_if_body_matches_regexp: list[Regex] = Field(default_factory=list)
    fail_if_body_not_matches_regexp: list[Regex] = Field(default_factory=list)
    fail_if_header_matches: list[HeaderMatch] = Field(default_factory=list)
    fail_if_header_not_matches: list[HeaderMatch] = Field(default_factory=list)
    tls_config: TLSConfig = TLSConfig()
    basic_auth: BasicAuth | None = None
    bearer_token: str | None = None
    bearer_token_file: str | None = None
    authorization: Authorization | None = None
    oauth2: OAuth2 | None = None
    proxy_url: str | None = None
    no_proxy: str | None = None
    proxy_from_environment: bool = False
    proxy_connect_header: dict[str, list[str]] = Field(default_factory=dict)
    skip_resolve_phase_with_proxy: bool = False
    enable_http2: bool = True
    preferred_ip_protocol: IPProtocol = "ip6"
    ip_protocol_fallback: bool = True
    hostname: str | None = None

    @field_validator("valid_status_codes")
    @classmethod
    def _status_range(cls, codes: list[int]) -> list[int]:
        for code in codes:
            if not 100 <= code <= 599:
                raise ValueError(f"status code {code} is outside 100-599")
        return codes

    @field_validator("valid_http_versions")
    @classmethod
    def _versions(cls, versions: list[str]) -> list[str]:
        for v in versions:
            if v not in ("HTTP/1.0", "HTTP/1.1", "HTTP/2", "HTTP/2.0", "HTTP/3", "HTTP/3.0"):
                raise ValueError(f"{v!r} is not an HTTP version (HTTP/1.0, HTTP/1.1, HTTP/2.0)")
        return versions

    @model_validator(mode="after")
    def _exclusive(self) -> HTTPProbe:
        if self.body is not None and self.body_file is not None:
            raise ValueError("body and body_file are mutually exclusive")
        if self.bearer_token and self.bearer_token_file:
            raise ValueError("bearer_token and bearer_token_file are mutually exclusive")
        if self.fail_if_ssl and self.fail_if_not_ssl:
            raise ValueError("fail_if_ssl and fail_if_not_ssl cannot both be true")
        return self

    @property
    def redirects_followed(self) -> bool:
        if self.no_follow_redirects is not None:
            return not self.no_follow_redirects
        return self.follow_redirects


class QueryResponse(_Model):
    expect: Regex | None = None
    send: str | None = None
    starttls: bool = False


class TCPProbe(_Model):
    preferred_ip_protocol: IPProtocol = "ip6"
    ip_protocol_fallback: bool = True
    source_ip_address: str | None = None
    query_response: list[QueryResponse] = Field(default_factory=list)
    tls: bool = False
    tls_config: TLSConfig = TLSConfig()


class RRValidator(_Model):
    fail_if_matches_regexp: list[Regex] = Field(default_factory=list)
    fail_if_all_match_regexp: list[Regex] = Field(default_factory=list)
    fail_if_not_matches_regexp: list[Regex] = Field(default_factory=list)
    fail_if_none_matches_regexp: list[Regex] = Field(default_factory=list)


class DNSProbe(_Model):
    preferred_ip_protocol: IPProtocol = "ip6"
    ip_protocol_fallback: bool = True
    source_ip_address: str | None = None
    transport_protocol: Literal["udp", "tcp", "https", ""] = "udp"  # "": udp, as blackbox
    dns_over_tls: bool = False
    doh_path: str = "/dns-query"  # seismo: path for transport_protocol https
    tls_config: TLSConfig = TLSConfig()
    query_name: str = ""
    query_type: str = "ANY"
    query_class: str = "IN"
    recursion_desired: bool = True
    valid_rcodes: list[str] = Field(default_factory=lambda: ["NOERROR"])
    validate_answer_rrs: RRValidator = RRValidator()
    validate_authority_rrs: RRValidator = RRValidator()
    validate_additional_rrs: RRValidator = RRValidator()

    @field_validator("query_type")
    @classmethod
    def _qtype(cls, value: str) -> str:
        try:
            dns.rdatatype.from_text(value.upper())
        except dns.exception.DNSException:
            raise ValueError(
                f"{value!r} is not a DNS record type (A, AAAA, MX, SOA, ...)"
            ) from None
        return value.upper()

    @field_validator("query_class")
    @classmethod
    def _qclass(cls, value: str) -> str:
        try:
            dns.rdataclass.from_text(value.upper())
        except dns.exception.DNSException:
            raise ValueError(f"{value!r} is not a DNS class (IN, CH, HS, ANY)") from None
        return value.upper()

    @field_validator("valid_rcodes")
    @classmethod
    def _rcodes(cls, values: list[str]) -> list[str]:
        for value in values:
            try:
                dns.rcode.from_text(value.upper())
            except dns.exception.DNSException:
                raise ValueError(
                    f"{value!r} is not a DNS rcode (NOERROR, NXDOMAIN, SERVFAIL, ...)"
                ) from None
        return [v.upper() for v in values]

    @model_validator(mode="after")
    def _dot_needs_tcp(self) -> DNSProbe:
        if self.dns_over_tls and self.transport_protocol not in ("tcp",):
            raise ValueError("dns_over_tls needs transport_protocol: tcp")
        return self


class TLSProbe(_Model):
    """seismo's pure TLS handshake probe."""

    preferred_ip_protocol: IPProtocol = "ip6"
    ip_protocol_fallback: bool = True
    tls_config: TLSConfig = TLSConfig()
    fail_if_expires_within: Duration = 0.0  # 0: only fail when expired
    fail_if_not_verified: bool = True


class ICMPProbe(_Model):
    preferred_ip_protocol: IPProtocol = "ip6"
    ip_protocol_fallback: bool = True
    source_ip_address: str | None = None
    dont_fragment: bool = False
    payload_size: int = 0
    ttl: int = 0


class GRPCProbe(_Model):
    service: str = ""
    preferred_ip_protocol: IPProtocol = "ip6"
    ip_protocol_fallback: bool = True
    tls: bool = False
    tls_config: TLSConfig = TLSConfig()


class Module(_Model):
    """One blackbox module. ``timeout`` is in seconds (None: the caller's default)."""

    prober: Literal["http", "tcp", "dns", "tls", "icmp", "grpc"]
    timeout: Duration | None = None
    http: HTTPProbe = HTTPProbe()
    tcp: TCPProbe = TCPProbe()
    dns: DNSProbe = DNSProbe()
    tls: TLSProbe = TLSProbe()
    icmp: ICMPProbe = ICMPProbe()
    grpc: GRPCProbe = GRPCProbe()

    @property
    def supported(self) -> bool:
        return self.prober in SUPPORTED_PROBERS

    @model_validator(mode="after")
    def _dns_needs_name(self) -> Module:
        if self.prober == "dns" and not self.dns.query_name:
            raise ValueError("a dns module needs dns.query_name")
        return self
