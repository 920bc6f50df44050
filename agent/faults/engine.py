"""The fault engine: applies faults ledger-first and guarantees they are taken away.

    apply:     validate params → resolve the target (allowlist) → blast-radius policy →
               capability check → kind.prepare (read-only checks in the target) → plan (apply
               + exact inverse) → LEDGER (fsync) → apply steps
               (a failure part-way runs the inverse at once)
    revert:    run the inverse steps → ledger
    instant:   a kind with ``instant = True`` (a kill) is reverted (reason "instant") right
               after it is applied: it has nothing to undo
    ttl:       every fault has one (capped by ``faults.max_ttl``); reverted at expiry
    dead man:  a fault owned by a run (``owner="run:<id>"``) is reverted when the run's
               heartbeat is older than ``faults.heartbeat_timeout``
    kill:      ``clear()`` reverts everything now
    reconcile: at start, revert everything the ledger says may be on the node, then sweep
               anything tagged as seismo's with no ledger entry (nftables tables ``seismo_*``,
               qdiscs with handle ``5e15:``, helper processes carrying ``seismo-fault=``)

Every apply and revert writes one audit line (logger ``seismo.audit``).

    engine = FaultEngine(ledger, resolver, settings, caps, all_kinds())
    await engine.reconcile()
    entry = await engine.apply("network_loss", "netns:blue", {"percent": 30}, ttl=60, owner="api")
    await engine.revert(entry.id, "rollback")
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from pydantic import ValidationError

from agent.faults.kinds.base import QDISC_HANDLE, FaultKind, Invalid, Refused, table_name
from agent.faults.ledger import FaultEntry, Ledger, LedgerCorrupt
from agent.faults.preflight import Capabilities
from agent.faults.settings import FaultSettings
from agent.faults.steps import (
    MARKER_PREFIX,
    Kill,
    Run,
    StepFailed,
    execute,
    marked_processes,
    output,
)
from agent.faults.targets import TargetError, TargetResolver

__all__ = ["FaultEngine", "FaultError", "FaultFailed", "FaultInvalid", "FaultRefused", "FaultStats"]

log = logging.getLogger(__name__)
audit = logging.getLogger("seismo.audit")

TICK = 0.25
#: reverted faults kept in memory for GET /api/v1/faults/{id}; older ones are dropped
HISTORY = 1000
#: the ledger is compacted (when nothing is active) once it is larger than this
LEDGER_COMPACT_BYTES = 1 << 20


class FaultError(Exception):
    """Base of fault errors; ``problems`` are human messages naming the thing and the rule."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


class FaultInvalid(FaultError):
    """Bad input: unknown kind, bad parameter, bad or disallowed target, TTL over the cap."""


class FaultRefused(FaultError):
    """Valid, but not now or not here: the node lacks a capability, or the policy's limit."""


class FaultFailed(FaultError):
    """Applying failed part-way; the inverse was run."""


@dataclass(slots=True)
class FaultStats:
    """Counters for agent.metrics (plain numbers; no prometheus_client here)."""

    applied: dict[str, int] = field(default_factory=dict)
    reverted: dict[tuple[str, str], int] = field(default_factory=dict)
    refused: dict[str, int] = field(default_factory=dict)


