"""Loopback demo targets for the embedded default config, so a new user sees real metrics.

``seismo agent`` with no ``--config`` starts, on 127.0.0.1 only:

- an HTTP server (default port 18080) and the same app over HTTPS (18443), whose
  certificate comes from a CA generated at start and written to ``<data-dir>/demo/ca.pem``;
- a DNS server (default port 15353, UDP and TCP) serving the zone ``demo.seismo.test.``.

A busy default port falls back to an ephemeral one; the agent prints the URLs it uses.

The HTTP app is also the target of the ``experiments/`` catalog:

    GET  /                  200, "seismo demo"          GET /healthz      200 "ok"
    GET  /status/{code}     that status                 GET /delay/{ms}   200 after ms
    POST /admin/degrade     {"status": 503, "delay_ms": 0, "seconds": 30}: / and /healthz
                            answer with that status (after that delay) for that long
    POST /admin/restore     ends a degradation now

    demo = DemoTargets(data_dir)
    await demo.start()
    ...
    await demo.close()
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import json
import os
import ssl
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from agent.dnsserver import DNSServer, Record, Zone
from agent.server import bound_port

__all__ = ["DEMO_ZONE", "DemoPorts", "DemoTargets", "generate_ca"]

DEMO_ZONE = "demo.seismo.test."
_MAX_DELAY_MS = 30_000


@dataclass(frozen=True, slots=True)
class DemoPorts:
    http: int = 18080
    https: int = 18443
    dns: int = 15353


@dataclass(slots=True)
class _Degradation:
    status: int = 200
    delay_ms: int = 0
    until: float = 0.0


def generate_ca(
    directory: Path, hosts: tuple[str, ...] = ("localhost", "127.0.0.1", "::1")
) -> tuple[Path, Path, Path]:
    """Write a fresh CA and a server cert for ``hosts``. Returns (ca.pem, cert.pem, key.pem)."""
    directory.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "seismo demo CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = []
    for host in hosts:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            sans.append(x509.DNSName(host))
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=90))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    ca_path, cert_path, key_path = (
        directory / "ca.pem",
        directory / "cert.pem",
        directory / "key.pem",
    )
    _write(ca_path, ca_cert.public_bytes(serialization.Encoding.PEM), 0o644)
    _write(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    _write(
        key_path,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
        0o600,
    )
    return ca_path, cert_path, key_path


def _write(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def demo_app() -> web.Application:
    """The demo HTTP app (also used by tests and the experiments catalog)."""
    state = _Degradation()
    loop_time = asyncio.get_running_loop().time

    async def degraded(request: web.Request, body: str) -> web.Response:
        if state.until > loop_time():
            if state.delay_ms:
                await asyncio.sleep(state.delay_ms / 1000)
            if state.status != 200:
                return web.Response(status=state.status, text=f"degraded: {state.status}\n")
        return web.Response(text=body)

    async def index(request: web.Request) -> web.Response:
        return await degraded(request, "seismo demo: this target is served by the agent itself\n")

    async def healthz(request: web.Request) -> web.Response:
        return await degraded(request, "ok\n")

    async def status(request: web.Request) -> web.Response:
        code = _int(request.match_info["code"], "code", 100, 599)
        return web.Response(status=code, text=f"status {code}\n")

    async def delay(request: web.Request) -> web.Response:
        ms = _int(request.match_info["ms"], "ms", 0, _MAX_DELAY_MS)
        await asyncio.sleep(ms / 1000)
        return web.Response(text=f"delayed {ms} ms\n")

    async def degrade(request: web.Request) -> web.Response:
        try:
            spec = await request.json() if request.can_read_body else {}
        except json.JSONDecodeError as exc:
            raise web.HTTPBadRequest(text=f"body is not JSON: {exc}\n") from exc
        if not isinstance(spec, dict):
            raise web.HTTPBadRequest(text="body must be a JSON object\n")
        state.status = _int(spec.get("status", 503), "status", 100, 599)
        state.delay_ms = _int(spec.get("delay_ms", 0), "delay_ms", 0, _MAX_DELAY_MS)
        seconds = _int(spec.get("seconds", 30), "seconds", 1, 3600)
        state.until = loop_time() + seconds
        return web.json_response(
            {"status": state.status, "delay_ms": state.delay_ms, "seconds": seconds}
        )

    async def restore(request: web.Request) -> web.Response:
        state.until = 0.0
        return web.json_response({"restored": True})

    app = web.Application()
    app.router.add_get("/", index)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/status/{code}", status)
    app.router.add_get("/delay/{ms}", delay)
    app.router.add_post("/admin/degrade", degrade)
    app.router.add_post("/admin/restore", restore)
    return app


def _int(value: object, name: str, low: int, high: int) -> int:
    try:
        number = int(str(value))
    except ValueError:
        raise web.HTTPBadRequest(text=f"{name} must be an integer, got {value!r}\n") from None
    if not low <= number <= high:
        raise web.HTTPBadRequest(text=f"{name} must be within {low}-{high}, got {number}\n")
    return number


def demo_zone() -> Zone:
    return Zone(
        DEMO_ZONE,
        (
            Record("@", "SOA", f"ns.{DEMO_ZONE} hostmaster.{DEMO_ZONE} 1 3600 600 86400 60", 3600),
            Record("@", "NS", f"ns.{DEMO_ZONE}", 3600),
            Record("ns", "A", "127.0.0.1", 300),
            Record("www", "A", "127.0.0.1", 300),
            Record("www", "AAAA", "::1", 300),
            Record("api", "CNAME", f"www.{DEMO_ZONE}", 300),
            Record("@", "MX", f"10 mail.{DEMO_ZONE}", 300),
            Record("@", "TXT", '"seismo demo zone"', 300),
        ),
    )


class DemoTargets:
    """Starts and stops the demo servers. ``urls()`` says where they listen."""

    def __init__(self, data_dir: Path, ports: DemoPorts | None = None) -> None:
        self._dir = data_dir / "demo"
        self._wanted = ports or DemoPorts()
        self._runner: web.AppRunner | None = None
        self._dns: DNSServer | None = None
        self.ports = self._wanted
        self.ca_file = self._dir / "ca.pem"

    async def start(self) -> None:
        _, cert, key = await asyncio.to_thread(generate_ca, self._dir)
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(cert, key)
        self._runner = web.AppRunner(demo_app(), access_log=None)
        await self._runner.setup()
        http_port = await self._site(web.TCPSite, self._wanted.http)
        https_port = await self._site(web.TCPSite, self._wanted.https, ctx)
        dns_port = await self._start_dns(self._wanted.dns)
        self.ports = DemoPorts(http=http_port, https=https_port, dns=dns_port)

    async def _start_dns(self, port: int) -> int:
        for candidate in (port, 0):
            server = DNSServer(demo_zone())
            try:
                bound = await server.start("127.0.0.1", candidate)
            except OSError:
                await server.close()
                if candidate == 0:
                    raise
                continue
            self._dns = server
            return bound
        raise AssertionError("unreachable")

    async def _site(
        self, site_type: type[web.TCPSite], port: int, ctx: ssl.SSLContext | None = None
    ) -> int:
        assert self._runner is not None
        for candidate in (port, 0):
            site = site_type(self._runner, "127.0.0.1", candidate, ssl_context=ctx)
            try:
                await site.start()
            except OSError:
                if candidate == 0:
                    raise
                continue
            return bound_port(site)
        raise AssertionError("unreachable")

    def variables(self) -> dict[str, str]:
        """Values for the ``${DEMO_*}`` references of the embedded default config."""
        return {
            "DEMO_HTTP_PORT": str(self.ports.http),
            "DEMO_HTTPS_PORT": str(self.ports.https),
            "DEMO_DNS_PORT": str(self.ports.dns),
            "DEMO_CA_FILE": str(self.ca_file),
        }

    def urls(self) -> list[str]:
        return [
            f"http://127.0.0.1:{self.ports.http}/",
            f"https://127.0.0.1:{self.ports.https}/  (CA: {self.ca_file})",
            f"dns://127.0.0.1:{self.ports.dns}  (zone {DEMO_ZONE})",
        ]

    async def close(self) -> None:
        if self._dns is not None:
            await self._dns.close()
            self._dns = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
