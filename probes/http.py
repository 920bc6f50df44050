"""The http probe: blackbox_exporter's http prober, with every phase measured on its own.

What it measures
    One HTTP/1.1 request to ``target`` (``http://`` is assumed when the target has no scheme),
    following redirects as blackbox does, and checks the final response against the module.
    Every request goes over a fresh connection (``Connection: close``, no pooling), so each
    probe pays, and measures, a real connect and a real TLS handshake. aiohttp's tracing
    merges TCP connect and TLS, so this probe has its own connection step
    (:class:`probes.connection.Connector`) and speaks HTTP/1.1 over it: the request is
    written directly, and the response is parsed by ``httptools`` (llhttp, Node's strict
    HTTP parser, in C).

Phases (``probe_http_duration_seconds{phase=...}``, summed over all redirects, as blackbox)
    ``resolve``     DNS lookup of the target host; again for a redirect to another host.
    ``connect``     TCP connect. Through a proxy: reaching the proxy, and for https the
                    ``CONNECT`` exchange (blackbox leaves the ``CONNECT`` round trip out of
                    every phase; seismo counts it here so the phases add up).
    ``tls``         TLS handshake (https only; absent for plain http).
    ``processing``  connection ready → first byte of the response (writing the request and
                    the server's think time; blackbox's ``gotConn → GotFirstResponseByte``).
    ``transfer``    first response byte → body complete, for the final response only
                    (blackbox sets no end time for redirect responses).
    A phase that fails still adds the time it took; a phase cut by the timeout adds nothing
    and is named in the result (``current_phase``).

Metrics (blackbox 0.23 names and HELP strings; created at the start so they exist on failure)
    ``probe_http_status_code``, ``probe_http_content_length`` (``-1`` when unknown, as Go),
    ``probe_http_uncompressed_body_length``, ``probe_http_redirects``, ``probe_http_ssl``,
    ``probe_http_version``, ``probe_http_duration_seconds{phase}``, ``probe_failed_due_to_regex``,
    ``probe_http_last_modified_timestamp_seconds`` (only with a parseable ``Last-Modified``),
    from the connection step ``probe_dns_lookup_time_seconds``, ``probe_ip_protocol``,
    ``probe_ip_addr_hash`` (of the first target, as blackbox), and after a TLS final response
    the TLS gauges of :func:`probes.certs.emit_tls_gauges`.

Outcomes (``Reason``)
    ``success``, or the first failing check, in this order (blackbox evaluates them all
    and reports only 0/1):
    ``http_status`` (not in ``valid_status_codes``, default 2xx); ``header_mismatch``;
    ``body_too_large`` (``body_size_limit``, applied after decompression); ``body_mismatch``;
    ``http_version`` (``valid_http_versions``); ``tls_forbidden`` (``fail_if_ssl``);
    ``tls_required`` (``fail_if_not_ssl``).
    Before a final response: ``http_too_many_redirects`` (more than ``max_redirects``,
    default 10); ``http_protocol_error`` (malformed response, undecodable compressed body,
    bad redirect); ``connection_closed``; ``proxy_error`` (proxy unreachable, or ``CONNECT``
    refused); ``config_error`` (``oauth2``, ``br`` without its module, an unreadable secret
    or body file, a bad target or header); and the resolve, connect, TLS and timeout reasons
    of :mod:`probes.errors` (a timeout in ``processing`` or ``transfer`` is ``timeout``).

Memory
    The body is streamed in ``READ_CHUNK`` pieces and decompressed with a bounded output per
    step; only its length is kept, plus, when body regexes are configured, its first
    ``BODY_MATCH_CAP`` bytes (decoded). Regexes see only that prefix: a flooding or huge
    target never grows the agent's memory (blackbox reads the whole body into memory).

Differences from blackbox, on purpose
    - HTTP/1.1 only: ``enable_http2`` is accepted and ignored (no ALPN), so
      ``probe_http_version`` is 1.1 where blackbox may negotiate HTTP/2 over TLS.
    - ``oauth2`` fails with ``config_error`` ("oauth2 is not supported by seismo yet").
    - ``compression: br`` needs the ``brotli`` (or ``brotlicffi``) module; without it the probe
      fails with ``config_error``. With ``compression`` set and no ``Accept-Encoding`` header,
      seismo sends ``Accept-Encoding: <compression>`` (blackbox sends none and then fails on
      an uncompressed answer). ``deflate`` accepts zlib-wrapped (RFC 9110) and raw streams.
    - A redirect that is not followed is the final response and its body is read, so body
      checks apply to it. The cookie jar is host-only (no Domain cookies).
    - Regexes use Python's ``re`` on bytes (Go uses RE2; common patterns agree).
    - The ``User-Agent`` default is ``seismo``.

    from probes import Module, run_probe
    module = Module.model_validate({"prober": "http", "http": {"valid_status_codes": [200]}})
    result = await run_probe(module, "https://example.com/", timeout=5)
"""

from __future__ import annotations

import asyncio
import base64
import email.utils
import importlib
import ipaddress
import re
import urllib.request
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from datetime import UTC
from http.cookies import CookieError, SimpleCookie
from pathlib import Path
from types import MappingProxyType
from typing import Any, Protocol
from urllib.parse import unquote, urljoin, urlsplit

from probes.connection import Connector
from probes.http1 import MAX_HEAD, READ_CHUNK, Head, Response, read_body, read_head, request_bytes
from probes.modules import HTTPProbe, Module, TLSConfig
from probes.result import GaugeKey, ProbeFailed, Reason, Recorder
from probes.stream import Stream

__all__ = ["BODY_MATCH_CAP", "MAX_HEAD", "PHASES", "READ_CHUNK", "probe"]

#: decoded body bytes kept for ``fail_if_body_[not_]matches_regexp``; the rest is only counted
BODY_MATCH_CAP = 4 * 1024 * 1024
PHASES = ("resolve", "connect", "tls", "processing", "transfer")
USER_AGENT = "seismo"

_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
# headers that seismo sets itself; a configured value would break the framing of the request
_OWN_HEADERS = frozenset({"host", "content-length", "transfer-encoding", "connection"})
# Go drops these on a redirect to a host that is not the same domain or a subdomain
_SENSITIVE_HEADERS = frozenset({"authorization", "www-authenticate", "cookie", "cookie2"})

_HELP: Mapping[str, str] = MappingProxyType(
    {
        "probe_http_duration_seconds": (
            "Duration of http request by phase, summed over all redirects"
        ),
        "probe_http_content_length": "Length of http content response",
        "probe_http_uncompressed_body_length": "Length of uncompressed response body",
        "probe_http_redirects": "The number of redirects",
        "probe_http_ssl": "Indicates if SSL was used for the final redirect",
        "probe_http_status_code": "Response HTTP status code",
        "probe_http_version": "Returns the version of HTTP of the probe response",
        "probe_failed_due_to_regex": "Indicates if probe failed due to regex",
        "probe_http_last_modified_timestamp_seconds": (
            "Returns the Last-Modified HTTP response header in unixtime"
        ),
        # set by Connector.resolve; restored here after a redirect re-resolves
        "probe_dns_lookup_time_seconds": "Returns the time taken for probe dns lookup in seconds",
        "probe_ip_protocol": "Specifies whether probe ip protocol is IP4 or IP6",
        "probe_ip_addr_hash": (
            "Specifies the hash of IP address. It's useful to detect if the IP address changes."
        ),
    }
)
_FIRST_TARGET_GAUGES = ("probe_dns_lookup_time_seconds", "probe_ip_protocol", "probe_ip_addr_hash")


async def probe(target: str, module: Module, rec: Recorder, connector: Connector) -> None:
    """Probe ``target`` over HTTP(S) with ``module.http``; see the module docstring."""
    rec.preset(_PRECREATED)
    try:
        await _probe(target, module.http, rec, connector)
    finally:
        # why finally: blackbox exports the phase times on failure too, and a timeout
        # cancels us mid-phase
        phases = rec.phases
        rec.preset({key: (phases.get(name, 0.0), _PHASE_HELP) for name, key in _PHASE_KEYS})


async def _probe(target: str, cfg: HTTPProbe, rec: Recorder, connector: Connector) -> None:
    decoder_factory = _decoder_factory(cfg.compression)
    if cfg.oauth2 is not None:
        rec.fail(Reason.CONFIG_ERROR, "oauth2 is not supported by seismo yet")
    url = connector.memo(_target_url, target)
    first = await _first_request(cfg, url, connector)
    proxy = _proxy_for(cfg, url)
    ip = None
    if proxy is None or not cfg.skip_resolve_phase_with_proxy:
        ip = await connector.resolve(
            url.host, rec, cfg.preferred_ip_protocol, cfg.ip_protocol_fallback
        )
    final = await _follow(_Hop(first, ip, url), cfg, proxy, rec, connector, decoder_factory)
    _check(cfg, final, rec)


# --- the request ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _URL:
    scheme: str  # "http" or "https"
    host: str  # lower-case name or IP literal, without brackets
    port: int
    authority: str  # host[:port] as written, for the Host header
    path: str  # origin-form request target: /path?query
    userinfo: tuple[str, str] | None = None

    @property
    def text(self) -> str:
        return f"{self.scheme}://{self.authority}{self.path}"

    def with_host(self, host: str) -> str:
        """The absolute URL with ``host`` (an IP) in place of the name; for proxies."""
        shown = f"[{host}]" if ":" in host else host
        if self.port != (443 if self.scheme == "https" else 80):
            shown = f"{shown}:{self.port}"
        return f"{self.scheme}://{shown}{self.path}"


def _parse_url(text: str) -> _URL:
    """Parse an absolute http(s) URL; ``ValueError`` naming the rule otherwise."""
    parts = urlsplit(text)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise ValueError(f"{text!r}: scheme must be http or https")
    host = (parts.hostname or "").lower()
    if not host:
        raise ValueError(f"{text!r}: missing host")
    port = parts.port or (443 if scheme == "https" else 80)  # .port raises on a bad port
    path = parts.path or "/"
    if parts.query:
        path = f"{path}?{parts.query}"
    userinfo = None
    if parts.username is not None:
        userinfo = (unquote(parts.username), unquote(parts.password or ""))
    authority = parts.netloc.rpartition("@")[2]
    return _URL(scheme, host, port, authority, path, userinfo)


