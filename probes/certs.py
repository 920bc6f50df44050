"""Certificate facts from a TLS handshake, and blackbox_exporter's TLS gauges.

:func:`tls_info` turns a finished handshake (an ``ssl.SSLObject``) into a :class:`TLSInfo`:
the full presented chain (leaf first), the verified chain (leaf to trust anchor) when the
handshake verified, the TLS version and the cipher, all in blackbox_exporter's spelling so
that JSON and metrics agree:

- ``version``: ``"TLS 1.2"``, ``"TLS 1.3"`` (Go's ``getTLSVersion``; ``"unknown"`` otherwise);
- ``cipher``: the IANA suite name as Go's ``tls.CipherSuiteName`` prints it
  (``TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256``), not OpenSSL's (``ECDHE-RSA-AES128-GCM-SHA256``);
- ``subject``/``issuer``: Go's ``pkix.Name.String()``, an RFC 4514 string (most specific
  attribute first, RFC 4514 escaping) with Go's attribute order, so the
  ``probe_ssl_last_chain_info`` labels match blackbox_exporter byte for byte;
- ``sans``: DNS names, then IP addresses; ``serial``: lowercase hex; times: Unix seconds.

:func:`emit_tls_gauges` sets the gauges blackbox_exporter 0.23 emits after a TLS handshake
(checked against ``/usr/bin/prometheus-blackbox-exporter`` 0.23.0 for the http and tcp
probers, ``tls: true`` and ``starttls``), with its names, label names and HELP texts:

- ``probe_ssl_earliest_cert_expiry``: earliest ``notAfter`` of the *presented* chain;
- ``probe_ssl_last_chain_expiry_timestamp_seconds``: earliest ``notAfter`` of the verified
  chain; Go's zero time (``-62135596800``) when nothing was verified, as blackbox does;
- ``probe_ssl_last_chain_info{fingerprint_sha256,issuer,subject,subjectalternative}`` 1:
  the leaf; ``subjectalternative`` lists DNS names only, comma-joined (Go's ``DNSNames``);
- ``probe_tls_version_info{version}`` 1;
- ``probe_tls_cipher_info{cipher}`` 1: not in 0.23; later releases emit it for http only,
  so tcp callers pass ``cipher=False``.

    rec.tls = tls_info(stream.get_extra_info("ssl_object"), "example.com", verified=True)
    emit_tls_gauges(rec)
"""

from __future__ import annotations

import hashlib
import ssl
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Final

from cryptography import x509
from cryptography.x509.oid import NameOID

from probes.result import CertInfo, Recorder, TLSInfo

__all__ = [
    "GO_ZERO_TIME",
    "cert_info",
    "cipher_name",
    "emit_tls_gauges",
    "go_name_string",
    "tls_info",
    "tls_version_name",
]

#: ``time.Time{}.Unix()`` in Go: what blackbox reports as the last chain expiry when no
#: chain was verified (``insecure_skip_verify``)
GO_ZERO_TIME: Final = -62135596800.0

_TLS_VERSIONS: Final[Mapping[str, str]] = MappingProxyType(
    {"TLSv1": "TLS 1.0", "TLSv1.1": "TLS 1.1", "TLSv1.2": "TLS 1.2", "TLSv1.3": "TLS 1.3"}
)

# OpenSSL suite name -> the name Go's tls.CipherSuiteName gives it. These are exactly the
# suites Go's crypto/tls implements; TLS 1.3 suites already carry their IANA names.
_GO_CIPHER_NAMES: Final[Mapping[str, str]] = MappingProxyType(
    {
        "RC4-SHA": "TLS_RSA_WITH_RC4_128_SHA",
        "DES-CBC3-SHA": "TLS_RSA_WITH_3DES_EDE_CBC_SHA",
        "AES128-SHA": "TLS_RSA_WITH_AES_128_CBC_SHA",
        "AES256-SHA": "TLS_RSA_WITH_AES_256_CBC_SHA",
        "AES128-SHA256": "TLS_RSA_WITH_AES_128_CBC_SHA256",
        "AES128-GCM-SHA256": "TLS_RSA_WITH_AES_128_GCM_SHA256",
        "AES256-GCM-SHA384": "TLS_RSA_WITH_AES_256_GCM_SHA384",
        "ECDHE-ECDSA-RC4-SHA": "TLS_ECDHE_ECDSA_WITH_RC4_128_SHA",
        "ECDHE-ECDSA-AES128-SHA": "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA",
        "ECDHE-ECDSA-AES256-SHA": "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA",
        "ECDHE-RSA-RC4-SHA": "TLS_ECDHE_RSA_WITH_RC4_128_SHA",
        "ECDHE-RSA-DES-CBC3-SHA": "TLS_ECDHE_RSA_WITH_3DES_EDE_CBC_SHA",
        "ECDHE-RSA-AES128-SHA": "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA",
        "ECDHE-RSA-AES256-SHA": "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA",
        "ECDHE-ECDSA-AES128-SHA256": "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256",
        "ECDHE-RSA-AES128-SHA256": "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256": "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
        "ECDHE-ECDSA-AES128-GCM-SHA256": "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
        "ECDHE-RSA-AES256-GCM-SHA384": "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
        "ECDHE-ECDSA-AES256-GCM-SHA384": "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
        "ECDHE-RSA-CHACHA20-POLY1305": "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
        "ECDHE-ECDSA-CHACHA20-POLY1305": "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
    }
)

# Go's pkix attributeTypeNames, and the order Name.ToRDNSequence() emits them in.
_GO_ATTR_ORDER: Final = (
    (NameOID.COUNTRY_NAME, "C"),
    (NameOID.STATE_OR_PROVINCE_NAME, "ST"),
    (NameOID.LOCALITY_NAME, "L"),
    (NameOID.STREET_ADDRESS, "STREET"),
    (NameOID.POSTAL_CODE, "POSTALCODE"),
    (NameOID.ORGANIZATION_NAME, "O"),
    (NameOID.ORGANIZATIONAL_UNIT_NAME, "OU"),
    (NameOID.COMMON_NAME, "CN"),
    (NameOID.SERIAL_NUMBER, "SERIALNUMBER"),
)
_GO_KNOWN_OIDS: Final = frozenset(oid for oid, _ in _GO_ATTR_ORDER)
_GO_SINGLE_VALUED: Final = frozenset({NameOID.COMMON_NAME, NameOID.SERIAL_NUMBER})
_PRINTABLE: Final = frozenset(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789 '()+,-./:=?"
)


def tls_version_name(version: str | None) -> str:
    """Python's ``"TLSv1.3"`` as blackbox spells it: ``"TLS 1.3"`` (or ``"unknown"``)."""
    return _TLS_VERSIONS.get(version or "", "unknown")


def cipher_name(openssl_name: str) -> str:
    """The suite name Go (and so blackbox) prints; OpenSSL's name when Go has none."""
    return _GO_CIPHER_NAMES.get(openssl_name, openssl_name)


def _go_escape(value: str) -> str:
    out = []
    last = len(value) - 1
    for i, ch in enumerate(value):
        if ch in ',+"\\<>;' or (ch == " " and i in (0, last)) or (ch == "#" and i == 0):
            out.append("\\")
        out.append(ch)
    return "".join(out)


def _der_string(value: str) -> bytes:
    # Go re-marshals a non-standard attribute's value: PrintableString when it can,
    # UTF8String otherwise. DER length: short form below 128, long form above.
    tag = 0x13 if all(c in _PRINTABLE for c in value) else 0x0C
    body = value.encode()
    n = len(body)
    if n < 0x80:
        length = bytes([n])
    else:
        raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
        length = bytes([0x80 | len(raw)]) + raw
    return bytes([tag]) + length + body


def _text(value: str | bytes) -> str:
    return value if isinstance(value, str) else value.decode("latin-1")


def go_name_string(name: x509.Name) -> str:
    """Format ``name`` exactly like Go's ``pkix.Name.String()`` (what blackbox labels use).

    >>> go_name_string(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "a, b")]))
    'CN=a\\\\, b'
    """
    # Go's ToRDNSequence: the known attributes in a fixed order (multi-valued ones grouped
    # into one RDN joined by '+'), and before them (so after them once reversed) every other
    # attribute in certificate order, as an OID with its DER value in hex.
    rdns: list[list[str]] = []
    for attr in name:
        if attr.oid not in _GO_KNOWN_OIDS:
            der = _der_string(_text(attr.value))
            rdns.append([f"{attr.oid.dotted_string}=#{der.hex()}"])
    for oid, label in _GO_ATTR_ORDER:
        values = [_text(a.value) for a in name.get_attributes_for_oid(oid)]
        if oid in _GO_SINGLE_VALUED:
            values = values[-1:]  # Go keeps the last CommonName / SerialNumber
        if values:
            rdns.append([f"{label}={_go_escape(v)}" for v in values])
    return ",".join("+".join(rdn) for rdn in reversed(rdns))


def _sans(cert: x509.Certificate) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(DNS names, IP addresses) of the subject alternative names."""
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return (), ()
    dns_names = tuple(ext.get_values_for_type(x509.DNSName))
    ips = tuple(str(ip) for ip in ext.get_values_for_type(x509.IPAddress))
    return dns_names, ips


def cert_info(der: bytes) -> CertInfo:
    """Facts about one DER-encoded certificate."""
    cert = x509.load_der_x509_certificate(der)
    dns_names, ips = _sans(cert)
    return CertInfo(
        subject=go_name_string(cert.subject),
        issuer=go_name_string(cert.issuer),
        sans=(*dns_names, *ips),
        dns_names=dns_names,
        not_before=cert.not_valid_before_utc.timestamp(),
        not_after=cert.not_valid_after_utc.timestamp(),
        fingerprint_sha256=hashlib.sha256(der).hexdigest(),
        serial=format(cert.serial_number, "x"),
    )


def _chain_der(sslobj: ssl.SSLObject, *, verified: bool) -> list[bytes]:
    # CPython 3.10+ exposes the chains on the private _SSLSocket behind an SSLObject
    # (public in 3.13 as get_(un)verified_chain). Without it, the leaf is all we can get.
    inner = getattr(sslobj, "_sslobj", None)
    getter = getattr(inner, "get_verified_chain" if verified else "get_unverified_chain", None)
    if getter is not None:
        chain = getter() or []
        return [c.public_bytes(ssl._ssl.ENCODING_DER) for c in chain]  # type: ignore[attr-defined]
    if verified:
        return []
    leaf = sslobj.getpeercert(binary_form=True)
    return [leaf] if leaf else []


def tls_info(
    sslobj: ssl.SSLObject,
    server_name: str,
    *,
    verified: bool,
    parse: Callable[[bytes], CertInfo] = cert_info,
) -> TLSInfo:
    """Describe a finished handshake. ``verified``: the context verified chain and name.

    ``chain`` is what the peer presented, leaf first; ``verified_chain`` (leaf to trust
    anchor) is only filled when the handshake verified (with verification off, OpenSSL's
    "verified chain" is meaningless). ``parse`` turns DER into CertInfo; the Connector passes
    a cached one, since the same chain comes back on every probe of a target.
    """
    cipher = sslobj.cipher()
    return TLSInfo(
        version=tls_version_name(sslobj.version()),
        cipher=cipher_name(cipher[0]) if cipher else "",
        server_name=server_name,
        chain=tuple(parse(der) for der in _chain_der(sslobj, verified=False)),
        verified=verified,
        verified_chain=(
            tuple(parse(der) for der in _chain_der(sslobj, verified=True)) if verified else ()
        ),
    )


def emit_tls_gauges(rec: Recorder, *, cipher: bool = True) -> None:
    """Set blackbox's TLS gauges from ``rec.tls``; a no-op when there was no handshake.

    ``cipher=False`` leaves out ``probe_tls_cipher_info``, which blackbox emits for http only.

        rec.tls = tls_info(sslobj, host, verified=True)
        emit_tls_gauges(rec)
    """
    info = rec.tls
    if info is None:
        return
    earliest = info.earliest_expiry
    if earliest is not None:
        # HELP texts are blackbox 0.23's, verbatim (including this one's odd wording)
        rec.gauge(
            "probe_ssl_earliest_cert_expiry",
            earliest,
            help="Returns last SSL chain expiry in unixtime",
        )
    last_chain = min((c.not_after for c in info.verified_chain), default=GO_ZERO_TIME)
    rec.gauge(
        "probe_ssl_last_chain_expiry_timestamp_seconds",
        last_chain,
        help="Returns last SSL chain expiry in timestamp",
    )
    if info.chain:
        leaf = info.chain[0]
        rec.gauge(
            "probe_ssl_last_chain_info",
            1,
            help="Contains SSL leaf certificate information",
            fingerprint_sha256=leaf.fingerprint_sha256,
            issuer=leaf.issuer,
            subject=leaf.subject,
            subjectalternative=",".join(leaf.dns_names),
        )
    rec.gauge(
        "probe_tls_version_info",
        1,
        help="Returns the TLS version used or NaN when unknown",
        version=info.version,
    )
    if cipher and info.cipher:
        rec.gauge(
            "probe_tls_cipher_info",
            1,
            help="Returns the TLS cipher negotiated during handshake",
            cipher=info.cipher,
        )
