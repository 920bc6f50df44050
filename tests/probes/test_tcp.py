"""probes.tcp against real asyncio servers on loopback: blackbox's tcp prober semantics."""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import pytest

from probes import Module, ProbeResult, Reason, run_probe
from probes.result import ProbeFailed
from probes.tcp import MAX_LINE, expand

Serve = Callable[..., AbstractAsyncContextManager[int]]
FIXTURES = Path(__file__).parent.parent / "fixtures" / "blackbox"


def tcp_module(**tcp: Any) -> Module:
    tcp.setdefault("preferred_ip_protocol", "ip4")
    return Module.model_validate({"prober": "tcp", "tcp": tcp})


def metrics(result: ProbeResult) -> dict[str, float]:
    return dict(result.to_json()["metrics"])


def names(result: ProbeResult) -> set[str]:
    return {m.name for m in result.measurements}


async def idle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.read()


async def test_plain_connect(serve: Serve) -> None:
    async with serve(idle) as port:
        result = await run_probe(tcp_module(), f"127.0.0.1:{port}", timeout=5)

    assert result.reason is Reason.SUCCESS, result.detail
    assert result.peer == f"127.0.0.1:{port}"
    m = metrics(result)
    assert m["probe_failed_due_to_regex"] == 0
    assert m["probe_ip_protocol"] == 4
    assert m["probe_ip_addr_hash"] == 3668918509  # blackbox 0.23's value for 127.0.0.1


async def test_connection_refused(closed_port: int) -> None:
    result = await run_probe(tcp_module(), f"127.0.0.1:{closed_port}", timeout=5)

    assert result.reason is Reason.CONNECT_REFUSED
    assert metrics(result)["probe_failed_due_to_regex"] == 0


async def test_target_needs_a_port() -> None:
    result = await run_probe(tcp_module(), "127.0.0.1", timeout=5)
    assert result.reason is Reason.CONFIG_ERROR


async def test_query_response_with_group_substitution(serve: Serve) -> None:
    seen: list[bytes] = []

    async def smtp(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"noise first\r\n220 mx.seismo.test ESMTP ready\r\n")
        await writer.drain()
        seen.append(await reader.readline())
        writer.write(b"250-mx.seismo.test hello\r\n250 OK\r\n")
        await writer.drain()
        await reader.read()

    module = tcp_module(
        query_response=[
            {"expect": r"^220 (?P<host>\S+) (\w+)", "send": "EHLO ${host} $2 ${1}x $$ $"},
            {"expect": "^250 OK"},
        ]
    )
    async with serve(smtp) as port:
        result = await run_probe(module, f"127.0.0.1:{port}", timeout=5)

    assert result.reason is Reason.SUCCESS, result.detail
    # Go's Expand: ${host} named, $2 numbered, ${1}x braces end the name, $$ a dollar,
    # a lone $ stays
    assert seen == [b"EHLO mx.seismo.test ESMTP mx.seismo.testx $ $\n"]
    assert metrics(result)["probe_failed_due_to_regex"] == 0


async def test_banner_mismatch(serve: Serve) -> None:
    async def banner(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"SSH-2.0-OpenSSH_9.6\r\n")
        await writer.drain()
        writer.close()

    module = tcp_module(query_response=[{"expect": "^220 "}])
    async with serve(banner) as port:
        result = await run_probe(module, f"127.0.0.1:{port}", timeout=5)

    assert result.reason is Reason.TCP_EXPECT_MISMATCH
    assert metrics(result)["probe_failed_due_to_regex"] == 1


