"""The journal store: one directory per run under ``<data-dir>/runs/``.

    runs/<run-id>/events.jsonl      streamed event log (locked by the live runner)
    runs/<run-id>/journal.json      the final journal (atomic: tmp + fsync + rename)
    runs/<run-id>/chaostoolkit.log  chaoslib's log, redacted
    runs/<run-id>/runner.log        the runner process's stdout/stderr

A run without ``journal.json`` whose log is not locked lost its runner: :meth:`reconcile`
(called by the agent on start) writes its partial journal, marked ``partial`` and
``interruption.kind = runner_lost``. Retention removes finished runs beyond a count or an
age, never a live one.

    store = JournalStore(Path("seismo-data"))
    run_dir = store.create_run()
    for summary in store.runs(): ...
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from agent.experiments.events import is_locked, read_events
from agent.experiments.journal import exit_code, partial_journal, seismo_extension

__all__ = ["JournalStore", "RunSummary", "atomic_write_json", "default_data_dir"]

RUN_ID = re.compile(r"^\d{8}T\d{12}Z-[0-9a-f]{8}$")  # sortable: UTC time to the µs
EVENTS = "events.jsonl"
JOURNAL = "journal.json"


def default_data_dir() -> Path:
    """``$SEISMO_DATA_DIR``, else ``./seismo-data``."""
    return Path(os.environ.get("SEISMO_DATA_DIR") or "seismo-data")


def atomic_write_json(path: Path, data: Any) -> None:
    """Write JSON so readers see the old file or the new one, never half of one."""
    payload = (json.dumps(data, indent=2, default=str) + "\n").encode("utf-8")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, payload)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


@dataclass(frozen=True, slots=True)
class RunSummary:
    run_id: str
    title: str
    status: str  # a journal status, "running", or "partial"
    deviated: bool
    partial: bool
    start: str | None
    exit_code: int | None

    def to_json(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "title": self.title,
            "status": self.status,
            "deviated": self.deviated,
            "partial": self.partial,
            "start": self.start,
            "exit_code": self.exit_code,
        }


class JournalStore:
    """Runs and their journals under ``root/runs``. Safe to use from several processes."""

    def __init__(
        self, root: Path, *, max_runs: int = 200, max_age_seconds: float = 30 * 86400.0
    ) -> None:
        self.root = root
        self.runs_dir = root / "runs"
        self.max_runs = max_runs
        self.max_age_seconds = max_age_seconds

    @staticmethod
    def new_run_id() -> str:
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
        return f"{stamp}-{secrets.token_hex(4)}"

    def create_run(self) -> tuple[str, Path]:
        self.runs_dir.mkdir(parents=True, exist_ok=True)
        while True:
            run_id = self.new_run_id()
            path = self.runs_dir / run_id
            try:
                path.mkdir(mode=0o700)
            except FileExistsError:
                continue
            return run_id, path

    def run_dir(self, run_id: str) -> Path:
        """The directory of ``run_id``; ``KeyError`` for an unknown or malformed id."""
        if not RUN_ID.match(run_id) or not (self.runs_dir / run_id).is_dir():
            raise KeyError(run_id)
        return self.runs_dir / run_id

    def run_ids(self) -> list[str]:
        if not self.runs_dir.is_dir():
            return []
        return sorted(p.name for p in self.runs_dir.iterdir() if RUN_ID.match(p.name))

    def is_live(self, run_id: str) -> bool:
        return is_locked(self.run_dir(run_id) / EVENTS)

    def write_journal(self, run_id: str, journal: dict[str, Any]) -> Path:
        path = self.run_dir(run_id) / JOURNAL
        atomic_write_json(path, journal)
        return path

    def load(self, run_id: str) -> dict[str, Any]:
        """The run's journal: final when written, else rebuilt from its event log."""
        run_dir = self.run_dir(run_id)
        final = run_dir / JOURNAL
        if final.is_file():
            data = json.loads(final.read_text(encoding="utf-8"))
            if isinstance(data, dict):
                return data
        live = is_locked(run_dir / EVENTS)
        reason = None if live else {"kind": "runner_lost", "detail": "no final journal"}
        journal = partial_journal(read_events(run_dir / EVENTS), reason)
        if live:
            journal["status"] = "running"
        return journal

    def summary(self, run_id: str) -> RunSummary:
        journal = self.load(run_id)
        ext = seismo_extension(journal) or {}
        status = str(journal.get("status") or "unknown")
        return RunSummary(
            run_id=run_id,
            title=str((journal.get("experiment") or {}).get("title", "")),
            status=status,
            deviated=bool(journal.get("deviated")),
            partial=bool(ext.get("partial")),
            start=journal.get("start"),
            exit_code=None if status == "running" else exit_code(journal),
        )

    def runs(self) -> list[RunSummary]:
        return [self.summary(r) for r in self.run_ids()]

    def reconcile(self) -> list[str]:
        """Write the partial journal of every run whose runner died; return their ids."""
        fixed = []
        for run_id in self.run_ids():
            run_dir = self.runs_dir / run_id
            if (run_dir / JOURNAL).is_file() or is_locked(run_dir / EVENTS):
                continue
            reason = {"kind": "runner_lost", "detail": "the runner stopped without a journal"}
            journal = partial_journal(read_events(run_dir / EVENTS), reason)
            atomic_write_json(run_dir / JOURNAL, journal)
            fixed.append(run_id)
        return fixed

    def prune(self, now: float | None = None) -> list[str]:
        """Apply retention (count, then age) to finished runs; return the removed ids."""
        now = time.time() if now is None else now
        finished = [
            r
            for r in self.run_ids()
            if (self.runs_dir / r / JOURNAL).is_file() and not is_locked(self.runs_dir / r / EVENTS)
        ]
        doomed = set(finished[: max(0, len(finished) - self.max_runs)])
        for r in finished:
            if now - (self.runs_dir / r / JOURNAL).stat().st_mtime > self.max_age_seconds:
                doomed.add(r)
        for r in sorted(doomed):
            shutil.rmtree(self.runs_dir / r, ignore_errors=True)
        return sorted(doomed)
