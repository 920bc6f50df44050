"""probes.certs: certificate facts and blackbox's TLS gauges, byte for byte.

The first two names were read from /usr/bin/prometheus-blackbox-exporter 0.23.0 probing
servers with such certificates; the others follow Go's crypto/x509/pkix Name.String().
"""

from __future__ import annotations

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from probes.certs import (
    GO_ZERO_TIME,
    cert_info,
    cipher_name,
    emit_tls_gauges,
    go_name_string,
    tls_version_name,
)
from probes.result import CertInfo, Recorder, TLSInfo


def name(*attrs: tuple[x509.ObjectIdentifier, str]) -> x509.Name:
    return x509.Name([x509.NameAttribute(oid, value) for oid, value in attrs])


@pytest.mark.parametrize(
    ("dn", "expected"),
    [
        # seen from blackbox 0.23: trustme's CA and leaf subjects
        (
            name(
                (NameOID.ORGANIZATION_NAME, "Acme, Inc+x"),
                (NameOID.ORGANIZATIONAL_UNIT_NAME, "Testing CA #1"),
            ),
            "OU=Testing CA #1,O=Acme\\, Inc\\+x",
        ),
        (
            name(
                (NameOID.ORGANIZATION_NAME, "Org;x"),
                (NameOID.ORGANIZATIONAL_UNIT_NAME, "Testing cert #2"),
                (NameOID.COMMON_NAME, "#lead "),
            ),
            "CN=\\#lead\\ ,OU=Testing cert #2,O=Org\\;x",
        ),
        # Go's canonical order, not the certificate's: CN, OU, O, L, ST, C
        (
            name(
                (NameOID.COMMON_NAME, "R3"),
                (NameOID.COUNTRY_NAME, "US"),
                (NameOID.ORGANIZATION_NAME, "LE"),
            ),
            "CN=R3,O=LE,C=US",
        ),
        # two OUs share one RDN, joined by '+'
        (
            name((NameOID.ORGANIZATIONAL_UNIT_NAME, "a"), (NameOID.ORGANIZATIONAL_UNIT_NAME, "b")),
            "OU=a+OU=b",
        ),
        # attributes Go has no name for: OID=#DER-hex, at the end
        (
            name((NameOID.COMMON_NAME, "x"), (NameOID.DOMAIN_COMPONENT, "example")),
            "CN=x,0.9.2342.19200300.100.1.25=#13076578616d706c65",
        ),
    ],
)
def test_go_name_string(dn: x509.Name, expected: str) -> None:
    assert go_name_string(dn) == expected


def test_cipher_and_version_names() -> None:
    assert cipher_name("ECDHE-RSA-AES128-GCM-SHA256") == "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"
    assert cipher_name("TLS_AES_128_GCM_SHA256") == "TLS_AES_128_GCM_SHA256"
    assert tls_version_name("TLSv1.2") == "TLS 1.2"
    assert tls_version_name(None) == "unknown"


def cert(not_after: float) -> CertInfo:
    return CertInfo(
        "CN=a", "CN=ca", ("a.example", "127.0.0.1"), 0.0, not_after, "ab" * 32, "1f", ("a.example",)
    )


def test_emit_tls_gauges_unverified_uses_go_zero_time() -> None:
    rec = Recorder("tcp")
    rec.tls = TLSInfo(
        "TLS 1.3", "TLS_AES_128_GCM_SHA256", "a.example", (cert(200.0), cert(100.0)), False
    )
    emit_tls_gauges(rec, cipher=False)

    assert rec.value("probe_ssl_earliest_cert_expiry") == 100.0
    assert rec.value("probe_ssl_last_chain_expiry_timestamp_seconds") == GO_ZERO_TIME
    assert rec.value("probe_tls_version_info", version="TLS 1.3") == 1
    assert rec.value("probe_tls_cipher_info", cipher="TLS_AES_128_GCM_SHA256") is None
    assert (
        rec.value(
            "probe_ssl_last_chain_info",
            fingerprint_sha256="ab" * 32,
            issuer="CN=ca",
            subject="CN=a",
            subjectalternative="a.example",  # DNS names only
        )
        == 1
    )


def test_emit_tls_gauges_verified_chain_includes_root() -> None:
    rec = Recorder("http")
    chain = (cert(300.0),)
    rec.tls = TLSInfo("TLS 1.2", "X", "a", chain, True, verified_chain=(*chain, cert(50.0)))
    emit_tls_gauges(rec)
    assert rec.value("probe_ssl_last_chain_expiry_timestamp_seconds") == 50.0
    assert rec.value("probe_ssl_earliest_cert_expiry") == 300.0
    assert rec.value("probe_tls_cipher_info", cipher="X") == 1


def test_emit_tls_gauges_without_handshake_is_a_noop() -> None:
    rec = Recorder("http")
    emit_tls_gauges(rec)
    assert rec.value("probe_tls_version_info", version="TLS 1.3") is None


def test_cert_info_splits_dns_names_from_ip_sans() -> None:
    import trustme

    leaf = trustme.CA().issue_cert("a.example", "127.0.0.1", "b.example", "::1")
    der = x509.load_pem_x509_certificate(leaf.cert_chain_pems[0].bytes()).public_bytes(
        serialization.Encoding.DER
    )
    info = cert_info(der)
    assert info.dns_names == ("a.example", "b.example")
    assert info.sans == ("a.example", "b.example", "127.0.0.1", "::1")
