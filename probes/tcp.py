"""The ``tcp`` probe: blackbox_exporter's tcp prober, same config, same semantics.

The target is ``host:port``. The probe connects, optionally does TLS right away
(``tcp.tls: true``), then runs the ``query_response`` steps in order:

- ``expect``: read lines until one matches the regular expression (searched, not anchored;
  a trailing ``\\r`` is stripped, as Go's ``bufio.Scanner`` does). End of stream without a
  match fails the probe with ``tcp_expect_mismatch`` and ``probe_failed_due_to_regex 1``.
- ``send``: write the line plus ``"\\n"``. After an ``expect`` match, ``send`` is expanded
  like Go's ``Regexp.Expand``: ``${1}``, ``$1``, ``${name}``, ``$$`` for a literal ``$``.
- ``starttls``: upgrade the connection to TLS there (e.g. after SMTP's ``220 go ahead``).

A line is at most :data:`MAX_LINE` bytes (Go's ``bufio.Scanner`` limit): a peer that floods
without a newline ends the run with ``body_too_large`` instead of growing memory.

Phases: ``resolve``, ``connect``, ``tls`` (when TLS is used; a ``starttls`` handshake adds
to it) and ``query_response`` (reading and writing the steps).

Metrics, as blackbox_exporter 0.23 emits them for tcp (checked against the real binary,
``tests/fixtures/blackbox/tcp.json``): ``probe_dns_lookup_time_seconds``,
``probe_ip_protocol``, ``probe_ip_addr_hash``, ``probe_failed_due_to_regex`` (always
present), and after a TLS handshake ``probe_ssl_earliest_cert_expiry``,
``probe_ssl_last_chain_expiry_timestamp_seconds``, ``probe_ssl_last_chain_info`` and
``probe_tls_version_info`` (no ``probe_tls_cipher_info``: blackbox emits it for http only).

Outcomes: ``success``; resolve/connect reasons (``connect_refused`` ...); TLS reasons
(``tls_untrusted``, ``tls_hostname_mismatch`` ...); ``tcp_expect_mismatch``;
``connection_reset``; ``body_too_large`` (a line over :data:`MAX_LINE`); ``timeout`` (a peer
that stops answering mid-conversation); ``config_error`` (a target without a port).

    module = Module.model_validate({"prober": "tcp", "tcp": {"query_response": [
        {"expect": "^220 (.+)$", "send": "EHLO ${1}"}]}})
    result = await run_probe(module, "mail.example.com:25", timeout=5)
"""

from __future__ import annotations

import asyncio
import re

from probes.certs import emit_tls_gauges
from probes.connection import Connector, split_host_port
from probes.modules import Module, QueryResponse
from probes.result import Reason, Recorder
from probes.stream import Stream

__all__ = ["MAX_LINE", "expand", "probe"]

#: the longest line read, in bytes (Go's bufio.MaxScanTokenSize, which blackbox inherits)
MAX_LINE = 64 * 1024

_NAME_CHAR = re.compile(r"[A-Za-z0-9_]*")


async def probe(target: str, module: Module, rec: Recorder, connector: Connector) -> None:
    """Probe ``target`` (``host:port``) the way blackbox's tcp prober does."""
    cfg = module.tcp
    # blackbox registers this gauge before dialling, so it exists on every outcome
    rec.gauge("probe_failed_due_to_regex", 0, help="Indicates if probe failed due to regex")
    try:
        host, port = split_host_port(target)
    except ValueError as exc:
        rec.fail(Reason.CONFIG_ERROR, str(exc))
    if cfg.tls or any(step.starttls for step in cfg.query_response):
        connector.ssl_context(cfg.tls_config)  # a bad tls_config fails before any traffic
    ip = await connector.resolve(host, rec, cfg.preferred_ip_protocol, cfg.ip_protocol_fallback)
    stream = await connector.connect(ip, port, rec, source_ip=cfg.source_ip_address, limit=MAX_LINE)
    try:
        if cfg.tls:
            await connector.start_tls(stream, cfg.tls_config, host, rec)
            emit_tls_gauges(rec, cipher=False)
        for step in cfg.query_response:
            await _step(step, stream, host, module, rec, connector)
    finally:
        stream.close()


