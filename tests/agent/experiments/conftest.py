"""The ``demo`` fixture: the agent's demo HTTP app on a loopback port, recording requests."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from agent.demo import demo_app
from tests.agent.experiments.support import CALL_TIMEOUT, DemoTarget


@pytest.fixture
async def demo() -> AsyncIterator[DemoTarget]:
    target = DemoTarget()
    app = demo_app()

    @web.middleware
    async def record(request: web.Request, handler: Any) -> web.StreamResponse:
        async with target.arrived:
            target.requests.append((request.method, request.path))
            target.arrived.notify_all()
        return await handler(request)

    async def hang(request: web.Request) -> web.Response:
        # blocks until the test ends (bounded), so a run is reliably mid-activity
        try:
            async with asyncio.timeout(CALL_TIMEOUT):
                await target.release.wait()
        except TimeoutError:
            pass
        return web.Response(text="released\n")

    app.middlewares.append(record)
    app.router.add_get("/hang", hang)
    runner = web.AppRunner(app, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server = site._server
    assert server is not None
    port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    target.base_url = f"http://127.0.0.1:{port}"
    try:
        yield target
    finally:
        target.release.set()
        await runner.cleanup()