def _target_url(target: str) -> _URL:
    text = target.strip()
    if not text.lower().startswith(("http://", "https://")):
        text = "http://" + text  # blackbox's rule
    try:
        return _parse_url(text)
    except ValueError as exc:
        raise ProbeFailed(Reason.CONFIG_ERROR, f"target: {exc}") from None


@dataclass(frozen=True, slots=True)
class _Request:
    method: str
    url: _URL
    headers: tuple[tuple[str, str], ...]  # configured headers, minus the ones we set
    body: bytes
    host_header: str
    server_name: str  # SNI and the name the certificate must match
    tls_config: TLSConfig
    authorization: str | None  # from basic_auth / bearer_token / authorization: every hop
    accept_encoding: str | None
    #: the request's bytes as sent straight to the server without cookies, made once with
    #: the memoised first request (None: made at each send)
    wire: bytes | None = None


@dataclass(frozen=True, slots=True)
class _Hop:
    request: _Request
    ip: str | None  # None: ask the proxy by name (skip_resolve_phase_with_proxy)
    first_url: _URL


async def _first_request(cfg: HTTPProbe, url: _URL, connector: Connector) -> _Request:
    """The first request, and its bytes: the same at every probe of a config and a target
    while its secrets and body stay the same (they are read anew, as files may change)."""
    body = await _request_body(cfg)
    authorization = await _authorization(cfg, url)
    return connector.memo.keyed(
        (id(cfg), url, body, authorization), _build_first_request, cfg, url, body, authorization
    )


def _build_first_request(
    cfg: HTTPProbe, url: _URL, body: bytes, authorization: str | None
) -> _Request:
    headers = tuple((k, v) for k, v in cfg.headers.items() if k.lower() not in _OWN_HEADERS)
    host_override = next((v for k, v in cfg.headers.items() if k.lower() == "host"), None)
    # blackbox 0.23: a Host header also names the TLS server when server_name is unset
    server_name = _strip_port(host_override) if host_override else url.host
    accept = cfg.compression if cfg.compression not in ("", "identity") else None
    request = _Request(
        method=cfg.method,
        url=url,
        headers=headers,
        body=body,
        host_header=host_override or url.authority,
        server_name=server_name,
        tls_config=cfg.tls_config,
        authorization=authorization,
        accept_encoding=accept,
    )
    try:
        wire = request_bytes(request.method, url.path, _wire_headers(request, None), body)
    except ProbeFailed:
        return request  # a bad header fails at the send, after the connect, as it always has
    return replace(request, wire=wire)


def _strip_port(authority: str) -> str:
    if authority.startswith("["):
        return authority[1:].partition("]")[0]
    return authority.rpartition(":")[0] if authority.count(":") == 1 else authority


async def _read_config_file(path: str, what: str) -> bytes:
    try:
        # why a thread: file reads block, and this runs on the prober's event loop
        return await asyncio.to_thread(Path(path).read_bytes)
    except OSError as exc:
        raise ProbeFailed(Reason.CONFIG_ERROR, f"{what} {path!r}: {exc.strerror}") from None


async def _request_body(cfg: HTTPProbe) -> bytes:
    if cfg.body_file is not None:
        return await _read_config_file(cfg.body_file, "body_file")
    return (cfg.body or "").encode()


async def _secret(value: str | None, path: str | None, what: str) -> str:
    if path is not None:
        # Prometheus' common config trims secret files (a trailing newline is not a secret)
        return (await _read_config_file(path, what)).decode().strip()
    return value or ""


async def _authorization(cfg: HTTPProbe, url: _URL) -> str | None:
    if cfg.basic_auth is not None:
        auth = cfg.basic_auth
        password = await _secret(auth.password, auth.password_file, "basic_auth.password_file")
        return _basic(auth.username, password)
    if cfg.bearer_token or cfg.bearer_token_file:
        token = await _secret(cfg.bearer_token, cfg.bearer_token_file, "bearer_token_file")
        return f"Bearer {token}"
    if cfg.authorization is not None:
        auth2 = cfg.authorization
        creds = await _secret(
            auth2.credentials, auth2.credentials_file, "authorization.credentials_file"
        )
        return f"{auth2.type} {creds}"
    if url.userinfo is not None:  # Go's client turns URL userinfo into basic auth
        return _basic(*url.userinfo)
    return None


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode("ascii")


