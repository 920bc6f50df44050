"""The agent daemon: config → scheduler → probes → metrics / API, and config reloads.

A reload (SIGHUP, ``POST /-/reload``, or the config file changing) parses the new config
completely before touching anything. A bad one is logged with its ``file:line`` errors, sets
``seismo_config_last_reload_successful 0`` and leaves the old config running.

With no config file the agent starts its demo targets (agent/demo.py) and runs the embedded
default config (agent/resources/default.yaml) against them.

    agent = Agent(config_path=Path("agent.yaml"), data_dir=Path("data"), listen=("0.0.0.0", 9115))
    await agent.run()
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hashlib
import logging
import os
import signal
import time
from collections.abc import Callable, Mapping
from importlib import resources
from pathlib import Path

from aiohttp import web
from prometheus_client import CollectorRegistry

from agent.auth import load_token
from agent.config import Config, ConfigError, Identity, parse_config
from agent.demo import DemoPorts, DemoTargets
from agent.experiments.service import ExperimentService
from agent.faults.engine import FaultEngine
from agent.faults.kinds import all_kinds
from agent.faults.ledger import Ledger, ledger_path
from agent.faults.preflight import detect
from agent.faults.targets import TargetResolver
from agent.front import Front
from agent.metrics import AgentMetrics
from agent.scheduler import CheckSpec, LoopLagMonitor, Scheduler
from agent.server import build_app
from probes import Connector, run_probe
from probes.result import ProbeResult

__all__ = ["DEFAULT_CONFIG_NAME", "Agent", "check_specs", "embedded_config_text"]

log = logging.getLogger(__name__)

DEFAULT_CONFIG_NAME = "<embedded default>"
#: cyclic GC thresholds (CPython 3.11's default: 700, 10, 10); see _freeze_heap
_GC_THRESHOLDS = (700, 3, 300)


def embedded_config_text() -> str:
    return resources.files("agent").joinpath("resources/default.yaml").read_text("utf-8")


def _freeze_heap() -> None:
    """After a (re)load: collect once, freeze what is left, and make collections short.

    Measured at 10,000 checks: the loaded agent (modules, config, a runtime per check) is
    ~170,000 objects that live as long as the config, and the checks' last results another
    ~250,000 that live one interval each, long enough to reach the oldest generation. With
    CPython 3.11's default thresholds a full collection walked all of them every ~10 s and
    held the event loop ~300 ms each time, so a few percent of all runs started late. Frozen
    objects are walked by no collection; full collections, now ~2 minutes apart, hold it
    ~200 ms. The middle generation, which every result passes through on its way, is
    collected after 3 young collections instead of 10: as much work in all, in pauses of
    ~12 ms instead of ~25 ms (the lateness goal is 20 ms). Young collections still take
    cyclic garbage as it is made.
    """
    gc.unfreeze()  # what the previous config left in cycles is collected here
    gc.collect()
    gc.freeze()
    gc.set_threshold(*_GC_THRESHOLDS)


def check_specs(config: Config) -> list[CheckSpec]:
    """The scheduler's view of the config's checks."""
    return [
        CheckSpec(
            name=c.name,
            module_name=c.module,
            module=config.modules[c.module],
            target=c.target,
            interval=c.interval,
            timeout=config.effective_timeout(c),
            labels=tuple(sorted(c.labels.items())),
        )
        for c in config.checks
    ]


class Agent:
    """One running agent. ``run()`` until ``stop()`` (or SIGTERM/SIGINT with signals on)."""

    def __init__(
        self,
        *,
        config_path: Path | None,
        data_dir: Path,
        listen: tuple[str, int] = ("127.0.0.1", 9115),
        env: Mapping[str, str] | None = None,
        demo_ports: DemoPorts | None = None,
        announce: Callable[[str], None] | None = None,
    ) -> None:
        self.config_path = config_path
        self.data_dir = data_dir
        self.listen = listen
        self._env = dict(os.environ if env is None else env)
        self._demo_ports = demo_ports or DemoPorts()
        self._announce = announce or (lambda line: log.info("%s", line))
        self._stop = asyncio.Event()
        self._reload_lock = asyncio.Lock()
        self._config_digest = b""
        self.demo: DemoTargets | None = None
        self.ready = False
        self.port = 0
        self.front: Front | None = None  # the listening socket (agent.front), set by run()
        self.lag = LoopLagMonitor()
        self.connector = Connector()
        self.clock: Callable[[], float] = time.monotonic
        # set by _load_initial(); typed here so handlers can rely on them
        self.config: Config
        self.identity: Identity
        self.token: str | None
        self.metrics: AgentMetrics
        self.scheduler: Scheduler
        self.experiments: ExperimentService
        self.faults: FaultEngine

    # --- lifecycle ------------------------------------------------------------------

    async def run(self, *, handle_signals: bool = False) -> None:
        """Serve until stopped. Raises ConfigError if the initial config is unusable."""
        loop = asyncio.get_running_loop()
        self.clock = loop.time
        self.data_dir.mkdir(parents=True, exist_ok=True)
        runner: web.AppRunner | None = None
        front: Front | None = None
        experiments_started = False
        try:
            if self.config_path is None:
                self.demo = DemoTargets(self.data_dir, self._demo_ports)
                await self.demo.start()
                self._env.update(self.demo.variables())
            await self._load_initial()
            await self._start_faults()  # revert whatever a crashed agent left on the node
            await self.experiments.start()  # reconcile journals of runners that died
            experiments_started = True
            runner = web.AppRunner(build_app(self), access_log=None)
            await runner.setup()
            assert runner.server is not None
            front = self.front = Front(self, runner.server)  # /probe; aiohttp for the rest
            await front.start(self.listen[0], self.listen[1])
            self.port = front.port
            self._announce_start()
            if handle_signals:
                self._install_signals(loop)
            _freeze_heap()
            async with asyncio.TaskGroup() as tg:
                tasks = [
                    tg.create_task(self.scheduler.run(), name="scheduler"),
                    tg.create_task(self.lag.run(), name="loop-lag"),
                    tg.create_task(self.experiments.run(), name="experiment-schedules"),
                    tg.create_task(self.faults.run(), name="fault-ttl-and-dead-man"),
                ]
                if self.config_path is not None and self.config.agent.watch_config:
                    tasks.append(tg.create_task(self._watch(), name="config-watch"))
                await asyncio.sleep(0)  # let the scheduler arm its timers
                self.ready = True
                self.metrics.ready.set(1)
                await self._stop.wait()
                self.ready = False
                await self.experiments.close()  # the active run's rollbacks first
                await self.faults.clear("agent_stop")  # then anything still on the node
                for task in tasks:
                    task.cancel()
        finally:
            self.ready = False
            if experiments_started:
                await self.experiments.close()
            if handle_signals:
                for sig in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
                    loop.remove_signal_handler(sig)
            if front is not None:
                await front.close()  # stop listening; cancel the probes in flight
            if runner is not None:
                await runner.cleanup()  # closes the connections handed over to aiohttp
            if self.demo is not None:
                await self.demo.close()

    def stop(self) -> None:
        self._stop.set()

    async def _start_faults(self) -> None:
        settings = self.config.faults
        self.faults = FaultEngine(
            Ledger(ledger_path(self.data_dir)),
            TargetResolver(settings.allowed_targets),
            settings,
            await detect(),
            all_kinds(),
        )
        reverted = await self.faults.reconcile()
        if reverted:
            log.warning("reverted %d faults left on the node by an earlier agent", len(reverted))

    def _install_signals(self, loop: asyncio.AbstractEventLoop) -> None:
        loop.add_signal_handler(signal.SIGTERM, self.stop)
        loop.add_signal_handler(signal.SIGINT, self.stop)
        loop.add_signal_handler(signal.SIGHUP, self._reload_soon)

    def _reload_soon(self) -> None:
        task = asyncio.get_running_loop().create_task(self.reload())
        task.add_done_callback(lambda t: t.exception() if not t.cancelled() else None)

    def _announce_start(self) -> None:
        base = self.url()
        source = self.config_path or DEFAULT_CONFIG_NAME
        self._announce(f"seismo agent: {len(self.config.checks)} checks from {source}")
        self._announce(f"  metrics  {base}/metrics")
        self._announce(f"  probe    {base}/probe?module=http_2xx&target=...")
        self._announce(f"  checks   {base}/api/v1/checks")
        self._announce(f"  runs     {base}/api/v1/runs")
        if self.demo is not None:
            self._announce("  demo targets (loopback):")
            for url in self.demo.urls():
                self._announce(f"    {url}")

    # --- config ---------------------------------------------------------------------

    async def _read(self) -> tuple[str, str]:
        if self.config_path is None:
            return embedded_config_text(), DEFAULT_CONFIG_NAME
        path = self.config_path
        try:
            text = await asyncio.to_thread(path.read_text, "utf-8")
        except OSError as exc:
            raise ConfigError([f"{path}:0: cannot read config: {exc.strerror or exc}"]) from exc
        except UnicodeDecodeError as exc:
            raise ConfigError([f"{path}:0: config is not UTF-8 text: {exc}"]) from exc
        return text, str(path)

    def _parse(self, text: str, name: str) -> tuple[Config, list[str], str | None]:
        config, warnings = parse_config(text, name, self._env)
        try:
            token = load_token(config.api)
        except ValueError as exc:
            raise ConfigError([f"{name}:0: {exc}"]) from exc
        return config, warnings, token

    async def _load_initial(self) -> None:
        text, name = await self._read()
        config, warnings, token = self._parse(text, name)
        for w in warnings:
            log.warning("%s", w)
        self._apply(config, token, hashlib.sha256(text.encode()).digest())
        self.metrics = AgentMetrics(CollectorRegistry(), self.identity)
        self.metrics.config_reloaded(True, time.time())
        self.scheduler = Scheduler(
            self._run_check,
            node=self.identity.node,
            max_concurrency=config.agent.max_concurrency,
        )
        self.scheduler.update(check_specs(config))
        base_dir = self.config_path.parent if self.config_path is not None else Path.cwd()
        self.experiments = ExperimentService(
            config.experiments, self.data_dir, base_dir=base_dir, env=self.runner_env
        )

    def url(self) -> str:
        """This agent's own base URL, as the agent itself can reach it."""
        host = self.listen[0]
        if host in ("", "0.0.0.0"):  # noqa: S104 - not binding, reaching
            host = "127.0.0.1"
        elif host == "::":
            host = "::1"
        return f"http://{'[' + host + ']' if ':' in host else host}:{self.port}"

    def runner_env(self) -> dict[str, str]:
        """The environment of experiment runner processes: the agent's, plus its identity,
        its own URL (for ``check`` guardrails and providers) and, in demo mode, the demo URLs."""
        env = {**os.environ, **self._env}
        env.update(
            SEISMO_REGION=self.identity.region,
            SEISMO_ZONE=self.identity.zone,
            SEISMO_NODE=self.identity.node,
            SEISMO_AGENT_URL=self.url(),
        )
        if self.token:  # the runner's fault providers and heartbeats call this agent
            env["SEISMO_TOKEN"] = self.token
        if self.demo is not None:  # what the experiments/ catalog reads
            ports = self.demo.ports
            env.setdefault("SEISMO_DEMO_HTTP_URL", f"http://127.0.0.1:{ports.http}")
            env.setdefault("SEISMO_DEMO_TLS_TARGET", f"127.0.0.1:{ports.https}")
            env.setdefault("SEISMO_DEMO_DNS_SERVER", f"127.0.0.1:{ports.dns}")
            env.setdefault("SEISMO_DEMO_CA_FILE", str(self.demo.ca_file))
        return env

    def _apply(self, config: Config, token: str | None, digest: bytes) -> None:
        self.config = config
        self.identity = config.agent.identity(self._env)
        self.token = token
        self._config_digest = digest

    async def reload(self) -> tuple[bool, list[str]]:
        """Reload the config. A bad config keeps the old one running."""
        async with self._reload_lock:
            try:
                text, name = await self._read()
                config, warnings, token = self._parse(text, name)
            except ConfigError as exc:
                for line in exc.errors:
                    log.error("config reload failed: %s", line)
                self.metrics.config_reloaded(False, time.time())
                return False, exc.errors
            for w in warnings:
                log.warning("%s", w)
            old_identity = self.identity
            self._apply(config, token, hashlib.sha256(text.encode()).digest())
            self.connector = Connector()  # fresh SSL contexts: CA files may have rotated
            if self.identity != old_identity:
                self.metrics.set_identity(self.identity)
            added, removed, kept = self.scheduler.update(check_specs(config))
            self.experiments.update(config.experiments)
            self.faults.update_policy(config.faults)
            _freeze_heap()
            self.metrics.config_reloaded(True, time.time())
            log.info(
                "config reloaded from %s: %d checks added, %d removed, %d kept",
                name,
                added,
                removed,
                kept,
            )
            return True, warnings

    async def _watch(self) -> None:
        """Reload when the config file's content changes (polling; works with ConfigMaps)."""
        assert self.config_path is not None
        path = self.config_path
        while True:
            await asyncio.sleep(self.config.agent.watch_interval)
            with contextlib.suppress(OSError):
                data = await asyncio.to_thread(path.read_bytes)
                if hashlib.sha256(data).digest() != self._config_digest:
                    ok, _ = await self.reload()
                    if not ok:
                        # don't retry the same bad content every tick
                        self._config_digest = hashlib.sha256(data).digest()

    async def _run_check(self, spec: CheckSpec) -> ProbeResult:
        return await run_probe(spec.module, spec.target, spec.timeout, connector=self.connector)
