"""HTTP/1.1 on the wire, for the http prober and DNS over HTTPS: a request's bytes, a response.

- :func:`request_bytes` writes a request directly. Every part is checked first (methods and
  header names are RFC 9110 tokens; no value or target can end its line early), so a module
  can never inject a header or a second request; anything that would is ``config_error``.
- :class:`Response` parses a response as its bytes arrive, with ``httptools`` (llhttp, Node's
  strict parser, in C). What llhttp rejects raises ``httptools.HttpParserError``, which
  :mod:`probes.errors` names ``http_protocol_error``.
- :func:`read_head` and :func:`read_body` drive a :class:`Response` from a
  :class:`probes.stream.Stream`.

    stream.write(request_bytes("GET", "/", [("Host", "example.com")]))
    response = Response("GET")
    head = await read_head(response, stream, b"")
    complete = await read_body(response, stream, lambda piece: False)
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import httptools

from probes.result import ProbeFailed, Reason
from probes.stream import Stream

__all__ = ["MAX_HEAD", "READ_CHUNK", "Head", "Response", "read_body", "read_head", "request_bytes"]

#: bytes read from the socket (and produced by a decompressor) per step
READ_CHUNK = 64 * 1024
#: the largest response head accepted (16 KiB, a common default, is too small for some CDNs)
MAX_HEAD = 1024 * 1024


# RFC 9110 tokens (methods, header names), a request target without spaces or controls, and
# a field value without the bytes that would end it
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_TARGET = re.compile(r"[^\x00-\x20\x7f]+")
_VALUE_BREAK = re.compile(r"[\x00\r\n]")


def request_bytes(
    method: str, target: str, headers: list[tuple[str, str]], body: bytes = b""
) -> bytes:
    """The request's bytes; ``config_error`` for anything that would break its framing."""
    if not _TOKEN.fullmatch(method):
        raise ProbeFailed(Reason.CONFIG_ERROR, f"cannot build the request: method {method!r}")
    if not _TARGET.fullmatch(target):
        raise ProbeFailed(Reason.CONFIG_ERROR, f"cannot build the request: target {target!r}")
    lines = [f"{method} {target} HTTP/1.1"]
    for name, value in headers:
        if not _TOKEN.fullmatch(name) or _VALUE_BREAK.search(value):
            # a header value with a newline, a name with a space...: the module is wrong
            raise ProbeFailed(
                Reason.CONFIG_ERROR, f"cannot build the request: header {name!r}: {value!r}"
            )
        lines.append(f"{name}: {value}")
    lines.append("\r\n")
    return "\r\n".join(lines).encode() + body


@dataclass(frozen=True, slots=True)
class Head:
    """A final response head: status, version (``"1.1"``), headers in arrival order."""

    status: int
    version: str  # "1.1"
    headers: tuple[tuple[str, str], ...]  # lower-case names, latin-1 values, in order

    def values(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k == name]

    def first(self, name: str) -> str | None:
        for k, v in self.headers:  # a loop, not next(genexpr): a few calls on every probe
            if k == name:
                return v
        return None


class Response:
    """One HTTP/1.1 response, parsed by llhttp (``httptools``) as its bytes arrive.

    1xx heads are skipped (except 101, which ends the exchange). The body is framed as
    RFC 9112 says: nothing after a ``HEAD`` request or a 204/304; ``Content-Length``;
    chunked; otherwise it runs until the server closes the connection. llhttp does the
    framing and de-chunking; what it cannot know (the request's method, the end of the
    stream) is decided here.
    """

    __slots__ = (
        "_body",
        "_head_bytes",
        "_headers",
        "_method",
        "_parser",
        "complete",
        "head",
    )

    def __init__(self, method: str) -> None:
        self._method = method
        self._parser = httptools.HttpResponseParser(self)
        self._headers: list[tuple[str, str]] = []
        self._body: list[bytes] = []
        self._head_bytes = 0
        self.head: Head | None = None  # the final head, once complete
        self.complete = False

    # --- llhttp's callbacks ---------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name.decode("latin-1").lower(), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if 100 <= status < 200 and status != 101:
            self._headers = []  # an interim response: the final one follows
            return
        self.head = Head(status, self._parser.get_http_version(), tuple(self._headers))
        if self._method in ("HEAD", "CONNECT") or status in (101, 204, 304):
            # no body after these, whatever Content-Length says (llhttp knows only 204/304)
            self.complete = True

    def on_body(self, body: bytes) -> None:
        if self.head is not None and not self.complete:
            self._body.append(body)

    def on_message_complete(self) -> None:
        if self.head is not None:
            self.complete = True

    # --- feeding ----------------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        if self.complete:
            return  # what follows the response (Connection: close was asked) is ignored
        if self.head is None:
            self._head_bytes += len(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # a 101 or an Upgrade the server insists on: the head is all there is to judge
            self.complete = self.head is not None
        except httptools.HttpParserError:
            if not self.complete:
                raise  # a malformed response: probes.errors names it
            # junk after a complete response (in the same read) does not matter
        if self.head is None and self._head_bytes > MAX_HEAD:
            raise ProbeFailed(
                Reason.HTTP_PROTOCOL_ERROR, f"response head larger than {MAX_HEAD} bytes"
            )

    def end_of_stream(self) -> None:
        """The server closed the connection: complete, or a truncated response."""
        if self.complete:
            return
        head = self.head
        if head is None:
            raise ProbeFailed(
                Reason.CONNECTION_CLOSED if self._head_bytes == 0 else Reason.HTTP_PROTOCOL_ERROR,
                "the server closed the connection before a complete response head",
            )
        if head.first("transfer-encoding") is None and head.first("content-length") is None:
            self.complete = True  # a body delimited by the end of the connection
            return
        raise ProbeFailed(Reason.CONNECTION_CLOSED, "the connection closed inside the body")

    def take_body(self) -> list[bytes]:
        body, self._body = self._body, []
        return body

    @property
    def has_body_bytes(self) -> bool:
        return bool(self._body)


async def read_head(response: Response, stream: Stream, data: bytes) -> Head:
    """Feed ``data`` and read until the final (non-1xx) response head."""
    if data:
        response.feed(data)
    while response.head is None:
        chunk = await stream.read(READ_CHUNK)
        if not chunk:
            response.end_of_stream()
        response.feed(chunk)
    return response.head


async def read_body(response: Response, stream: Stream, take: Callable[[bytes], bool]) -> bool:
    """Hand the body to ``take`` piece by piece (de-chunked, still content-encoded).

    Returns True when the response is complete, False when ``take`` returned True to stop
    early (e.g. past a size limit): the rest is not read.
    """
    while True:
        for piece in response.take_body():
            if take(piece):
                return False
        if response.complete:
            return True
        chunk = await stream.read(READ_CHUNK)
        if chunk:
            response.feed(chunk)
        else:
            response.end_of_stream()