def _wire_headers(request: _Request, cookie: str | None) -> list[tuple[str, str]]:
    """The request's header lines, in the order they are sent."""
    names = {k.lower() for k, _ in request.headers}
    out = [("Host", request.host_header)]
    if "user-agent" not in names:
        out.append(("User-Agent", USER_AGENT))
    for name, value in request.headers:
        if cookie and name.lower() == "cookie":
            # the jar's cookies join a configured Cookie header, as Go's AddCookie does
            value, cookie = f"{value}; {cookie}", None
        out.append((name, value))
    if request.authorization and "authorization" not in names:
        out.append(("Authorization", request.authorization))
    if request.accept_encoding and "accept-encoding" not in names:
        out.append(("Accept-Encoding", request.accept_encoding))
    if cookie:
        out.append(("Cookie", cookie))
    if request.body or request.method in ("POST", "PUT", "PATCH"):
        out.append(("Content-Length", str(len(request.body))))
    out.append(("Connection", "close"))
    return out


# --- proxies ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Proxy:
    host: str
    port: int
    authorization: str | None  # Proxy-Authorization from the proxy URL's userinfo

    @property
    def authority(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def _proxy_for(cfg: HTTPProbe, url: _URL) -> _Proxy | None:
    text = cfg.proxy_url
    if text is None and cfg.proxy_from_environment:
        if urllib.request.proxy_bypass_environment(url.host):  # type: ignore[attr-defined]
            return None
        text = urllib.request.getproxies_environment().get(url.scheme)
    if not text or (cfg.no_proxy and _bypassed(url.host, cfg.no_proxy)):
        return None
    try:
        parsed = _parse_url(text if "://" in text else f"http://{text}")
    except ValueError as exc:
        raise ProbeFailed(Reason.CONFIG_ERROR, f"proxy_url: {exc}") from None
    if parsed.scheme != "http":
        raise ProbeFailed(Reason.CONFIG_ERROR, "proxy_url: only http:// proxies are supported")
    auth = _basic(*parsed.userinfo) if parsed.userinfo else None
    return _Proxy(parsed.host, parsed.port, auth)


def _bypassed(host: str, no_proxy: str) -> bool:
    """Go's ``NO_PROXY`` rules, simplified: ``*``, IPs and CIDRs, domains and subdomains."""
    for raw in no_proxy.split(","):
        entry = _strip_port(raw.strip().lower()) if "/" not in raw else raw.strip()
        if not entry:
            continue
        if entry == "*":
            return True
        try:
            network = ipaddress.ip_network(entry, strict=False)
        except ValueError:
            domain = entry.lstrip(".")
            if host == domain or host.endswith("." + domain):
                return True
            continue
        try:
            if ipaddress.ip_address(host) in network:
                return True
        except ValueError:
            continue
    return False


# --- the connection -----------------------------------------------------------------------


@dataclass(slots=True)
class _Conn:
    stream: Stream
    tls: bool

    def close(self, *, complete: bool) -> None:
        # why no waiting for the close: a TLS peer that never answers close_notify would add
        # its silence to the probe. A complete exchange closes gracefully (asyncio bounds the
        # TLS shutdown); anything else, e.g. a flood we stopped reading, is aborted at once.
        if complete:
            self.stream.close()
        else:
            self.stream.abort()


async def _open(
    hop: _Hop, proxy: _Proxy | None, cfg: HTTPProbe, rec: Recorder, connector: Connector
) -> _Conn:
    url = hop.request.url
    if proxy is None:
        assert hop.ip is not None  # resolved whenever there is no proxy
        stream = await connector.connect(hop.ip, url.port, rec)
    else:
        stream = await _open_proxy(proxy, cfg, rec, connector)
    try:
        if url.scheme == "https":
            if proxy is not None:
                authority = _authority(hop.ip or url.host, url.port)
                await _tunnel(stream, authority, proxy, cfg, rec)
            await connector.start_tls(stream, hop.request.tls_config, hop.request.server_name, rec)
    except BaseException:
        stream.abort()
        raise
    return _Conn(stream, url.scheme == "https")


def _authority(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def _open_proxy(proxy: _Proxy, cfg: HTTPProbe, rec: Recorder, connector: Connector) -> Stream:
    try:
        ip = await _proxy_ip(proxy, cfg, rec, connector)
        return await connector.connect(ip, proxy.port, rec)
    except ProbeFailed as failed:
        raise ProbeFailed(
            Reason.PROXY_ERROR, f"proxy {proxy.authority}: {failed.detail}"
        ) from failed


async def _proxy_ip(proxy: _Proxy, cfg: HTTPProbe, rec: Recorder, connector: Connector) -> str:
    try:
        return str(ipaddress.ip_address(proxy.host))
    except ValueError:
        pass
    # A scratch recorder: the proxy's address must not replace the target's probe_ip_* gauges.
    # Its lookup time counts as connect (reaching the proxy), and a timeout is blamed there.
    scratch = Recorder(rec.kind)
    rec.current_phase = "connect"
    ip = await connector.resolve(
        proxy.host, scratch, cfg.preferred_ip_protocol, cfg.ip_protocol_fallback
    )
    rec.phases["connect"] = rec.phases.get("connect", 0.0) + scratch.phases.get("resolve", 0.0)
    return ip


async def _tunnel(
    stream: Stream, authority: str, proxy: _Proxy, cfg: HTTPProbe, rec: Recorder
) -> None:
    """``CONNECT authority`` through the proxy (phase ``connect``)."""
    headers = [("Host", authority)]
    if proxy.authorization:
        headers.append(("Proxy-Authorization", proxy.authorization))
    headers += [(k, v) for k, values in cfg.proxy_connect_header.items() for v in values]
    try:
        data = request_bytes("CONNECT", authority, headers)
    except ProbeFailed as failed:
        raise ProbeFailed(Reason.CONFIG_ERROR, f"proxy_connect_header: {failed.detail}") from None
    response = Response("CONNECT")
    with rec.phase("connect"):
        stream.write(data)
        await stream.drain()
        head = await read_head(response, stream, b"")
    if not 200 <= head.status < 300:
        rec.fail(
            Reason.PROXY_ERROR,
            f"proxy {proxy.authority} answered CONNECT {authority} with {head.status}",
        )
    if response.has_body_bytes:
        rec.fail(Reason.PROXY_ERROR, f"proxy {proxy.authority} sent data before the TLS handshake")


# --- the exchange -------------------------------------------------------------------------


async def _exchange(
    conn: _Conn, hop: _Hop, proxy: _Proxy | None, cookie: str | None, rec: Recorder
) -> tuple[Response, Head]:
    """Send the request and read the response head (phases processing, then transfer)."""
    request = hop.request
    if proxy is not None and not conn.tls:
        # plain http through a proxy: absolute-form, with the resolved IP as blackbox does
        target = request.url.with_host(hop.ip) if hop.ip else request.url.text
        extra = (("Proxy-Authorization", proxy.authorization),) if proxy.authorization else ()
        request = _with_headers(request, extra)
        payload = request_bytes(
            request.method, target, _wire_headers(request, cookie), request.body
        )
    elif cookie is None and request.wire is not None:
        payload = request.wire
    else:
        payload = request_bytes(
            request.method, request.url.path, _wire_headers(request, cookie), request.body
        )
    response = Response(request.method)
    stream = conn.stream
    with rec.phase("processing"):
        stream.write(payload)
        await stream.drain()
        first = await stream.read(READ_CHUNK)
    if not first:
        rec.fail(Reason.CONNECTION_CLOSED, "the server closed the connection without a response")
    with rec.phase("transfer"):
        head = await read_head(response, stream, first)
    return response, head


def _with_headers(request: _Request, extra: tuple[tuple[str, str], ...]) -> _Request:
    if not extra:
        return request
    return _Request(
        request.method,
        request.url,
        request.headers + extra,
        request.body,
        request.host_header,
        request.server_name,
        request.tls_config,
        request.authorization,
        request.accept_encoding,
    )


# --- redirects ----------------------------------------------------------------------------


class _Cookies:
    """A per-probe, host-only cookie jar (blackbox carries cookies across redirects)."""

    __slots__ = ("_jar",)

    def __init__(self) -> None:
        self._jar: dict[str, dict[str, str]] = {}

    def store(self, host: str, head: Head) -> None:
        for line in head.values("set-cookie"):
            parsed: SimpleCookie = SimpleCookie()
            try:
                parsed.load(line)
            except CookieError:
                continue  # a browser ignores a malformed cookie too
            for name, morsel in parsed.items():
                if morsel["max-age"] in ("0",) or morsel.value == "":
                    self._jar.get(host, {}).pop(name, None)
                else:
                    self._jar.setdefault(host, {})[name] = morsel.value

    def header(self, host: str) -> str | None:
        return "; ".join(f"{k}={v}" for k, v in self._jar.get(host, {}).items()) or None


def _redirect_location(head: Head) -> str | None:
    if head.status not in _REDIRECT_STATUSES:
        return None
    return head.first("location")  # a 3xx without Location is a final response, as in Go


def _next_request(request: _Request, location: str, status: int, first: _URL) -> _Request:
    """The request Go's client would send for this redirect."""
    try:
        url = _parse_url(urljoin(request.url.text, location))
    except ValueError as exc:
        raise ProbeFailed(Reason.HTTP_PROTOCOL_ERROR, f"redirect to {location!r}: {exc}") from None
    method, body = request.method, request.body
    if status in (301, 302, 303):
        body = b""
        if method not in ("GET", "HEAD"):
            method = "GET"
    relative = not urlsplit(location).scheme
    same_origin = (url.host, url.port) == (first.host, first.port)
    headers = request.headers
    if not _same_domain(url.host, request.url.host):
        headers = tuple((k, v) for k, v in headers if k.lower() not in _SENSITIVE_HEADERS)
    tls_config = request.tls_config
    if not same_origin:
        # blackbox uses a transport without server_name for other hosts
        tls_config = tls_config.model_copy(update={"server_name": None})
    return _Request(
        method=method,
        url=url,
        headers=headers,
        body=body,
        # Go keeps a custom Host only through a relative redirect
        host_header=request.host_header if relative else url.authority,
        server_name=request.server_name if same_origin else url.host,
        tls_config=tls_config,
        authorization=request.authorization,
        accept_encoding=request.accept_encoding,
    )


def _same_domain(host: str, previous: str) -> bool:
    return host == previous or host.endswith("." + previous)


async def _next_hop(
    hop: _Hop,
    request: _Request,
    cfg: HTTPProbe,
    proxy: _Proxy | None,
    rec: Recorder,
    connector: Connector,
) -> _Hop:
    if request.url.host == hop.request.url.host:
        return _Hop(request, hop.ip, hop.first_url)
    if proxy is not None:
        return _Hop(request, None, hop.first_url)  # the proxy resolves other hosts
    kept = {name: rec.value(name) for name in _FIRST_TARGET_GAUGES}
    ip = await connector.resolve(
        request.url.host, rec, cfg.preferred_ip_protocol, cfg.ip_protocol_fallback
    )
    # blackbox's probe_ip_* and probe_dns_lookup_time_seconds describe the first target
    for name, value in kept.items():
        if value is not None:
            _set(rec, name, value)
    return _Hop(request, ip, hop.first_url)


# --- the final response -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Final:
    head: Head
    tls: bool
    body_length: int
    body_prefix: bytes | bytearray  # up to BODY_MATCH_CAP decoded bytes, when regexes need it
    too_large: bool


async def _follow(
    hop: _Hop,
    cfg: HTTPProbe,
    proxy: _Proxy | None,
    rec: Recorder,
    connector: Connector,
    decoder_factory: _DecoderFactory,
) -> _Final:
    """Run the request and its redirects; return the final response, its body read."""
    redirects = 0
    cookies = _Cookies()
    while True:
        conn = await _open(hop, proxy, cfg, rec, connector)
        complete = False
        try:
            transfer_before = rec.phases.get("transfer")
            cookie = cookies.header(hop.request.url.host)
            response, head = await _exchange(conn, hop, proxy, cookie, rec)
            cookies.store(hop.request.url.host, head)
            location = _redirect_location(head)
            if location is not None:
                redirects += 1
                _set(rec, "probe_http_redirects", redirects)
            if location is None or not cfg.redirects_followed:
                final = await _finish(
                    conn, response, head, hop, cfg, rec, connector, decoder_factory
                )
                complete = not final.too_large
                return final
            if redirects > cfg.max_redirects:
                _record_head(rec, head, hop.request.method, connector)
                rec.fail(
                    Reason.HTTP_TOO_MANY_REDIRECTS,
                    f"more than {cfg.max_redirects} redirects (last to {location})",
                )
            _undo_transfer(rec, transfer_before)
            request = _next_request(hop.request, location, head.status, hop.first_url)
        finally:
            conn.close(complete=complete)
        hop = await _next_hop(hop, request, cfg, proxy, rec, connector)


def _undo_transfer(rec: Recorder, before: float | None) -> None:
    # blackbox only times the transfer of the final response; reading a redirect's head is
    # not counted anywhere
    if before is None:
        rec.phases.pop("transfer", None)
    else:
        rec.phases["transfer"] = before


async def _finish(
    conn: _Conn,
    response: Response,
    head: Head,
    hop: _Hop,
    cfg: HTTPProbe,
    rec: Recorder,
    connector: Connector,
    decoder_factory: _DecoderFactory,
) -> _Final:
    _record_head(rec, head, hop.request.method, connector)
    _set(rec, "probe_http_ssl", 1 if conn.tls else 0)
    rec.extra["final_url"] = hop.request.url.text
    if conn.tls:
        _emit_tls_gauges(rec)
    else:
        rec.tls = None  # TLS facts describe the final response, as blackbox's resp.TLS
    wants_body = bool(cfg.fail_if_body_matches_regexp or cfg.fail_if_body_not_matches_regexp)
    sink = _BodySink(decoder_factory(), cfg.body_size_limit, BODY_MATCH_CAP if wants_body else 0)
    with rec.phase("transfer"):
        if await read_body(response, conn.stream, sink.feed):
            sink.finish()
    _set(rec, "probe_http_uncompressed_body_length", sink.length)
    return _Final(head, conn.tls, sink.length, sink.kept, sink.too_large)


def _emit_tls_gauges(rec: Recorder) -> None:
    from probes.certs import emit_tls_gauges  # local: certs loads cryptography lazily

    emit_tls_gauges(rec)


def _record_head(rec: Recorder, head: Head, method: str, connector: Connector) -> None:
    _set(rec, "probe_http_status_code", head.status)
    _set(rec, "probe_http_content_length", _content_length(head, method))
    _set(rec, "probe_http_version", float(head.version))
    # a static file's Last-Modified is the same at every probe, and parsing the date is
    # more work than the rest of the head
    modified = connector.memo(_last_modified, head.first("last-modified"))
    if modified is not None:
        _set(rec, "probe_http_last_modified_timestamp_seconds", modified)


def _content_length(head: Head, method: str) -> int:
    """Go's ``resp.ContentLength``: the declared length, ``-1`` when unknown."""
    declared = head.first("content-length")
    length = int(declared) if declared and declared.strip().isdigit() else -1
    if method == "HEAD":
        return length
    if head.status < 200 or head.status in (204, 304):
        return 0
    if "chunked" in (head.first("transfer-encoding") or "").lower():
        return -1
    return length


def _last_modified(value: str | None) -> float | None:
    if not value:
        return None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None  # blackbox leaves the gauge out for an unparseable date
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return float(int(when.timestamp()))


# --- the body -----------------------------------------------------------------------------


class _Decoder(Protocol):
    def decode(self, data: bytes) -> Iterator[bytes]: ...

    def flush(self) -> Iterator[bytes]: ...


class _DecoderFactory(Protocol):
    def __call__(self) -> _Decoder: ...


class _Identity:
    __slots__ = ()

    def decode(self, data: bytes) -> Iterator[bytes]:
        if data:
            yield data

    def flush(self) -> Iterator[bytes]:
        return iter(())


class _Zlib:
    """gzip or deflate, producing at most ``READ_CHUNK`` bytes per step (no zip bombs)."""

    __slots__ = ("_d", "_name", "_pending", "_seen")

    def __init__(self, name: str) -> None:
        self._name = name
        self._d: Any = zlib.decompressobj(31) if name == "gzip" else None
        self._pending = b""  # deflate: the first bytes, until the wrapper is known
        self._seen = False

    def decode(self, data: bytes) -> Iterator[bytes]:
        if self._d is None:
            self._pending += data
            if len(self._pending) < 2:
                return
            data, self._pending = self._pending, b""
            self._d = zlib.decompressobj(15 if _zlib_wrapped(data) else -15)
        self._seen = self._seen or bool(data)
        try:
            while data and not self._d.eof:
                out = self._d.decompress(data, READ_CHUNK)
                if out:
                    yield out
                data = self._d.unconsumed_tail
                if not data and len(out) == READ_CHUNK:
                    yield from self._drain()
        except zlib.error as exc:
            raise ProbeFailed(
                Reason.HTTP_PROTOCOL_ERROR, f"response body is not valid {self._name}: {exc}"
            ) from None

    def _drain(self) -> Iterator[bytes]:
        # output may be pending inside zlib after a full READ_CHUNK; pull it step by step
        while not self._d.eof:
            out = self._d.decompress(b"", READ_CHUNK)
            if not out:
                return
            yield out

    def flush(self) -> Iterator[bytes]:
        if self._pending:
            yield from self.decode(b"")
        if self._seen and self._d is not None and not self._d.eof:
            raise ProbeFailed(Reason.HTTP_PROTOCOL_ERROR, f"truncated {self._name} response body")


def _zlib_wrapped(data: bytes) -> bool:
    """An RFC 1950 header (what RFC 9110 calls deflate), not a raw deflate stream."""
    return data[0] & 0x0F == 8 and (data[0] << 8 | data[1]) % 31 == 0


class _Brotli:
    """br via the optional ``brotli``/``brotlicffi`` module (not installed in CI here)."""

    __slots__ = ("_d", "_error")

    # brotli can expand one input byte a lot: feed small slices to bound each output
    _SLICE = 1024

    def __init__(self, module: Any) -> None:
        self._d = module.Decompressor()
        self._error: type[Exception] = getattr(module, "error", Exception)

    def decode(self, data: bytes) -> Iterator[bytes]:
        for start in range(0, len(data), self._SLICE):
            try:
                out = self._d.process(data[start : start + self._SLICE])
            except self._error as exc:
                raise ProbeFailed(
                    Reason.HTTP_PROTOCOL_ERROR, f"response body is not valid br: {exc}"
                ) from None
            if out:
                yield out

    def flush(self) -> Iterator[bytes]:
        return iter(())


def _decoder_factory(compression: str) -> _DecoderFactory:
    """Check ``compression`` before any network work; ``config_error`` if unusable."""
    if compression in ("gzip", "deflate"):
        return lambda: _Zlib(compression)
    if compression == "br":
        module = _brotli_module()
        return lambda: _Brotli(module)
    return _Identity


def _brotli_module() -> Any:
    for name in ("brotli", "brotlicffi"):
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    raise ProbeFailed(
        Reason.CONFIG_ERROR,
        "compression: br needs the Python module 'brotli' (or 'brotlicffi'), "
        "which is not installed; install it or use gzip/deflate",
    )


class _BodySink:
    """Counts the decoded body and keeps at most ``keep`` bytes of it."""

    __slots__ = ("_decoder", "_keep", "_limit", "kept", "length", "too_large")

    def __init__(self, decoder: _Decoder, limit: int, keep: int) -> None:
        self._decoder = decoder
        self._limit = limit
        self._keep = keep
        self.kept = bytearray()
        self.length = 0
        self.too_large = False

    def feed(self, raw: bytes) -> bool:
        """Take raw body bytes; True once no more are wanted (the limit was passed)."""
        for piece in self._decoder.decode(raw):
            self._take(piece)
            if self.too_large:
                return True  # stop decompressing: the rest would be thrown away
        return False

    def finish(self) -> None:
        for piece in self._decoder.flush():
            self._take(piece)

    def _take(self, piece: bytes) -> None:
        if self._limit and self.length + len(piece) > self._limit:
            # as Go's MaxBytesReader: the reader delivers ``limit`` bytes, then fails
            piece = piece[: self._limit - self.length]
            self.too_large = True
        self.length += len(piece)
        room = self._keep - len(self.kept)
        if room > 0:
            self.kept += piece[:room]


# --- the verdict --------------------------------------------------------------------------


def _check(cfg: HTTPProbe, final: _Final, rec: Recorder) -> None:
    """Judge the final response in blackbox's order; the first failure is the reason."""
    status = final.head.status
    if cfg.valid_status_codes:
        if status not in cfg.valid_status_codes:
            rec.fail(
                Reason.HTTP_STATUS,
                f"status {status}, valid: {', '.join(map(str, cfg.valid_status_codes))}",
            )
    elif not 200 <= status < 300:
        rec.fail(Reason.HTTP_STATUS, f"status {status}, valid: 2xx")
    if cfg.fail_if_header_matches or cfg.fail_if_header_not_matches:
        problem = _header_problem(cfg, final.head)
        _set(rec, "probe_failed_due_to_regex", 1 if problem else 0)
        if problem:
            rec.fail(Reason.HEADER_MISMATCH, problem)
    if final.too_large:
        rec.fail(
            Reason.BODY_TOO_LARGE,
            f"body is larger than body_size_limit ({cfg.body_size_limit} bytes)",
        )
    if cfg.fail_if_body_matches_regexp or cfg.fail_if_body_not_matches_regexp:
        problem = _body_problem(cfg, final.body_prefix)
        _set(rec, "probe_failed_due_to_regex", 1 if problem else 0)
        if problem:
            rec.fail(Reason.BODY_MISMATCH, problem)
    proto = f"HTTP/{final.head.version}"
    if cfg.valid_http_versions and proto not in cfg.valid_http_versions:
        rec.fail(
            Reason.HTTP_VERSION,
            f"{proto}, valid: {', '.join(cfg.valid_http_versions)} (seismo speaks HTTP/1.1)",
        )
    if final.tls and cfg.fail_if_ssl:
        rec.fail(Reason.TLS_FORBIDDEN, "the final response came over TLS (fail_if_ssl)")
    if not final.tls and cfg.fail_if_not_ssl:
        rec.fail(Reason.TLS_REQUIRED, "the final response did not come over TLS (fail_if_not_ssl)")


def _header_problem(cfg: HTTPProbe, head: Head) -> str | None:
    for spec in cfg.fail_if_header_matches:
        values = head.values(spec.header.lower())
        if not values and not spec.allow_missing:
            return f"header {spec.header} is missing"
        if any(re.search(spec.regexp, v) for v in values):
            return f"header {spec.header} matched {spec.regexp!r}"
    for spec in cfg.fail_if_header_not_matches:
        values = head.values(spec.header.lower())
        if not values:
            if spec.allow_missing:
                continue
            return f"header {spec.header} is missing"
        if not any(re.search(spec.regexp, v) for v in values):
            return f"header {spec.header} did not match {spec.regexp!r}"
    return None


def _body_problem(cfg: HTTPProbe, body: bytes | bytearray) -> str | None:
    for pattern in cfg.fail_if_body_matches_regexp:
        if _search(pattern, body):
            return f"body matched {pattern!r}"
    for pattern in cfg.fail_if_body_not_matches_regexp:
        if not _search(pattern, body):
            return f"body did not match {pattern!r}"
    return None


def _search(pattern: str, body: bytes | bytearray) -> bool:
    # bytes first: Go's RE2 matches bytes, and it avoids a decoded copy of the body
    try:
        compiled = re.compile(pattern.encode())
    except re.error:  # e.g. \u escapes, which only str patterns know
        return re.search(pattern, body.decode("utf-8", "replace")) is not None
    return compiled.search(body) is not None


# --- gauges -------------------------------------------------------------------------------


def _set(rec: Recorder, name: str, value: float, **labels: str) -> None:
    rec.gauge(name, value, help=_HELP[name], **labels)


def _gauge_table(values: Mapping[GaugeKey, float]) -> Mapping[GaugeKey, tuple[float, str]]:
    return MappingProxyType({key: (value, _HELP[key[0]]) for key, value in values.items()})


# blackbox registers these before probing, so they exist (as 0) when the probe fails
_PRECREATED = _gauge_table(
    {
        **{("probe_http_duration_seconds", (("phase", name),)): 0.0 for name in PHASES},
        **{
            (name, ()): 0.0
            for name in (
                "probe_http_content_length",
                "probe_http_uncompressed_body_length",
                "probe_http_redirects",
                "probe_http_ssl",
                "probe_http_status_code",
                "probe_http_version",
                "probe_failed_due_to_regex",
            )
        },
    }
)
_PHASE_KEYS = tuple((name, ("probe_http_duration_seconds", (("phase", name),))) for name in PHASES)
_PHASE_HELP = _HELP["probe_http_duration_seconds"]
