"""probes.tls against real asyncio TLS servers on loopback, with trustme certificates."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import trustme

from probes import Module, ProbeResult, Reason, run_probe

Serve = Callable[..., AbstractAsyncContextManager[int]]
ServerContext = Callable[..., ssl.SSLContext]


async def idle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Complete the handshake (asyncio does it), then wait for the client to leave."""
    await reader.read()


def tls_module(**tls: Any) -> Module:
    tls.setdefault("preferred_ip_protocol", "ip4")
    return Module.model_validate({"prober": "tls", "tls": tls})


def metrics(result: ProbeResult) -> dict[str, float]:
    return dict(result.to_json()["metrics"])


def names(result: ProbeResult) -> set[str]:
    return {m.name for m in result.measurements}


async def probe_with(serve: Serve, ctx: ssl.SSLContext, module: Module, host: str) -> ProbeResult:
    async with serve(idle, ssl=ctx) as port:
        return await run_probe(module, f"{host}:{port}", timeout=5)


@pytest.fixture
def leaf(make_server_context: ServerContext) -> Callable[..., ssl.SSLContext]:
    """``leaf(ca, *names, **issue_cert_kwargs)``: a server context for a fresh leaf."""

    def make(ca: trustme.CA, *names: str, **kw: Any) -> ssl.SSLContext:
        return make_server_context(ca.issue_cert(*(names or ("localhost", "127.0.0.1")), **kw))

    return make


Leaf = Callable[..., ssl.SSLContext]


NOW = datetime.now(UTC)


async def test_valid_chain_succeeds_with_all_gauges(
    serve: Serve, server_ssl: ssl.SSLContext, ca_file: str
) -> None:
    result = await probe_with(
        serve, server_ssl, tls_module(tls_config={"ca_file": ca_file}), "localhost"
    )

    assert result.reason is Reason.SUCCESS, result.detail
    assert set(result.phases) == {"resolve", "connect", "tls"}
    assert result.tls is not None
    assert result.tls.verified and result.tls.verify_error is None
    assert result.tls.version in ("TLS 1.2", "TLS 1.3")
    assert result.tls.chain[0].sans == ("localhost", "127.0.0.1", "::1")
    m = metrics(result)
    assert m["probe_tls_verified"] == 1
    assert m['probe_tls_cert_expiry_timestamp_seconds{depth="0"}'] == result.tls.chain[0].not_after
    assert m["probe_ssl_earliest_cert_expiry"] == result.tls.earliest_expiry
    assert m[f'probe_tls_version_info{{version="{result.tls.version}"}}'] == 1
    assert m[f'probe_tls_cipher_info{{cipher="{result.tls.cipher}"}}'] == 1
    for phase in ("resolve", "connect", "tls"):
        assert f'probe_tls_duration_seconds{{phase="{phase}"}}' in m
    assert {
        "probe_ssl_last_chain_expiry_timestamp_seconds",
        "probe_ssl_last_chain_info",
        "probe_dns_lookup_time_seconds",
        "probe_ip_protocol",
        "probe_ip_addr_hash",
    } <= names(result)


async def test_ip_target_verifies_against_ip_san(
    serve: Serve, server_ssl: ssl.SSLContext, ca_file: str
) -> None:
    result = await probe_with(
        serve, server_ssl, tls_module(tls_config={"ca_file": ca_file}), "127.0.0.1"
    )
    assert result.reason is Reason.SUCCESS, result.detail
    assert "resolve" in result.phases


async def test_intermediate_chain_is_reported_in_full(
    serve: Serve, ca: trustme.CA, ca_file: str, make_server_context: ServerContext
) -> None:
    intermediate = ca.create_child_ca()
    ctx = make_server_context(intermediate.issue_cert("localhost"))
    result = await probe_with(serve, ctx, tls_module(tls_config={"ca_file": ca_file}), "localhost")

    assert result.reason is Reason.SUCCESS, result.detail
    assert result.tls is not None
    assert len(result.tls.chain) == 2  # leaf + intermediate, as presented
    assert len(result.tls.verified_chain) == 3  # ... + the root from ca_file
    assert result.tls.chain[0].issuer == result.tls.chain[1].subject
    m = metrics(result)
    assert 'probe_tls_cert_expiry_timestamp_seconds{depth="1"}' in m


