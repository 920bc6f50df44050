"""The run's event log: JSON lines, one per event, fsynced as they are written.

The runner process holds an exclusive ``flock`` on the log while it runs, so anyone can tell
a live run from one whose runner died (the kernel drops the lock even on SIGKILL).

Events (``event`` field), each with ``seq`` and ``ts`` (ISO 8601, UTC):
``run_started`` (journal skeleton), ``phase`` (phase, state), ``activity_started``,
``activity_completed`` (phase, run), ``hypothesis`` (when, state), ``interrupt`` (reason),
``signal_ignored``, ``rollbacks_forced``, ``run_finished`` (status, deviated).

    with EventLog.open(path) as log:
        log.emit("phase", phase="method", state="started")
    for event in read_events(path): ...
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self

__all__ = ["EventLog", "is_locked", "read_events", "utc_now"]


def utc_now() -> str:
    return datetime.now(UTC).isoformat()


class EventLog:
    """Append-only, fsynced, thread-safe writer; optionally mirrors each line to a stream."""

    def __init__(self, fd: int, mirror: IO[str] | None) -> None:
        self._fd = fd
        self._mirror = mirror
        self._lock = threading.Lock()
        self._owner: int | None = None
        self._deferred: int | None = None
        self._seq = self._next_seq()

    @classmethod
    def open(cls, path: Path, mirror: IO[str] | None = None) -> EventLog:
        """Open (append) and lock ``path``; raise ``BlockingIOError`` if another holds it."""
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise
        return cls(fd, mirror)

    def _next_seq(self) -> int:
        size = os.fstat(self._fd).st_size
        return 0 if size == 0 else sum(1 for _ in read_events_fd(self._fd))

    def emit(self, event: str, **payload: Any) -> dict[str, Any]:
        with self._lock:
            self._owner = threading.get_ident()
            try:
                record = {"seq": self._seq, "ts": utc_now(), "event": event, **payload}
                line = json.dumps(record, default=str, separators=(",", ":")) + "\n"
                os.write(self._fd, line.encode("utf-8"))
                os.fsync(self._fd)
                self._seq += 1
                if self._mirror is not None:
                    with contextlib.suppress(OSError, ValueError):
                        self._mirror.write(line)
                        self._mirror.flush()
            finally:
                self._owner = None
                deferred, self._deferred = self._deferred, None
        if deferred is not None:
            signal.raise_signal(deferred)  # handled now, on this (the main) thread
        return record

    def writing(self) -> bool:
        """True while the calling thread is inside :meth:`emit`."""
        return self._owner == threading.get_ident()

    def defer_signal(self, signum: int) -> None:
        """Re-raise ``signum`` when the current :meth:`emit` is done.

        A signal handler that interrupts ``emit`` on the main thread must not emit itself
        (the lock is not re-entrant, and a half-written record would be cut): it defers."""
        self._deferred = signum

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def read_events_fd(fd: int) -> Iterator[dict[str, Any]]:
    with open(os.dup(fd), "rb") as f:
        f.seek(0)
        yield from _parse(f.read())


def _parse(data: bytes) -> Iterator[dict[str, Any]]:
    for raw in data.splitlines():
        try:
            record = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            continue  # a torn last line after a crash
        if isinstance(record, dict):
            yield record


def read_events(path: Path) -> list[dict[str, Any]]:
    """Every complete event in the log (a torn last line is skipped)."""
    try:
        return list(_parse(path.read_bytes()))
    except FileNotFoundError:
        return []


def is_locked(path: Path) -> bool:
    """True while a runner process holds the log (the run is live)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)
    return False
