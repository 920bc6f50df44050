"""The fault ledger: a durable record of every fault, written before the node changes.

An append-only JSON-lines file in the data dir. Each line is one event:

    {"event": "intent",   "entry": {...the fault, its apply AND revert steps...}}
    {"event": "applied",  "id": "...", "at": 1700000000.0}
    {"event": "reverted", "id": "...", "at": ..., "reason": "ttl"}
    {"event": "failed",   "id": "...", "at": ..., "detail": "..."}

Every append is fsynced before the call returns, so after a crash (OOM, kill -9, power) the
agent knows every fault that may be on the node and exactly how to take it away. A torn last
line (a crash mid-write) is ignored, and cut off before the next append so it cannot swallow
a good record; a corrupt line elsewhere is reported and kept in the file (never dropped).
Compaction rewrites the file atomically (temp file, fsync, rename) keeping the entries that
are not reverted.

    ledger = Ledger(data_dir / "faults" / "ledger.jsonl")
    ledger.intent(entry); ledger.applied(entry.id); ledger.reverted(entry.id, "ttl")
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from agent.faults.steps import Plan, Step, step_from_json, step_to_json

__all__ = ["FaultEntry", "Ledger", "LedgerCorrupt", "State", "ledger_path"]

log = logging.getLogger(__name__)

State = Literal["intent", "applied", "reverted", "failed"]


class LedgerCorrupt(Exception):
    """The ledger has lines that cannot be read; they are kept, and listed in ``problems``.

    ``entries`` holds every fault the readable lines describe, so a caller can still revert
    them: one bad line must not hide the faults around it.
    """

    def __init__(self, problems: list[str], entries: dict[str, FaultEntry]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems
        self.entries = entries


@dataclass(frozen=True, slots=True)
class FaultEntry:
    """One fault: what, where, until when, who owns it, and how to apply and revert it."""

    id: str
    kind: str
    target: str
    params: dict[str, Any]
    created_at: float
    expires_at: float
    owner: str
    apply: tuple[Step, ...]
    revert: tuple[Step, ...]
    facts: dict[str, Any] = field(default_factory=dict)
    state: State = "intent"
    ended_at: float | None = None
    end_reason: str | None = None

    @property
    def active(self) -> bool:
        """Possibly on the node: not yet known to be reverted."""
        return self.state in ("intent", "applied", "failed")

    @property
    def plan(self) -> Plan:
        return Plan(self.apply, self.revert, self.facts)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "target": self.target,
            "params": self.params,
            "created_at": self.created_at,
            "expires_at": self.expires_at,
            "owner": self.owner,
            "apply": [step_to_json(s) for s in self.apply],
            "revert": [step_to_json(s) for s in self.revert],
            "facts": self.facts,
            "state": self.state,
            "ended_at": self.ended_at,
            "end_reason": self.end_reason,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FaultEntry:
        return cls(
            id=str(data["id"]),
            kind=str(data["kind"]),
            target=str(data["target"]),
            params=dict(data["params"]),
            created_at=float(data["created_at"]),
            expires_at=float(data["expires_at"]),
            owner=str(data["owner"]),
            apply=tuple(step_from_json(s) for s in data["apply"]),
            revert=tuple(step_from_json(s) for s in data["revert"]),
            facts=dict(data.get("facts") or {}),
            state=data.get("state", "intent"),
            ended_at=data.get("ended_at"),
            end_reason=data.get("end_reason"),
        )


class Ledger:
    """The durable fault ledger. Thread-safe; every write is fsynced."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._tail_checked = False

    # --- writing --------------------------------------------------------------------

    def _append(self, record: dict[str, Any]) -> None:
        line = json.dumps(record, separators=(",", ":"), sort_keys=True) + "\n"
        with self._lock:
            if not self._tail_checked:
                self._cut_torn_tail()
                self._tail_checked = True
            created = not self.path.exists()
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, line.encode())
                os.fsync(fd)
            finally:
                os.close(fd)
            if created:
                _fsync_dir(self.path.parent)

    def _cut_torn_tail(self) -> None:
        # A crash mid-append leaves a last line without its newline. Appending after it would
        # glue the next (good) record onto the torn bytes and make both unreadable. The torn
        # bytes are a record whose write never completed (its fsync never returned, so
        # nothing relied on it): cut them off before the first append.
        try:
            with self.path.open("rb+") as f:
                data = f.read()
                if not data or data.endswith(b"\n"):
                    return
                keep = data.rfind(b"\n") + 1
                log.warning(
                    "fault ledger %s: cutting a torn last line (%d bytes) before appending",
                    self.path,
                    len(data) - keep,
                )
                f.truncate(keep)
                f.flush()
                os.fsync(f.fileno())
        except FileNotFoundError:
            return

    def intent(self, entry: FaultEntry) -> None:
        """Record a fault and its inverse before anything is applied."""
        self._append({"event": "intent", "entry": entry.to_json()})

    def applied(self, fault_id: str) -> None:
        self._append({"event": "applied", "id": fault_id, "at": time.time()})

    def reverted(self, fault_id: str, reason: str) -> None:
        self._append({"event": "reverted", "id": fault_id, "at": time.time(), "reason": reason})

    def failed(self, fault_id: str, detail: str) -> None:
        self._append({"event": "failed", "id": fault_id, "at": time.time(), "detail": detail})

    # --- reading --------------------------------------------------------------------

    def load(self) -> dict[str, FaultEntry]:
        """Every fault in the ledger, in order, with its latest state.

        Raises LedgerCorrupt (after loading what it could) only for unreadable lines that
        are not the torn last line; the caller decides, the file is left as it is.
        """
        entries: dict[str, FaultEntry] = {}
        try:
            text = self.path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return entries
        lines = text.split("\n")
        bad: list[str] = []
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                self._apply_line(entries, json.loads(line))
            except (ValueError, KeyError, TypeError) as exc:
                torn = number == len(lines) and not text.endswith("\n")
                if torn:
                    log.warning(
                        "fault ledger %s: ignoring a torn last line (a crash while writing it)",
                        self.path,
                    )
                    continue
                bad.append(f"{self.path}:{number}: {exc}")
        if bad:
            raise LedgerCorrupt(bad, entries)
        return entries

    @staticmethod
    def _apply_line(entries: dict[str, FaultEntry], record: dict[str, Any]) -> None:
        event = record["event"]
        if event == "intent":
            new = FaultEntry.from_json(record["entry"])
            entries[new.id] = new
            return
        fault_id = str(record["id"])
        entry = entries.get(fault_id)
        if entry is None:
            raise KeyError(f"event {event!r} for unknown fault {fault_id}")
        if event == "applied":
            entries[fault_id] = replace(entry, state="applied")
        elif event == "reverted":
            entries[fault_id] = replace(
                entry, state="reverted", ended_at=record.get("at"), end_reason=record.get("reason")
            )
        elif event == "failed":
            entries[fault_id] = replace(entry, state="failed", end_reason=record.get("detail"))
        else:
            raise ValueError(f"unknown ledger event {event!r}")

    def size(self) -> int:
        """The ledger file's size in bytes (0 when there is none yet)."""
        try:
            return self.path.stat().st_size
        except FileNotFoundError:
            return 0

    def compact(self, entries: dict[str, FaultEntry]) -> None:
        """Rewrite the ledger with only the active entries (atomic; fsynced)."""
        with self._lock:
            if not self.path.exists() and not any(e.active for e in entries.values()):
                return  # a first start: no ledger yet, and nothing to write
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(".tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                for entry in entries.values():
                    if not entry.active:
                        continue
                    os.write(
                        fd,
                        (
                            json.dumps(
                                {"event": "intent", "entry": entry.to_json()},
                                separators=(",", ":"),
                                sort_keys=True,
                            )
                            + "\n"
                        ).encode(),
                    )
                    if entry.state == "applied":
                        os.write(
                            fd,
                            (
                                json.dumps(
                                    {"event": "applied", "id": entry.id, "at": entry.created_at}
                                )
                                + "\n"
                            ).encode(),
                        )
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, self.path)
            _fsync_dir(self.path.parent)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def ledger_path(data_dir: Path) -> Path:
    """Where the agent keeps its fault ledger inside ``--data-dir``."""
    return data_dir / "faults" / "ledger.jsonl"