@pytest.mark.parametrize(
    ("window", "reason"),
    [
        (
            {"not_before": NOW - timedelta(days=10), "not_after": NOW - timedelta(days=1)},
            Reason.TLS_CERT_EXPIRED,
        ),
        (
            {"not_before": NOW + timedelta(days=1), "not_after": NOW + timedelta(days=10)},
            Reason.TLS_CERT_NOT_YET_VALID,
        ),
    ],
    ids=["expired", "not-yet-valid"],
)
async def test_validity_window_failures_keep_chain_facts(
    serve: Serve,
    leaf: Leaf,
    ca: trustme.CA,
    ca_file: str,
    window: dict[str, datetime],
    reason: Reason,
) -> None:
    ctx = leaf(ca, "localhost", **window)
    result = await probe_with(serve, ctx, tls_module(tls_config={"ca_file": ca_file}), "localhost")

    assert result.reason is reason
    assert result.tls is not None, "chain facts must survive a verification failure"
    assert result.tls.verified is False
    assert result.tls.verify_error is reason
    assert result.tls.chain[0].not_after == window["not_after"].replace(microsecond=0).timestamp()
    m = metrics(result)
    assert m["probe_tls_verified"] == 0
    assert m["probe_ssl_earliest_cert_expiry"] == result.tls.chain[0].not_after
    assert m['probe_tls_cert_expiry_timestamp_seconds{depth="0"}'] == result.tls.chain[0].not_after
    assert "probe_ssl_last_chain_info" in names(result)


async def test_wrong_hostname(serve: Serve, leaf: Leaf, ca: trustme.CA, ca_file: str) -> None:
    ctx = leaf(ca, "other.example")
    result = await probe_with(serve, ctx, tls_module(tls_config={"ca_file": ca_file}), "localhost")

    assert result.reason is Reason.TLS_HOSTNAME_MISMATCH
    assert result.tls is not None
    assert result.tls.chain[0].sans == ("other.example",)


async def test_wrong_ip(serve: Serve, leaf: Leaf, ca: trustme.CA, ca_file: str) -> None:
    ctx = leaf(ca, "localhost")
    result = await probe_with(serve, ctx, tls_module(tls_config={"ca_file": ca_file}), "127.0.0.1")
    assert result.reason is Reason.TLS_HOSTNAME_MISMATCH


async def test_server_name_overrides_target_host(
    serve: Serve, leaf: Leaf, ca: trustme.CA, ca_file: str
) -> None:
    ctx = leaf(ca, "svc.internal")
    module = tls_module(tls_config={"ca_file": ca_file, "server_name": "svc.internal"})
    result = await probe_with(serve, ctx, module, "127.0.0.1")

    assert result.reason is Reason.SUCCESS, result.detail
    assert result.tls is not None and result.tls.server_name == "svc.internal"


async def test_untrusted_ca(serve: Serve, leaf: Leaf, ca_file: str) -> None:
    stranger = trustme.CA()
    result = await probe_with(
        serve, leaf(stranger), tls_module(tls_config={"ca_file": ca_file}), "localhost"
    )

    assert result.reason is Reason.TLS_UNTRUSTED
    assert result.tls is not None and result.tls.verify_error is Reason.TLS_UNTRUSTED


async def test_self_signed(
    serve: Serve,
    self_signed: tuple[bytes, bytes],
    write_pem: Callable[[str, bytes], str],
    ca_file: str,
) -> None:
    cert, key = self_signed
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(write_pem("cert.pem", cert), write_pem("key.pem", key))
    result = await probe_with(serve, ctx, tls_module(tls_config={"ca_file": ca_file}), "localhost")

    assert result.reason is Reason.TLS_SELF_SIGNED
    assert result.tls is not None
    assert result.tls.chain[0].subject == result.tls.chain[0].issuer == "CN=self-signed.test"


async def test_not_verified_allowed_still_says_why(serve: Serve, leaf: Leaf, ca_file: str) -> None:
    module = tls_module(tls_config={"ca_file": ca_file}, fail_if_not_verified=False)
    result = await probe_with(serve, leaf(trustme.CA()), module, "localhost")

    assert result.reason is Reason.SUCCESS
    assert result.tls is not None
    assert result.tls.verified is False
    assert result.tls.verify_error is Reason.TLS_UNTRUSTED
    assert metrics(result)["probe_tls_verified"] == 0


async def test_insecure_skip_verify_succeeds_unverified(serve: Serve, leaf: Leaf) -> None:
    module = tls_module(tls_config={"insecure_skip_verify": True})
    result = await probe_with(serve, leaf(trustme.CA()), module, "localhost")

    assert result.reason is Reason.SUCCESS
    assert result.tls is not None and result.tls.verified is False
    assert result.tls.verify_error is None
    # blackbox reports Go's zero time when no chain was verified
    assert metrics(result)["probe_ssl_last_chain_expiry_timestamp_seconds"] == -62135596800


