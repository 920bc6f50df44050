"""The tcp probe (being written)."""

from __future__ import annotations

from probes.connection import Connector
from probes.modules import Module
from probes.result import Reason, Recorder


async def probe(target: str, module: Module, rec: Recorder, connector: Connector) -> None:
    rec.fail(Reason.UNSUPPORTED, "the tcp probe is not implemented yet")
