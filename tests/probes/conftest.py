"""Shared fixtures for probe tests: a trustme CA, server certificates, loopback servers.

Every server listens on ``127.0.0.1`` port 0 and is closed (with its open connections)
when the test ends. Nothing here sleeps or binds a fixed port.

    async def test_x(serve, server_ssl, ca_file, make_server_context):
        async with serve(handler, ssl=server_ssl) as port:
            ...
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
Serve = Callable[..., AbstractAsyncContextManager[int]]


def server_context(
    leaf: trustme.LeafCert,
    *,
    client_ca: trustme.CA | None = None,
    max_version: ssl.TLSVersion | None = None,
) -> ssl.SSLContext:
    """A server-side SSL context presenting ``leaf`` (and its chain).

    ``client_ca``: require client certificates signed by it (mTLS).
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    leaf.configure_cert(ctx)
    if client_ca is not None:
        client_ca.configure_trust(ctx)
        ctx.verify_mode = ssl.CERT_REQUIRED
    if max_version is not None:
        ctx.maximum_version = max_version
    return ctx


@pytest.fixture(scope="session")
def make_server_context() -> Callable[..., ssl.SSLContext]:
    """:func:`server_context` as a fixture (test modules do not import conftest)."""
    return server_context


@pytest.fixture(scope="session")
def ca() -> trustme.CA:
    """The test CA that ``ca_file`` trusts."""
    return trustme.CA()


@pytest.fixture(scope="session")
def server_cert(ca: trustme.CA) -> trustme.LeafCert:
    """A valid leaf for ``localhost``, ``127.0.0.1`` and ``::1``."""
    return ca.issue_cert("localhost", "127.0.0.1", "::1")


@pytest.fixture(scope="session")
def ca_file(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> str:
    """Path of the test CA's certificate (PEM), for ``tls_config.ca_file``."""
    path = tmp_path_factory.mktemp("ca") / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


@pytest.fixture(scope="session")
def server_ssl(server_cert: trustme.LeafCert) -> ssl.SSLContext:
    """A server context presenting ``server_cert``."""
    return server_context(server_cert)


@pytest.fixture
def write_pem(tmp_path: Path) -> Callable[[str, bytes], str]:
    """Write PEM bytes to a file under ``tmp_path``; returns the path."""

    def write(name: str, data: bytes) -> str:
        path = tmp_path / name
        path.write_bytes(data)
        return str(path)

    return write


@pytest.fixture
def serve() -> Serve:
    """``async with serve(handler, ssl=ctx) as port``: an asyncio server on 127.0.0.1:0.

    On exit, open connections are closed (so handlers blocked on a read see EOF) and
    handler tasks are awaited, so no task outlives the test.
    """

    @asynccontextmanager
    async def _serve(handler: Handler, *, ssl: ssl.SSLContext | None = None) -> AsyncIterator[int]:
        # ``ssl`` shadows the module in here, as asyncio.start_server's keyword does
        writers: set[asyncio.StreamWriter] = set()
        tasks: set[asyncio.Task[None]] = set()

        async def tracked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            assert task is not None
            tasks.add(task)  # type: ignore[arg-type]
            writers.add(writer)
            try:
                await handler(reader, writer)
            except (ConnectionError, OSError, asyncio.IncompleteReadError):
                pass  # the probe hung up or broke off a handshake: expected in many tests
            except asyncio.CancelledError:
                pass  # a straggler cancelled at teardown: nothing to report
            finally:
                writers.discard(writer)
                writer.close()

        server = await asyncio.start_server(tracked, "127.0.0.1", 0, ssl=ssl)
        port = server.sockets[0].getsockname()[1]
        try:
            yield port
        finally:
            server.close()
            # aborting the connections wakes handlers blocked on a read (EOF) or a write
            # (reset); only a handler that ignores both is cancelled
            for writer in list(writers):
                writer.transport.abort()
            pending = {t for t in tasks if not t.done()}
            if pending:
                _, stragglers = await asyncio.wait(pending, timeout=5)
                for task in stragglers:
                    task.cancel()
                await asyncio.gather(*stragglers, return_exceptions=True)
            await server.wait_closed()

    return _serve


@pytest.fixture
def closed_port() -> int:
    """A loopback port that was bound and closed: connecting to it is refused."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port: int = sock.getsockname()[1]
    sock.close()
    return port


@pytest.fixture(scope="session")
def self_signed() -> tuple[bytes, bytes]:
    """A self-signed leaf for ``localhost``/``127.0.0.1``: (cert PEM, key PEM)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "self-signed.test")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=30))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem
