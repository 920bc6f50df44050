"""A signal that lands while the runner writes an event must not deadlock the runner.

The runner's signal handlers emit events; a handler that runs on the main thread in the
middle of ``EventLog.emit`` defers, and the signal is re-raised once the record is written.
Reproduced deterministically: the mirror stream raises the signal from inside ``emit``.
"""

from __future__ import annotations

import io
import signal
from pathlib import Path
from types import FrameType

from agent.experiments.events import EventLog, read_events


class RaisingMirror(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.armed = True

    def write(self, text: str) -> int:
        if self.armed:
            self.armed = False
            signal.raise_signal(signal.SIGUSR1)  # the handler runs right here, mid-emit
        return super().write(text)


def test_a_signal_during_emit_is_handled_after_the_record(tmp_path: Path) -> None:
    mirror = RaisingMirror()
    log = EventLog.open(tmp_path / "events.jsonl", mirror=mirror)
    handled: list[bool] = []

    def handler(signum: int, frame: FrameType | None) -> None:
        if log.writing():
            log.defer_signal(signum)
            return
        handled.append(True)
        log.emit("interrupt", reason={"kind": "signal"})

    old = signal.signal(signal.SIGUSR1, handler)
    try:
        log.emit("activity_started", name="hang")
    finally:
        signal.signal(signal.SIGUSR1, old)
        log.close()
    events = read_events(tmp_path / "events.jsonl")
    assert [(e["seq"], e["event"]) for e in events] == [(0, "activity_started"), (1, "interrupt")]
    assert handled == [True]
    assert not log.writing()
