"""Shared fixtures for agent tests: loopback targets and a running in-process agent."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from agent.daemon import Agent
from agent.demo import demo_app
from agent.server import bound_port
from tests.waiting import until


@dataclass
class Target:
    url: str
    port: int


@contextlib.asynccontextmanager
async def serve_demo_target() -> AsyncIterator[Target]:
    """The demo HTTP app on a loopback port (a context manager, for tests on their own loop)."""
    runner = web.AppRunner(demo_app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = bound_port(site)
    try:
        yield Target(f"http://127.0.0.1:{port}/", port)
    finally:
        await runner.cleanup()


@contextlib.asynccontextmanager
async def serve_hanging_target() -> AsyncIterator[Target]:
    """Accepts TCP connections and never answers."""
    held: list[asyncio.StreamWriter] = []

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield Target(f"http://127.0.0.1:{port}/", port)
    finally:
        for w in held:
            w.close()
        server.close()
        await server.wait_closed()


@pytest.fixture
async def http_target() -> AsyncIterator[Target]:
    """The demo HTTP app on a loopback port."""
    async with serve_demo_target() as target:
        yield target


@pytest.fixture
async def hanging_target() -> AsyncIterator[Target]:
    """Accepts TCP connections and never answers."""
    async with serve_hanging_target() as target:
        yield target


@dataclass
class RunningAgent:
    agent: Agent
    base: str
    session: aiohttp.ClientSession
    config_path: Path | None

    async def get(self, path: str, **kw: object) -> tuple[int, str]:
        async with self.session.get(self.base + path, **kw) as resp:  # type: ignore[arg-type]
            return resp.status, await resp.text()

    async def post(self, path: str, token: str | None = None) -> tuple[int, str]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with self.session.post(self.base + path, headers=headers) as resp:
            return resp.status, await resp.text()

    async def samples(self) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        status, text = await self.get("/metrics")
        assert status == 200
        out = {}
        for fam in text_string_to_metric_families(text):
            for s in fam.samples:
                out[(s.name, frozenset(s.labels.items()))] = s.value
        return out

    def ran(self, *names: str) -> bool:
        return all(
            (rt := self.agent.scheduler.get(n)) is not None and rt.last is not None for n in names
        )


@contextlib.asynccontextmanager
async def start_agent(
    config_path: Path | None, data_dir: Path, env: dict[str, str] | None = None
) -> AsyncIterator[RunningAgent]:
    agent = Agent(
        config_path=config_path, data_dir=data_dir, listen=("127.0.0.1", 0), env=env or {}
    )
    task = asyncio.create_task(agent.run())
    try:
        await until(lambda: agent.ready or task.done())
        if task.done():
            task.result()  # re-raise a startup error
        async with aiohttp.ClientSession() as session:
            yield RunningAgent(agent, f"http://127.0.0.1:{agent.port}", session, config_path)
    finally:
        agent.stop()
        await asyncio.wait_for(task, 10)


@pytest.fixture
def http_target_sync() -> Iterator[Target]:
    """The demo HTTP app in a thread of its own, for tests that are not async."""
    import threading

    loop = asyncio.new_event_loop()
    ready = threading.Event()
    holder: dict[str, object] = {}

    async def serve() -> None:
        runner = web.AppRunner(demo_app(), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        holder["port"] = bound_port(site)
        holder["runner"] = runner
        ready.set()

    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(serve(), loop).result(10)
    ready.wait(10)
    port = int(holder["port"])  # type: ignore[call-overload]
    try:
        yield Target(f"http://127.0.0.1:{port}/", port)
    finally:
        runner = holder["runner"]
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)  # type: ignore[attr-defined]
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
