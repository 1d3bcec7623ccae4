"""HTTP/1.1 on the wire: parsing a request head, building a response.

Strict on purpose: no obsolete line folding, no space before a colon, no
control characters, one ``Content-Length``/``Authorization``/``Host``; a request
that announces a body ends its connection (a body is never read).  Every
refusal is a status and a one-line body, never an echo of the request.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from email.utils import formatdate
from http import HTTPStatus

__all__ = ["HTTPError", "Request", "Response", "http_response", "parse_head", "plain"]

#: A response as the buffers to write, in order: its head, then its body's parts.
#: A body given in parts stays in parts (a 2 MiB exposition is not copied into one
#: more buffer on its way to the socket).
Response = list[bytes]

_MAX_HEADERS = 100

_REQUEST_LINE = re.compile(rb"^([A-Z]{1,16}) (\S{1,8000}) HTTP/(\d)\.(\d)$")
_TOKEN = re.compile(rb"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_BAD_VALUE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")


class HTTPError(Exception):
    """A request the exporter refuses: answered with ``status`` and closed."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


class Request:
    __slots__ = ("headers", "keep_alive", "method", "path")

    def __init__(self, method: str, path: str, headers: dict[str, str], keep_alive: bool) -> None:
        self.method = method
        self.path = path
        self.headers = headers
        self.keep_alive = keep_alive


def parse_head(head: bytes) -> Request:
    """Parse a request head (without its blank line); raise :class:`HTTPError` if broken."""
    lines = head.split(b"\n")
    lines = [line[:-1] if line.endswith(b"\r") else line for line in lines]
    match = _REQUEST_LINE.match(lines[0])
    if match is None:
        raise HTTPError(400)
    method, target, major, minor = match.groups()
    if major != b"1":
        raise HTTPError(505)
    headers: dict[str, str] = {}
    if len(lines) - 1 > _MAX_HEADERS:
        raise HTTPError(431)
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        # No obsolete line folding, no space before the colon, no control characters.
        if not sep or not _TOKEN.match(name) or _BAD_VALUE.search(value):
            raise HTTPError(400)
        key = name.decode("ascii").lower()
        text = value.strip(b" \t").decode("latin-1")
        if key in headers:
            if key in ("content-length", "authorization", "host"):
                raise HTTPError(400)
            text = headers[key] + ", " + text
        headers[key] = text
    length = headers.get("content-length")
    if length is not None and (not length.isdigit() or len(length) > 18):
        raise HTTPError(400)
    # A body is never read: a request that announces one ends its connection.
    has_body = bool(length and int(length)) or "transfer-encoding" in headers
    tokens = {t.strip().lower() for t in headers.get("connection", "").split(",")}
    keep_alive = minor != b"0" and "close" not in tokens and not has_body
    path = target.split(b"?", 1)[0].decode("latin-1")
    return Request(method.decode("ascii"), path, headers, keep_alive)


def http_response(status: int, body: bytes | Sequence[bytes], content_type: str, *,
                  head_only: bool = False, keep_alive: bool = True,
                  extra: dict[str, str] | None = None) -> Response:  # fmt: skip
    """The response's head and body; ``body`` may be given as parts, sent as they are."""
    parts = [body] if isinstance(body, bytes) else list(body)
    lines = [
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}",
        f"Date: {formatdate(usegmt=True)}",
        f"Content-Type: {content_type}",
        f"Content-Length: {sum(map(len, parts))}",
        "X-Content-Type-Options: nosniff",
        "Connection: keep-alive" if keep_alive else "Connection: close",
    ]
    lines += [f"{key}: {value}" for key, value in (extra or {}).items()]
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return [head] if head_only else [head, *parts]


def plain(status: int, *, head_only: bool = False, keep_alive: bool = False,
           extra: dict[str, str] | None = None) -> Response:  # fmt: skip
    body = f"{status} {HTTPStatus(status).phrase}\n".encode()
    return http_response(status, body, "text/plain; charset=utf-8", head_only=head_only,
                     keep_alive=keep_alive, extra=extra)  # fmt: skip