class FaultEngine:
    def __init__(
        self,
        ledger: Ledger,
        resolver: TargetResolver,
        settings: FaultSettings,
        caps: Capabilities,
        kinds: Mapping[str, FaultKind],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._ledger = ledger
        self._resolver = resolver
        self.settings = settings
        self.caps = caps
        self._kinds = kinds
        self._clock = clock
        self._entries: dict[str, FaultEntry] = {}
        self._helpers: dict[str, list[asyncio.subprocess.Process]] = {}
        self._heartbeats: dict[str, float] = {}
        self._lock = asyncio.Lock()
        self.stats = FaultStats()
        #: unreadable ledger lines found by the last reconcile (kept in the file), for the API
        self.ledger_problems: list[str] = []

    def update_policy(self, settings: FaultSettings) -> None:
        """A config reload: new blast-radius policy. Active faults keep their TTLs."""
        self.settings = settings
        self._resolver = self._resolver.with_allowed(settings.allowed_targets)

    # --- queries --------------------------------------------------------------------

    def active(self) -> list[FaultEntry]:
        return [e for e in self._entries.values() if e.active]

    def get(self, fault_id: str) -> FaultEntry | None:
        return self._entries.get(fault_id)

    def kinds(self) -> Mapping[str, FaultKind]:
        return self._kinds

    # --- apply ----------------------------------------------------------------------

    async def apply(
        self,
        kind_name: str,
        target_spec: str,
        params: dict[str, Any],
        *,
        ttl: float | None = None,
        owner: str = "api",
    ) -> FaultEntry:
        """Apply one fault. Raises FaultInvalid / FaultRefused / FaultFailed."""
        kind = self._kinds.get(kind_name)
        if kind is None:
            raise FaultInvalid(
                [f"unknown fault kind {kind_name!r} (known: {', '.join(sorted(self._kinds))})"]
            )
        try:
            parsed = kind.parse(params)
        except ValidationError as exc:
            raise FaultInvalid([_param_problem(kind_name, e) for e in exc.errors()]) from None
        ttl = self.settings.default_ttl if ttl is None else ttl
        if not 0 < ttl <= self.settings.max_ttl:
            raise FaultInvalid(
                [f"ttl {ttl:g}s must be > 0 and <= faults.max_ttl {self.settings.max_ttl:g}s"]
            )
        try:
            target = self._resolver.resolve(target_spec)
        except TargetError as exc:
            raise FaultInvalid([str(exc)]) from None
        if target.kind not in kind.targets:
            raise FaultInvalid([f"fault {kind_name} cannot target a {target.kind}"])
        missing = self.caps.missing(kind.requires)
        if missing:
            self._count_refused(kind_name)
            why = "; ".join(f"{m}: {self.caps.details.get(m, 'not available')}" for m in missing)
            raise FaultRefused([f"this node cannot apply {kind_name}: missing {why}"])
        async with self._lock:
            # under the lock: what prepare reads (e.g. "is a qdisc already there?") stays true
            # until this fault is applied
            try:
                parsed = await kind.prepare(parsed, target)
            except Invalid as exc:
                raise FaultInvalid(exc.problems) from None
            except Refused as exc:
                self._count_refused(kind_name)
                raise FaultRefused([str(exc)]) from None
            if len(self.active()) >= self.settings.max_concurrent:
                self._count_refused(kind_name)
                raise FaultRefused(
                    [
                        f"faults.max_concurrent ({self.settings.max_concurrent}) "
                        "faults are already active"
                    ]
                )
            fault_id = f"{kind_name.replace('_', '-')}-{secrets.token_hex(4)}"
            try:
                plan = kind.plan_for(fault_id, parsed, target, self.caps, ttl=ttl)
            except Refused as exc:
                self._count_refused(kind_name)
                raise FaultRefused([str(exc)]) from None
            now = self._clock()
            entry = FaultEntry(
                id=fault_id,
                kind=kind_name,
                target=target_spec,
                params=parsed.model_dump(mode="json"),
                created_at=now,
                expires_at=now + ttl,
                owner=owner,
                apply=plan.apply,
                revert=plan.revert,
                facts=plan.facts,
            )
            self._ledger.intent(entry)  # durable before the node changes
            self._entries[fault_id] = entry
            if owner.startswith("run:"):
                self._heartbeats.setdefault(owner, now)
            try:
                for step in plan.apply:
                    proc = await execute(step)
                    if proc is not None:
                        self._helpers.setdefault(fault_id, []).append(proc)
            except (StepFailed, OSError) as exc:
                detail = exc.detail if isinstance(exc, StepFailed) else str(exc)
                self._ledger.failed(fault_id, detail)
                self._entries[fault_id] = replace(entry, state="failed", end_reason=detail)
                await self._revert_locked(fault_id, "apply_failed")
                raise FaultFailed(
                    [f"applying {kind_name} to {target_spec} failed: {detail}"]
                ) from None
            self._ledger.applied(fault_id)
            entry = replace(entry, state="applied")
            self._entries[fault_id] = entry
        self.stats.applied[kind_name] = self.stats.applied.get(kind_name, 0) + 1
        audit.info(
            "fault applied id=%s kind=%s target=%s owner=%s ttl=%gs params=%s facts=%s",
            fault_id,
            kind_name,
            target_spec,
            owner,
            ttl,
            entry.params,
            entry.facts,
        )
        if kind.instant:  # done once applied, nothing to undo: out of the active set at once
            entry = await self.revert(fault_id, "instant") or entry
        return entry

    def _count_refused(self, kind: str) -> None:
        self.stats.refused[kind] = self.stats.refused.get(kind, 0) + 1

    # --- revert ---------------------------------------------------------------------

    async def revert(self, fault_id: str, reason: str) -> FaultEntry | None:
        """Revert one fault (idempotent). None if the id is unknown."""
        async with self._lock:
            return await self._revert_locked(fault_id, reason)

    async def _revert_locked(self, fault_id: str, reason: str) -> FaultEntry | None:
        entry = self._entries.get(fault_id)
        if entry is None:
            return None
        if not entry.active:
            return entry
        errors: list[str] = []
        for step in entry.revert:  # every step, even after one fails
            try:
                await execute(step)
            except (StepFailed, OSError) as exc:
                errors.append(exc.detail if isinstance(exc, StepFailed) else str(exc))
        for proc in self._helpers.pop(fault_id, []):
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), 5)
        if errors:
            # stays active in the ledger: the next reconcile (or clear) tries again
            log.error("reverting fault %s (%s) failed: %s", fault_id, reason, "; ".join(errors))
            audit.info("fault revert failed id=%s reason=%s errors=%s", fault_id, reason, errors)
            return entry
        self._ledger.reverted(fault_id, reason)
        entry = replace(entry, state="reverted", ended_at=self._clock(), end_reason=reason)
        self._entries[fault_id] = entry
        key = (entry.kind, reason)
        self.stats.reverted[key] = self.stats.reverted.get(key, 0) + 1
        audit.info(
            "fault reverted id=%s kind=%s target=%s reason=%s",
            fault_id,
            entry.kind,
            entry.target,
            reason,
        )
        self._forget_old()
        return entry

    def _forget_old(self) -> None:
        """Bound what a long-running agent keeps: the history in memory, and the ledger file
        (its recent history stays readable; past LEDGER_COMPACT_BYTES it is compacted as soon
        as nothing is active, so it never grows with every fault ever applied)."""
        ended = [i for i, e in self._entries.items() if not e.active]
        for fault_id in ended[: max(0, len(ended) - HISTORY)]:
            del self._entries[fault_id]
        if (
            not self.ledger_problems
            and self._ledger.size() > LEDGER_COMPACT_BYTES
            and not any(e.active for e in self._entries.values())
        ):
            self._ledger.compact(self._entries)

    async def clear(self, reason: str = "kill_switch") -> list[FaultEntry]:
        """The kill switch: revert every active fault now."""
        async with self._lock:
            out = []
            for entry in list(self.active()):
                reverted = await self._revert_locked(entry.id, reason)
                if reverted is not None:
                    out.append(reverted)
            return out

    async def revert_owner(self, owner: str, reason: str) -> list[FaultEntry]:
        """Revert every active fault of ``owner`` (a run's rollback of last resort)."""
        async with self._lock:
            out = []
            for entry in [e for e in self.active() if e.owner == owner]:
                reverted = await self._revert_locked(entry.id, reason)
                if reverted is not None:
                    out.append(reverted)
            self._heartbeats.pop(owner, None)
            return out

    # --- heartbeats, TTL, reconcile -------------------------------------------------

    def heartbeat(self, owner: str) -> int:
        """A run is alive. Returns how many active faults it owns."""
        self._heartbeats[owner] = self._clock()
        return sum(1 for e in self.active() if e.owner == owner)

    async def run(self) -> None:
        """Enforce TTLs and the dead man's switch until cancelled."""
        while True:
            await asyncio.sleep(TICK)
            await self.tick()

    async def tick(self) -> None:
        now = self._clock()
        for entry in self.active():
            if entry.expires_at <= now:
                await self.revert(entry.id, "ttl")
        for owner, beat in list(self._heartbeats.items()):
            if now - beat > self.settings.heartbeat_timeout:
                faults = [e for e in self.active() if e.owner == owner]
                if faults:
                    log.warning(
                        "run %s stopped sending heartbeats: reverting its %d faults",
                        owner,
                        len(faults),
                    )
                    await self.revert_owner(owner, "dead_man")
                else:
                    self._heartbeats.pop(owner, None)

    async def reconcile(self) -> list[FaultEntry]:
        """At start: revert every fault that may be on the node, then sweep orphans."""
        try:
            self._entries = self._ledger.load()
            self.ledger_problems = []
        except LedgerCorrupt as exc:
            # revert what could be read; the file is left as it is for a person to inspect
            # (no compaction: it would drop the unreadable lines)
            log.error("fault ledger has unreadable lines (kept in the file): %s", exc)
            self._entries = exc.entries
            self.ledger_problems = exc.problems
        reverted = await self.clear("reconcile")
        await self._sweep_orphans()
        if not self.active() and not self.ledger_problems:
            self._ledger.compact(self._entries)
        return reverted

    async def _sweep_orphans(self) -> None:
        known = {e.id for e in self.active()}
        targets = self._resolver.allowed_netns()
        for target in targets:
            await self._sweep_nft(target.netns, known)
            await self._sweep_qdiscs(target.netns)
        # only helpers inside the targets this agent may touch: another agent's (or another
        # test's) helpers elsewhere on the machine are not ours to stop
        namespaces = {_ns_id(t.netns) for t in targets} - {None}
        for pid, marker in await asyncio.to_thread(marked_processes):
            if _ns_id(f"/proc/{pid}/ns/net") not in namespaces:
                continue
            if marker.removeprefix(MARKER_PREFIX) not in known:
                log.warning("reconcile: stopping orphaned seismo helper pid %d (%s)", pid, marker)
                with contextlib.suppress(StepFailed):
                    await execute(Kill(marker))

    async def _sweep_nft(self, netns: str, known: set[str]) -> None:
        owned = {table_name(i) for i in known}
        for line in (await output(("nft", "list", "tables"), netns)).splitlines():
            parts = line.split()  # "table inet seismo_x"
            if len(parts) == 3 and parts[2].startswith("seismo_") and parts[2] not in owned:
                log.warning("reconcile: deleting orphaned nftables table %s in %s", parts[2], netns)
                with contextlib.suppress(StepFailed):
                    await execute(Run(("nft", "delete", "table", parts[1], parts[2]), netns=netns))

    async def _sweep_qdiscs(self, netns: str) -> None:
        for line in (await output(("tc", "qdisc", "show"), netns)).splitlines():
            parts = line.split()  # "qdisc tbf 5e15: dev veth0 root refcnt 2 ..."
            if (
                len(parts) > 4
                and parts[2] == QDISC_HANDLE
                and parts[3] == "dev"
                and "root" in parts
            ):
                log.warning("reconcile: deleting orphaned qdisc on %s in %s", parts[4], netns)
                with contextlib.suppress(StepFailed):
                    await execute(Run(("tc", "qdisc", "del", "dev", parts[4], "root"), netns=netns))


def _ns_id(path: str) -> tuple[int, int] | None:
    """(inode, device) identifying a network namespace file, or None if it is gone."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_dev


def _param_problem(kind: str, err: Any) -> str:
    where = ".".join(str(p) for p in err["loc"]) or "(parameters)"
    msg = str(err["msg"]).removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        msg = "unknown parameter"
    return f"{kind}: {where}: {msg}"
