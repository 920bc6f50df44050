"""The connection step shared by the http, tcp, tls and dns-over-tls probes.

It measures each phase on its own, which aiohttp's tracing cannot (it merges connect and TLS):

- ``resolve``: IP literals skip it; names are looked up in the hosts file, then with dnspython
  (so NXDOMAIN and "no address of that family" are distinct reasons). Honours blackbox's
  ``preferred_ip_protocol`` and ``ip_protocol_fallback``.
- ``connect``: one TCP connect to the chosen address (a :class:`probes.stream.Stream`).
- ``tls``: the TLS handshake over that connection, in place.

Gauges: ``probe_dns_lookup_time_seconds``, ``probe_ip_protocol``, ``probe_ip_addr_hash``.

A :class:`Connector` is long-lived: it holds the resolver, caches SSL contexts per
``tls_config`` so probes never rebuild them, and keeps the agent's :class:`Memo` of pure
per-probe parsing. Every probe still opens a fresh connection.

    connector = Connector()
    ip = await connector.resolve("example.com", rec, "ip4", fallback=True)
    stream = await connector.connect(ip, 443, rec)
    await connector.start_tls(stream, tls_config, "example.com", rec)
"""

from __future__ import annotations

import ipaddress
import os
import socket
import ssl
import tempfile
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import dns.asyncresolver
import dns.rdatatype
import dns.resolver

from probes.certs import cert_info, tls_info
from probes.modules import TLSConfig
from probes.result import CertInfo, ProbeFailed, Reason, Recorder
from probes.stream import Stream

__all__ = ["BoundedTable", "Connector", "Memo", "fnv1a32", "split_host_port"]

_TLS_VERSIONS = {
    "TLS10": ssl.TLSVersion.TLSv1,
    "TLS11": ssl.TLSVersion.TLSv1_1,
    "TLS12": ssl.TLSVersion.TLSv1_2,
    "TLS13": ssl.TLSVersion.TLSv1_3,
}


def split_host_port(target: str, default_port: int | None = None) -> tuple[str, int]:
    """Split ``host:port``, ``[v6]:port`` or a bare host (with ``default_port``).

    Raises ``ValueError`` naming the target and the rule.
    """
    text = target.strip()
    host, port_text = text, ""
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ValueError(f"target {target!r}: unclosed '[' in IPv6 address")
        host, rest = text[1:end], text[end + 1 :]
        if rest:
            if not rest.startswith(":"):
                raise ValueError(f"target {target!r}: expected ':port' after ']'")
            port_text = rest[1:]
    elif text.count(":") == 1:
        host, port_text = text.split(":", 1)
    elif text.count(":") > 1:
        host = text  # bare IPv6 literal
    if not host:
        raise ValueError(f"target {target!r}: missing host")
    if not port_text:
        if default_port is None:
            raise ValueError(f"target {target!r}: missing port (use host:port)")
        return host, default_port
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"target {target!r}: port {port_text!r} is not 1-65535")
    return host, int(port_text)


_R = TypeVar("_R")
_K = TypeVar("_K", bound=Hashable)
_V = TypeVar("_V")


class BoundedTable(dict[_K, _V]):
    """Values made from their keys by ``make``, each once: ``table[key]``.

    A plain dict that fills itself (``__missing__``), so a hit costs one subscript. Bounded:
    emptied when ``limit`` values are kept, since a full table means churn (TTLs counting
    down, certificate subjects), not a working set. An exception from ``make`` is never
    kept: a bad key raises every time.

        texts = BoundedTable(format_labels, 4096)
        line = texts[labels]
    """

    __slots__ = ("_limit", "_make")

    def __init__(self, make: Callable[[_K], _V], limit: int) -> None:
        super().__init__()
        self._make = make
        self._limit = limit

    def __missing__(self, key: _K) -> _V:
        if len(self) >= self._limit:
            self.clear()
        value = self[key] = self._make(key)
        return value


class Memo:
    """Results of pure functions, kept per agent: per-probe parsing that gives the same answer
    every time for the same input (an IP literal's facts, a certificate, a module's DNS query,
    a DNS server's answer).

    Each function has its own :class:`BoundedTable` of at most ``limit`` results (a probe
    fleet sees few distinct inputs). An exception is never kept: a bad input raises every
    time. Lives on the :class:`Connector`, so nothing is cached at module level.

        info = connector.memo(cert_info, der)
    """

    __slots__ = ("_keyed", "_limit", "_tables")

    def __init__(self, limit: int = 4096) -> None:
        self._limit = limit
        self._tables: dict[Callable[..., object], BoundedTable[tuple[object, ...], object]] = {}
        self._keyed: dict[Callable[..., object], dict[Hashable, tuple[object, object]]] = {}

    def __call__(self, fn: Callable[..., _R], *args: Hashable) -> _R:
        """``fn(*args)``, from the table when these arguments were seen before."""
        table = self._tables.get(fn)
        if table is None:
            table = self._tables[fn] = BoundedTable(lambda key: fn(*key), self._limit)
        return table[args]  # type: ignore[return-value]

    def keyed(self, key: Hashable, fn: Callable[..., _R], *args: object) -> _R:
        """``fn(*args)``, kept under ``key``: for arguments that do not hash (a config model),
        which the key names by ``id``. The arguments are kept with the result, so an object
        named by its id stays alive, and its id stays its own, as long as the entry.

            request = connector.memo.keyed((id(cfg), url), build_request, cfg, url)
        """
        table = self._keyed.get(fn)
        if table is None:
            table = self._keyed[fn] = {}
        entry = table.get(key)
        if entry is None:
            if len(table) >= self._limit:
                table.clear()
            entry = table[key] = (args, fn(*args))
        return entry[1]  # type: ignore[return-value]


