"""The http probe's HTTP/1.1 framing against raw loopback servers that send exact bytes.

Each server reads the request head, writes a canned answer, and then either closes the
connection or (``keep_open``) leaves it open, as a server ignoring ``Connection: close``
would: a probe that needed the close to finish would then time out, and fail the test.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from probes.connection import Connector
from probes.modules import Module
from probes.result import ProbeResult, Reason
from probes.runner import run_probe
from tests.probes.conftest import Serve

TIMEOUT = 5.0


def canned(answer: bytes, *, keep_open: bool = False) -> Callable[..., Any]:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(answer)
        await writer.drain()
        if keep_open:
            await reader.read()  # until the probe hangs up
        writer.close()

    return handler


async def probe(port: int, method: str = "GET", **http_cfg: Any) -> ProbeResult:
    module = Module.model_validate(
        {"prober": "http", "http": {"method": method, "preferred_ip_protocol": "ip4", **http_cfg}}
    )
    return await run_probe(module, f"http://127.0.0.1:{port}/", TIMEOUT, connector=Connector())


def gauge(result: ProbeResult, name: str) -> float | None:
    return next((m.value for m in result.measurements if m.name == name and not m.labels), None)


async def test_content_length_body_ends_without_waiting_for_close(serve: Serve) -> None:
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"
    async with serve(canned(answer, keep_open=True)) as port:
        result = await probe(port, fail_if_body_not_matches_regexp=["hello"])
    assert result.reason is Reason.SUCCESS, result.detail
    assert gauge(result, "probe_http_content_length") == 5
    assert gauge(result, "probe_http_uncompressed_body_length") == 5


async def test_chunked_body_is_dechunked(serve: Serve) -> None:
    answer = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"4\r\nabcd\r\n3;ext=1\r\nefg\r\n0\r\nTrailer: x\r\n\r\n"
    )
    async with serve(canned(answer, keep_open=True)) as port:
        result = await probe(port, fail_if_body_not_matches_regexp=["^abcdefg$"])
    assert result.reason is Reason.SUCCESS, result.detail
    assert gauge(result, "probe_http_content_length") == -1  # Go: unknown length
    assert gauge(result, "probe_http_uncompressed_body_length") == 7


async def test_body_delimited_by_close(serve: Serve) -> None:
    async with serve(canned(b"HTTP/1.1 200 OK\r\n\r\nuntil the end")) as port:
        result = await probe(port)
    assert result.reason is Reason.SUCCESS, result.detail
    assert gauge(result, "probe_http_uncompressed_body_length") == len(b"until the end")


async def test_interim_1xx_heads_are_skipped(serve: Serve) -> None:
    answer = (
        b"HTTP/1.1 100 Continue\r\n\r\n"
        b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n"
        b"HTTP/1.1 204 No Content\r\nX-Final: yes\r\n\r\n"
    )
    async with serve(canned(answer, keep_open=True)) as port:
        result = await probe(
            port,
            valid_status_codes=[204],
            fail_if_header_not_matches=[{"header": "X-Final", "regexp": "yes"}],
            fail_if_header_matches=[{"header": "Link", "regexp": ".", "allow_missing": True}],
        )
    assert result.reason is Reason.SUCCESS, result.detail
    assert gauge(result, "probe_http_status_code") == 204


async def test_head_response_has_no_body_whatever_its_length(serve: Serve) -> None:
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n"
    async with serve(canned(answer, keep_open=True)) as port:
        result = await probe(port, method="HEAD")
    assert result.reason is Reason.SUCCESS, result.detail
    assert gauge(result, "probe_http_content_length") == 1000
    assert gauge(result, "probe_http_uncompressed_body_length") == 0


async def test_truncated_body_is_connection_closed(serve: Serve) -> None:
    async with serve(canned(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort")) as port:
        result = await probe(port)
    assert result.reason is Reason.CONNECTION_CLOSED, result.detail
    assert "inside the body" in result.detail


async def test_truncated_chunked_body_is_connection_closed(serve: Serve) -> None:
    answer = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nab"
    async with serve(canned(answer)) as port:
        result = await probe(port)
    assert result.reason is Reason.CONNECTION_CLOSED, result.detail


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 2OO OK\r\n\r\n",  # a status that is not a number
        b"HTTZ/1.1 200 OK\r\n\r\n",  # not HTTP
        b"HTTP/1.1 200 OK\r\nBad Header: x\r\n\r\n",  # a space in a header name
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",  # a bad chunk size
    ],
    ids=["status", "protocol", "header-name", "two-lengths", "length-and-chunked", "chunk-size"],
)
async def test_malformed_responses_are_protocol_errors(serve: Serve, answer: bytes) -> None:
    async with serve(canned(answer, keep_open=True)) as port:
        result = await probe(port)
    assert result.reason is Reason.HTTP_PROTOCOL_ERROR, result.detail


async def test_partial_head_then_close_is_protocol_error(serve: Serve) -> None:
    async with serve(canned(b"HTTP/1.1 200 OK\r\nContent-Ty")) as port:
        result = await probe(port)
    assert result.reason is Reason.HTTP_PROTOCOL_ERROR, result.detail


async def test_oversized_head_is_refused_not_buffered(serve: Serve) -> None:
    from probes.http import MAX_HEAD

    filler = b"X-Filler: " + b"a" * 1000 + b"\r\n"
    answer = b"HTTP/1.1 200 OK\r\n" + filler * (MAX_HEAD // len(filler) + 2)
    async with serve(canned(answer, keep_open=True)) as port:
        result = await probe(port)
    assert result.reason is Reason.HTTP_PROTOCOL_ERROR, result.detail
    assert "larger than" in result.detail


async def test_bytes_after_the_response_are_ignored(serve: Serve) -> None:
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokGARBAGE \x00 not http"
    async with serve(canned(answer)) as port:
        result = await probe(port)
    assert result.reason is Reason.SUCCESS, result.detail
    assert gauge(result, "probe_http_uncompressed_body_length") == 2


async def test_request_bytes_on_the_wire(serve: Serve) -> None:
    seen: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        seen.append(head + await reader.readexactly(4))
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        writer.close()

    async with serve(handler) as port:
        result = await probe(port, method="POST", body="ping", headers={"X-A": "b c"})
    assert result.reason is Reason.SUCCESS, result.detail
    assert seen == [
        b"POST / HTTP/1.1\r\n"
        + f"Host: 127.0.0.1:{port}\r\n".encode()
        + b"User-Agent: seismo\r\nX-A: b c\r\nContent-Length: 4\r\nConnection: close\r\n\r\nping"
    ]


@pytest.mark.parametrize(
    "cfg",
    [{"headers": {"X-A": "line\r\nInjected: yes"}}, {"headers": {"Bad Name": "x"}}],
    ids=["newline-in-value", "space-in-name"],
)
async def test_headers_that_would_break_the_request_are_config_errors(
    serve: Serve, cfg: dict[str, Any]
) -> None:
    async with serve(canned(b"HTTP/1.1 200 OK\r\n\r\n")) as port:
        result = await probe(port, **cfg)
    assert result.reason is Reason.CONFIG_ERROR, result.detail