@pytest.mark.parametrize(
    ("within", "reason"), [("30d", Reason.TLS_CERT_EXPIRING), ("1d", Reason.SUCCESS)]
)
async def test_fail_if_expires_within(
    serve: Serve, leaf: Leaf, ca: trustme.CA, ca_file: str, within: str, reason: Reason
) -> None:
    ctx = leaf(ca, "localhost", not_after=NOW + timedelta(days=5))
    module = tls_module(tls_config={"ca_file": ca_file}, fail_if_expires_within=within)
    result = await probe_with(serve, ctx, module, "localhost")

    assert result.reason is reason, result.detail
    assert result.tls is not None and result.tls.verified


class TestMutualTLS:
    @pytest.fixture
    def mtls_server(
        self, ca: trustme.CA, server_cert: trustme.LeafCert, make_server_context: ServerContext
    ) -> ssl.SSLContext:
        # TLS 1.2: the server's rejection of a missing client certificate then happens inside
        # the handshake, which is what a handshake probe can observe (see probes.tls)
        return make_server_context(server_cert, client_ca=ca, max_version=ssl.TLSVersion.TLSv1_2)

    async def test_client_cert_files(
        self,
        serve: Serve,
        mtls_server: ssl.SSLContext,
        ca: trustme.CA,
        ca_file: str,
        write_pem: Callable[[str, bytes], str],
    ) -> None:
        client = ca.issue_cert("client@seismo.test")
        cfg = {
            "ca_file": ca_file,
            "cert_file": write_pem("client.pem", client.cert_chain_pems[0].bytes()),
            "key_file": write_pem("client.key", client.private_key_pem.bytes()),
        }
        result = await probe_with(serve, mtls_server, tls_module(tls_config=cfg), "localhost")
        assert result.reason is Reason.SUCCESS, result.detail

    async def test_inline_client_cert(
        self, serve: Serve, mtls_server: ssl.SSLContext, ca: trustme.CA, ca_file: str
    ) -> None:
        client = ca.issue_cert("client@seismo.test")
        cfg = {
            "ca_file": ca_file,
            "cert": client.cert_chain_pems[0].bytes().decode(),
            "key": client.private_key_pem.bytes().decode(),
        }
        result = await probe_with(serve, mtls_server, tls_module(tls_config=cfg), "localhost")
        assert result.reason is Reason.SUCCESS, result.detail

    async def test_missing_client_cert_fails_handshake(
        self, serve: Serve, mtls_server: ssl.SSLContext, ca_file: str
    ) -> None:
        result = await probe_with(
            serve, mtls_server, tls_module(tls_config={"ca_file": ca_file}), "localhost"
        )
        assert result.reason is Reason.TLS_HANDSHAKE_FAILED
        assert not result.success


async def test_connection_refused_keeps_duration_series(closed_port: int) -> None:
    result = await run_probe(tls_module(), f"127.0.0.1:{closed_port}", timeout=5)

    assert result.reason is Reason.CONNECT_REFUSED
    assert result.tls is None
    m = metrics(result)
    assert m['probe_tls_duration_seconds{phase="tls"}'] == 0
    assert m["probe_success"] == 0


async def test_plain_tcp_peer_fails_handshake(serve: Serve) -> None:
    async def talk_plain(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"SSH-2.0-OpenSSH_9.6\r\n")
        await writer.drain()

    async with serve(talk_plain) as port:
        result = await run_probe(tls_module(), f"127.0.0.1:{port}", timeout=5)
    assert result.reason is Reason.TLS_HANDSHAKE_FAILED


async def test_silent_peer_times_out_in_tls_phase(serve: Serve) -> None:
    async with serve(idle) as port:  # no TLS: the ClientHello is never answered
        result = await run_probe(tls_module(), f"127.0.0.1:{port}", timeout=0.5)
    assert result.reason is Reason.TLS_HANDSHAKE_TIMEOUT


async def test_unreadable_ca_file_is_config_error(tmp_path: Any) -> None:
    module = tls_module(tls_config={"ca_file": str(tmp_path / "missing.pem")})
    result = await run_probe(module, "127.0.0.1:1", timeout=5)
    assert result.reason is Reason.CONFIG_ERROR


async def test_bad_target_is_config_error() -> None:
    result = await run_probe(tls_module(), "localhost:notaport", timeout=5)
    assert result.reason is Reason.CONFIG_ERROR