@dataclass(frozen=True, slots=True)
class _Address:
    text: str
    version: int
    hash: int


def _parse_address(text: str) -> _Address | None:
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    return _Address(str(ip), ip.version, fnv1a32(ip.packed))


def fnv1a32(data: bytes) -> int:
    """32-bit FNV-1a, as blackbox_exporter hashes the packed IP for probe_ip_addr_hash.

    Checked against blackbox_exporter 0.23: ``127.0.0.1`` -> 3668918509.
    """
    h = 0x811C9DC5
    for byte in data:
        h = ((h ^ byte) * 0x01000193) & 0xFFFFFFFF
    return h


def _family_order(preferred: str, fallback: bool) -> list[int]:
    six = preferred in ("ip6", "tcp6", "udp6", "")
    first, second = (socket.AF_INET6, socket.AF_INET) if six else (socket.AF_INET, socket.AF_INET6)
    return [first, second] if fallback else [first]


class Connector:
    """Resolves, connects and does TLS handshakes for probes, timing each phase."""

    def __init__(
        self,
        resolver: dns.asyncresolver.Resolver | None = None,
        hosts_file: str | Path = "/etc/hosts",
    ) -> None:
        self._resolver = resolver
        self._hosts = _read_hosts(Path(hosts_file))
        self._contexts: dict[tuple[TLSConfig, bool], ssl.SSLContext] = {}
        self.memo = Memo()

    @property
    def resolver(self) -> dns.asyncresolver.Resolver:
        if self._resolver is None:
            try:
                self._resolver = dns.asyncresolver.Resolver()
            except dns.resolver.NoResolverConfiguration:
                self._resolver = dns.asyncresolver.Resolver(configure=False)
                self._resolver.nameservers = ["127.0.0.1"]
        return self._resolver

    async def resolve(
        self, host: str, rec: Recorder, preferred: str = "ip6", fallback: bool = True
    ) -> str:
        """Resolve ``host`` to one IP address (phase ``resolve``)."""
        with rec.phase("resolve"):
            ip = await self._resolve(host, _family_order(preferred, fallback))
        rec.gauge(
            "probe_dns_lookup_time_seconds",
            rec.phases["resolve"],
            help="Returns the time taken for probe dns lookup in seconds",
        )
        address = self._address(ip)
        assert address is not None  # _resolve returns addresses only
        rec.gauge(
            "probe_ip_protocol",
            address.version,
            help="Specifies whether probe ip protocol is IP4 or IP6",
        )
        rec.gauge(
            "probe_ip_addr_hash",
            address.hash,
            help="Specifies the hash of IP address. "
            "It's useful to detect if the IP address changes.",
        )
        return address.text

    def _address(self, text: str) -> _Address | None:
        """An IP literal's canonical text, version and hash (memoised); None if not an IP."""
        return self.memo(_parse_address, text)

    def cert_info(self, der: bytes) -> CertInfo:
        """CertInfo of a DER certificate, parsed once per distinct certificate."""
        return self.memo(cert_info, der)

    async def _resolve(self, host: str, families: list[int]) -> str:
        host = host.strip("[]")
        literal = self._address(host)
        if literal is not None:
            return literal.text
        name = host.lower().rstrip(".")
        if (name, socket.AF_INET) in self._hosts or (name, socket.AF_INET6) in self._hosts:
            # the hosts file is authoritative for the names it lists (as glibc and Go)
            for family in families:
                if (name, family) in self._hosts:
                    return self._hosts[(name, family)]
            raise dns.resolver.NoAnswer(  # type: ignore[no-untyped-call]
                f"{host} is in the hosts file, but not with an address of the wanted family"
            )
        last_error: Exception | None = None
        for family in families:
            rdtype = dns.rdatatype.AAAA if family == socket.AF_INET6 else dns.rdatatype.A
            try:
                answer = await self.resolver.resolve(name, rdtype, search=True)
            except dns.resolver.NoAnswer as exc:
                last_error = exc
                continue
            for rr in answer:
                return str(rr.address)
        if last_error is not None:
            raise last_error
        raise dns.resolver.NoAnswer(f"no address of the wanted family for {host}")  # type: ignore[no-untyped-call]

    async def connect(
        self,
        ip: str,
        port: int,
        rec: Recorder,
        *,
        source_ip: str | None = None,
        limit: int = 2**16,
    ) -> Stream:
        """Open a TCP connection (phase ``connect``)."""
        with rec.phase("connect"):
            stream = await Stream.connect(
                ip, port, local_addr=(source_ip, 0) if source_ip else None, limit=limit
            )
        rec.peer = f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"
        return stream

    def ssl_context(self, cfg: TLSConfig, *, verify: bool = True) -> ssl.SSLContext:
        """An SSL context for ``cfg``, built once and cached.

        ``verify=False`` gives a context that completes the handshake whatever the
        certificate (used to collect chain facts after verification failed). A
        ``tls_config`` whose files cannot be loaded ends the run with ``config_error``.
        """
        key = (cfg, verify)
        ctx = self._contexts.get(key)
        if ctx is None:
            try:
                ctx = _build_context(cfg, verify=verify and not cfg.insecure_skip_verify)
            except (OSError, ssl.SSLError, ValueError) as exc:
                # a missing or malformed ca_file/cert_file/key_file is the user's config,
                # not a bug and not the target's fault
                raise ProbeFailed(Reason.CONFIG_ERROR, f"tls_config: {exc}") from exc
            self._contexts[key] = ctx
        return ctx

    async def start_tls(
        self,
        stream: Stream,
        cfg: TLSConfig,
        server_name: str,
        rec: Recorder,
        *,
        verify: bool = True,
    ) -> ssl.SSLObject:
        """Upgrade the connection to TLS (phase ``tls``). Sets ``rec.tls``."""
        ctx = self.ssl_context(cfg, verify=verify)
        sni = cfg.server_name or server_name
        with rec.phase("tls"):
            await stream.start_tls(ctx, server_hostname=sni)
        sslobj = stream.get_extra_info("ssl_object")
        if not isinstance(sslobj, ssl.SSLObject):
            rec.fail(Reason.TLS_HANDSHAKE_FAILED, "no TLS session after handshake")
        rec.tls = tls_info(
            sslobj, sni, verified=verify and not cfg.insecure_skip_verify, parse=self.cert_info
        )
        return sslobj


