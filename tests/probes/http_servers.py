"""Real loopback servers for the http probe tests: an aiohttp app and a tiny HTTP proxy.

Everything binds port 0 and is torn down (connections included) when the ``async with``
ends. Handlers that must hang wait on an event that teardown sets; nothing sleeps.

    async with app_server(make_app()) as port:
        ...
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import ssl
import zlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from aiohttp import web

RELEASE = web.AppKey("release", asyncio.Event)
FLOOD_CHUNK = b"x" * (256 * 1024)
BODY = "hello seismo"


async def hello(request: web.Request) -> web.Response:
    return web.Response(
        text=BODY,
        headers={"X-Cache": "HIT", "Last-Modified": "Wed, 21 Oct 2015 07:28:00 GMT"},
    )


async def status(request: web.Request) -> web.Response:
    return web.Response(status=int(request.match_info["code"]), text="status")


async def redirect_chain(request: web.Request) -> web.Response:
    left = int(request.match_info["n"])
    if left == 0:
        return web.Response(text="arrived")
    raise web.HTTPFound(f"/redirect/{left - 1}")


async def loop(request: web.Request) -> web.Response:
    raise web.HTTPFound("/loop")


async def relative(request: web.Request) -> web.Response:
    # a relative reference without a leading slash: resolved against /rel/start
    raise web.HTTPFound("target?x=1")


async def relative_target(request: web.Request) -> web.Response:
    return web.Response(text=f"query={request.query_string}")


async def elsewhere(request: web.Request) -> web.Response:
    raise web.HTTPFound(request.query["to"])


async def slow(request: web.Request) -> web.Response:
    await request.app[RELEASE].wait()  # released at teardown, after the probe timed out
    return web.Response(text="late")


async def basic(request: web.Request) -> web.Response:
    if request.headers.get("Authorization") != "Basic dXNlcjpzM2NyZXQ=":  # user:s3cret
        return web.Response(status=401, headers={"WWW-Authenticate": "Basic"})
    return web.Response(text="welcome")


async def bearer(request: web.Request) -> web.Response:
    if request.headers.get("Authorization") != "Bearer t0ken":
        return web.Response(status=401)
    return web.Response(text="welcome")


async def echo(request: web.Request) -> web.Response:
    data = await request.read()
    return web.Response(
        text=f"{request.method} {data.decode()}",
        headers={"X-Method": request.method, "X-Host": request.host},
    )


async def compressed(request: web.Request) -> web.Response:
    kind = request.match_info["kind"]
    raw = (BODY * 100).encode()
    data = gzip.compress(raw) if kind == "gzip" else zlib.compress(raw)
    return web.Response(body=data, headers={"Content-Encoding": kind})


async def flood(request: web.Request) -> web.StreamResponse:
    """``?size=N`` bytes (chunked, no Content-Length); without ``size``, forever."""
    size = int(request.query.get("size", "-1"))
    response = web.StreamResponse()
    await response.prepare(request)
    sent = 0
    with contextlib.suppress(ConnectionResetError):  # the probe hangs up on a flood
        while size < 0 or sent < size:
            chunk = FLOOD_CHUNK if size < 0 else FLOOD_CHUNK[: size - sent]
            await response.write(chunk)
            sent += len(chunk)
        await response.write_eof()
    return response


async def set_cookie(request: web.Request) -> web.Response:
    response = web.HTTPFound("/cookie/check")
    response.set_cookie("session", "abc123")
    raise response


async def check_cookie(request: web.Request) -> web.Response:
    if request.cookies.get("session") != "abc123":
        return web.Response(status=403, text="no cookie")
    return web.Response(text="cookie ok")


def make_app() -> web.Application:
    app = web.Application()
    app[RELEASE] = asyncio.Event()
    app.router.add_get("/", hello)
    app.router.add_get("/status/{code}", status)
    app.router.add_get("/redirect/{n}", redirect_chain)
    app.router.add_get("/loop", loop)
    app.router.add_get("/rel/start", relative)
    app.router.add_get("/rel/target", relative_target)
    app.router.add_get("/elsewhere", elsewhere)
    app.router.add_get("/slow", slow)
    app.router.add_get("/basic", basic)
    app.router.add_get("/bearer", bearer)
    app.router.add_route("*", "/echo", echo)
    app.router.add_get("/compressed/{kind}", compressed)
    app.router.add_get("/flood", flood)
    app.router.add_get("/cookie/set", set_cookie)
    app.router.add_get("/cookie/check", check_cookie)
    return app


@asynccontextmanager
async def app_server(
    app: web.Application, *, host: str = "127.0.0.1", ssl_context: ssl.SSLContext | None = None
) -> AsyncIterator[int]:
    """Serve ``app`` on ``host`` port 0; yields the bound port."""
    runner = web.AppRunner(app, shutdown_timeout=1.0, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, 0, ssl_context=ssl_context)
    await site.start()
    server = site._server
    assert isinstance(server, asyncio.Server)
    port: int = server.sockets[0].getsockname()[1]
    try:
        yield port
    finally:
        app[RELEASE].set()
        await runner.cleanup()


@dataclass
class Proxy:
    """A forward proxy: absolute-form requests for http, ``CONNECT`` tunnels for https."""

    request_lines: list[str] = field(default_factory=list)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)  # type: ignore[arg-type]
        upstream: asyncio.StreamWriter | None = None
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            line, _, rest = head.partition(b"\r\n")
            self.request_lines.append(line.decode())
            method, target, version = line.decode().split(" ")
            if method == "CONNECT":
                host, _, port = target.rpartition(":")
                up_reader, upstream = await asyncio.open_connection(host.strip("[]"), int(port))
                writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            else:
                url = urlsplit(target)
                assert url.hostname is not None
                up_reader, upstream = await asyncio.open_connection(url.hostname, url.port or 80)
                path = url.path + (f"?{url.query}" if url.query else "")
                upstream.write(f"{method} {path} {version}\r\n".encode() + rest)
            await asyncio.gather(_pipe(reader, upstream), _pipe(up_reader, writer))
        except (OSError, asyncio.IncompleteReadError):
            pass  # a side hung up
        finally:
            if upstream is not None:
                upstream.close()
            writer.close()

    @asynccontextmanager
    async def running(self) -> AsyncIterator[int]:
        server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        try:
            yield server.sockets[0].getsockname()[1]
        finally:
            server.close()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await server.wait_closed()


async def _pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError):
        while data := await src.read(65536):
            dst.write(data)
            await dst.drain()
        if dst.can_write_eof():
            dst.write_eof()