async def test_last_line_without_newline_is_matched(serve: Serve) -> None:
    async def pong(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readline()
        writer.write(b"+PONG")
        await writer.drain()
        writer.close()

    module = tcp_module(query_response=[{"send": "PING"}, {"expect": r"^\+PONG$"}])
    async with serve(pong) as port:
        result = await run_probe(module, f"127.0.0.1:{port}", timeout=5)
    assert result.reason is Reason.SUCCESS, result.detail


async def test_starttls_mid_stream(serve: Serve, server_ssl: ssl.SSLContext, ca_file: str) -> None:
    after_tls: list[bytes] = []
    done = asyncio.Event()

    async def smtp(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 ready\r\n")
        await writer.drain()
        if (await reader.readline()).strip() != b"STARTTLS":
            return
        writer.write(b"220 go ahead\r\n")
        await writer.drain()
        await writer.start_tls(server_ssl)
        writer.write(b"250 secure\r\n")
        await writer.drain()
        after_tls.append(await reader.readline())
        done.set()

    module = tcp_module(
        tls_config={"ca_file": ca_file},
        query_response=[
            {"expect": "^220 ready", "send": "STARTTLS"},
            {"expect": "^220 go ahead", "starttls": True},
            {"expect": "^250 secure", "send": "QUIT"},
        ],
    )
    async with serve(smtp) as port:
        result = await run_probe(module, f"localhost:{port}", timeout=5)
        async with asyncio.timeout(5):
            await done.wait()  # the server has read what the probe sent over TLS

    assert result.reason is Reason.SUCCESS, result.detail
    assert after_tls == [b"QUIT\n"]  # sent over TLS, read by the upgraded server
    assert result.tls is not None and result.tls.verified
    assert "tls" in result.phases
    assert {"probe_ssl_earliest_cert_expiry", "probe_tls_version_info"} <= names(result)
    assert "probe_tls_cipher_info" not in names(result)  # blackbox: http only


async def test_tls_true(serve: Serve, server_ssl: ssl.SSLContext, ca_file: str) -> None:
    async with serve(idle, ssl=server_ssl) as port:
        result = await run_probe(
            tcp_module(tls=True, tls_config={"ca_file": ca_file}), f"127.0.0.1:{port}", timeout=5
        )

    assert result.reason is Reason.SUCCESS, result.detail
    assert result.tls is not None and result.tls.verified
    info = [m for m in result.measurements if m.name == "probe_ssl_last_chain_info"]
    assert len(info) == 1
    labels = dict(info[0].labels)
    assert labels["fingerprint_sha256"] == result.tls.chain[0].fingerprint_sha256
    assert labels["subjectalternative"] == "localhost"  # DNS names only, as Go's DNSNames


async def test_tls_true_untrusted(serve: Serve, server_ssl: ssl.SSLContext) -> None:
    async with serve(idle, ssl=server_ssl) as port:
        # no ca_file: the system roots do not know the trustme CA
        result = await run_probe(tcp_module(tls=True), f"127.0.0.1:{port}", timeout=5)
    assert result.reason is Reason.TLS_UNTRUSTED


async def test_flooding_peer_is_bounded(serve: Serve) -> None:
    async def flood(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        chunk = b"x" * 65536
        while True:  # until the probe hangs up; the fixture then closes us
            writer.write(chunk)
            await writer.drain()

    module = tcp_module(query_response=[{"expect": "^never"}])
    async with serve(flood) as port:
        result = await run_probe(module, f"127.0.0.1:{port}", timeout=5)

    assert result.reason is Reason.BODY_TOO_LARGE
    assert str(MAX_LINE) in result.detail


async def test_hanging_peer_times_out(serve: Serve) -> None:
    module = tcp_module(query_response=[{"expect": "^220 "}])
    async with serve(idle) as port:
        result = await run_probe(module, f"127.0.0.1:{port}", timeout=0.3)

    assert result.reason is Reason.TIMEOUT
    assert "query_response" in result.detail


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("plain", "plain"),
        ("$1-$2", "a-b"),
        ("${1}x", "ax"),
        ("$1x", ""),  # Go reads the name "1x": no such group
        ("$9", ""),
        ("${named}", "b"),
        ("$$1", "$1"),
        ("${1", "${1"),
        ("cost: $", "cost: $"),
    ],
)
def test_expand_follows_go(template: str, expected: str) -> None:
    import re

    match = re.search(r"(a)-(?P<named>b)", "a-b")
    assert match is not None
    assert expand(template, match) == expected


@pytest.mark.parametrize("case", ["success", "refused"])
@pytest.mark.parametrize("module_name", ["tcp_connect", "tcp_tls"])
async def test_metric_names_cover_blackbox(
    module_name: str,
    case: str,
    serve: Serve,
    server_ssl: ssl.SSLContext,
    ca_file: str,
    closed_port: int,
) -> None:
    expected = set(json.loads((FIXTURES / "tcp.json").read_text())[module_name][case])
    tls = module_name == "tcp_tls"
    module = tcp_module(tls=tls, tls_config={"ca_file": ca_file})
    if case == "refused":
        result = await run_probe(module, f"127.0.0.1:{closed_port}", timeout=5)
        assert result.reason is Reason.CONNECT_REFUSED
    else:
        async with serve(idle, ssl=server_ssl if tls else None) as port:
            result = await run_probe(module, f"127.0.0.1:{port}", timeout=5)
        assert result.reason is Reason.SUCCESS, result.detail
    assert expected <= names(result), expected - names(result)


async def test_hosts_file_names_resolve_without_dns(tmp_path: Path) -> None:
    """A name in the hosts file is answered from it, whatever the preferred family."""
    from probes.connection import Connector
    from probes.result import Recorder

    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.1 localhost myhost # comment\n::1 only6\n")
    connector = Connector(hosts_file=hosts)
    rec = Recorder("tcp")
    assert await connector.resolve("localhost", rec, "ip6", fallback=True) == "127.0.0.1"
    assert await connector.resolve("MyHost.", rec, "ip4", fallback=False) == "127.0.0.1"
    assert await connector.resolve("only6", rec, "ip4", fallback=True) == "::1"
    with pytest.raises(ProbeFailed) as info:
        await connector.resolve("localhost", rec, "ip6", fallback=False)
    assert info.value.reason is Reason.DNS_NO_ADDRESS


async def test_timeout_leaves_the_task_uncancelled_for_an_outer_timeout(serve: Serve) -> None:
    # run_probe's timer cancels the task and takes the cancellation back: an enclosing
    # asyncio.timeout must neither fire early nor see a cancellation left behind
    module = tcp_module(query_response=[{"expect": "^220 "}])
    async with serve(idle) as port:
        async with asyncio.timeout(5):
            result = await run_probe(module, f"127.0.0.1:{port}", timeout=0.2)
            task = asyncio.current_task()
            assert task is not None
            assert task.cancelling() == 0
            await asyncio.sleep(0)  # no cancellation pending: this await is not interrupted

    assert result.reason is Reason.TIMEOUT


async def test_cancellation_from_outside_is_not_a_timeout(serve: Serve) -> None:
    module = tcp_module(query_response=[{"expect": "^220 "}])
    connected = asyncio.Event()

    async def idle_after_connect(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        connected.set()
        await reader.read()

    async with serve(idle_after_connect) as port:
        task = asyncio.create_task(run_probe(module, f"127.0.0.1:{port}", timeout=5))
        await connected.wait()  # the probe now waits for the banner
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_a_timeout_the_prober_swallowed_is_taken_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # a prober that (wrongly) catches its cancellation: the timer's cancel must not stay
    # counted on the task, or the caller's next timeout would misread it
    from probes import runner

    async def stubborn(target: str, module: Module, rec: object, connector: object) -> None:
        try:
            await asyncio.sleep(5)
        except asyncio.CancelledError:
            return

    monkeypatch.setitem(runner.PROBERS, "tcp", stubborn)  # type: ignore[index]
    result = await run_probe(tcp_module(), "127.0.0.1:1", timeout=0.05)
    task = asyncio.current_task()
    assert task is not None
    assert task.cancelling() == 0
    assert result.reason is Reason.SUCCESS  # nothing reached run_probe to say otherwise