def _build_context(cfg: TLSConfig, *, verify: bool) -> ssl.SSLContext:
    """Mirror Go's crypto/tls client defaults, as blackbox_exporter uses them.

    Verification: the system roots unless ``ca_file``/``ca``; host name checked against
    ``server_name`` or the target host. Minimum version TLS 1.2 (Go's client default).
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if verify:
        ctx.check_hostname = True
        ctx.verify_mode = ssl.CERT_REQUIRED
        if cfg.ca_file or cfg.ca:
            ctx.load_verify_locations(cafile=cfg.ca_file, cadata=cfg.ca)
        else:
            ctx.load_default_certs()
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    # A client certificate is loaded with verification off too: an mTLS server must still
    # accept the second, fact-collecting handshake of the tls probe.
    if cfg.cert_file or cfg.cert:
        _load_client_cert(ctx, cfg)
    ctx.minimum_version = _TLS_VERSIONS[cfg.min_version or "TLS12"]
    if cfg.max_version:
        ctx.maximum_version = _TLS_VERSIONS[cfg.max_version]
    return ctx


def _load_client_cert(ctx: ssl.SSLContext, cfg: TLSConfig) -> None:
    if cfg.cert is None and cfg.key is None:
        ctx.load_cert_chain(cfg.cert_file or "", cfg.key_file)
        return
    # ssl only loads client certificates from files. Inline PEM (``cert``/``key``) goes to
    # a private temporary directory that lives only while OpenSSL reads it.
    with tempfile.TemporaryDirectory(prefix="seismo-tls-") as tmp:
        cert_path = cfg.cert_file
        key_path = cfg.key_file
        if cfg.cert is not None:
            cert_path = os.path.join(tmp, "cert.pem")
            Path(cert_path).write_text(cfg.cert)
        if cfg.key is not None:
            key_path = os.path.join(tmp, "key.pem")
            fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(cfg.key)
        ctx.load_cert_chain(cert_path or "", key_path)


def _read_hosts(path: Path) -> dict[tuple[str, int], str]:
    table: dict[tuple[str, int], str] = {}
    try:
        text = path.read_text()
    except OSError:
        return table
    for line in text.splitlines():
        fields = line.split("#", 1)[0].split()
        if len(fields) < 2:
            continue
        try:
            ip = ipaddress.ip_address(fields[0].split("%", 1)[0])
        except ValueError:
            continue
        family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
        for name in fields[1:]:
            table.setdefault((name.lower().rstrip("."), family), str(ip))
    return table