async def _step(
    step: QueryResponse,
    stream: Stream,
    host: str,
    module: Module,
    rec: Recorder,
    connector: Connector,
) -> None:
    send = step.send or ""
    if step.expect:
        regex = re.compile(step.expect)
        with rec.phase("query_response"):
            match = await _read_until_match(stream, regex, rec)
        if match is None:
            rec.gauge("probe_failed_due_to_regex", 1, help="Indicates if probe failed due to regex")
            rec.fail(Reason.TCP_EXPECT_MISMATCH, f"no line matched {step.expect!r} before EOF")
        rec.gauge("probe_failed_due_to_regex", 0, help="Indicates if probe failed due to regex")
        send = expand(send, match)
    if send:
        with rec.phase("query_response"):
            stream.write(send.encode() + b"\n")
            await stream.drain()
    if step.starttls:
        await connector.start_tls(stream, module.tcp.tls_config, host, rec)
        emit_tls_gauges(rec, cipher=False)


async def _read_until_match(
    stream: Stream, regex: re.Pattern[str], rec: Recorder
) -> re.Match[str] | None:
    """Read lines until one matches; ``None`` at end of stream."""
    while True:
        try:
            raw = await stream.readuntil(b"\n")
        except asyncio.IncompleteReadError as exc:
            # Go's Scanner hands out a last line without a newline at EOF, then stops
            if not exc.partial:
                return None
            raw = exc.partial
        except asyncio.LimitOverrunError:
            rec.fail(
                Reason.BODY_TOO_LARGE,
                f"a line longer than {MAX_LINE} bytes arrived without a newline",
            )
        line = raw.rstrip(b"\n")
        if line.endswith(b"\r"):
            line = line[:-1]
        match = regex.search(line.decode("utf-8", "replace"))
        if match is not None:
            return match
        if not raw.endswith(b"\n"):
            return None


def expand(template: str, match: re.Match[str]) -> str:
    """Expand ``template`` with ``match`` the way Go's ``Regexp.Expand`` does.

    ``$1``/``${1}`` is a numbered group, ``$name``/``${name}`` a named one, ``$$`` a literal
    ``$``. A group that does not exist or did not match expands to nothing; a ``$`` not
    followed by a valid reference stays as it is.

    >>> expand("EHLO ${1}", re.search(r"^220 (\\S+)", "220 mx.example ESMTP"))
    'EHLO mx.example'
    """
    out: list[str] = []
    rest = template
    while True:
        i = rest.find("$")
        if i < 0:
            out.append(rest)
            break
        out.append(rest[:i])
        rest = rest[i:]
        if rest.startswith("$$"):
            out.append("$")
            rest = rest[2:]
            continue
        parsed = _reference(rest)
        if parsed is None:
            out.append("$")
            rest = rest[1:]
            continue
        name, rest = parsed
        out.append(_group(match, name))
    return "".join(out)


def _reference(text: str) -> tuple[str, str] | None:
    """Split ``$name...`` / ``${name}...`` into (name, rest); None when not a reference."""
    brace = text.startswith("${")
    start = 2 if brace else 1
    m = _NAME_CHAR.match(text, start)
    assert m is not None  # the pattern matches the empty string
    name = m.group()
    end = m.end()
    if not name:
        return None
    if brace:
        if not text.startswith("}", end):
            return None
        end += 1
    return name, text[end:]


def _group(match: re.Match[str], name: str) -> str:
    if name.isdigit():
        number = int(name)
        if number > match.re.groups:
            return ""
        return match.group(number) or ""
    if name not in match.re.groupindex:
        return ""
    return match.group(name) or ""
