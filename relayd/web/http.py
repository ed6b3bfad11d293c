"""A small HTTP/1.1 server on asyncio.start_server, in the daemon's loop.

The admin endpoint needs a handful of routes for people on loopback or an SSH tunnel, not a
framework: one request per connection, a bounded head (MAX_HEAD) and body (MAX_BODY, forms
only), every response with the security headers (a CSP that allows no script at all, no
framing, no caching). A route is an async function of a Request returning a Response.
"""

from __future__ import annotations

import asyncio
import contextlib
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from http.cookies import CookieError, SimpleCookie

from relayd.logs import get_logger

log = get_logger("admin")

READ_TIMEOUT = 5.0  # seconds for a client to send its request head and body
MAX_HEAD = 16 * 1024  # bytes of request line and headers
MAX_BODY = 16 * 1024  # bytes of a form: a token, an address, a few fields

REASONS = {200: "OK", 303: "See Other", 400: "Bad Request", 401: "Unauthorized"}
REASONS |= {403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed"}
REASONS |= {413: "Content Too Large", 429: "Too Many Requests", 503: "Service Unavailable"}

# No script, no plugin, nothing from another host; styles and images from this one only.
CSP = (
    "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS = (
    ("Content-Security-Policy", CSP),
    ("X-Frame-Options", "DENY"),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    ("Cache-Control", "no-store"),  # live state and actions: nothing is worth caching
)


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: dict[str, str] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)  # names in lower case
    form: dict[str, str] = field(default_factory=dict)

    @property
    def cookies(self) -> dict[str, str]:
        jar: SimpleCookie = SimpleCookie()
        with contextlib.suppress(CookieError):
            jar.load(self.headers.get("cookie", ""))
        return {name: morsel.value for name, morsel in jar.items()}


@dataclass(frozen=True)
class Response:
    status: int
    content_type: str
    body: bytes
    headers: tuple[tuple[str, str], ...] = ()


Handler = Callable[[Request], Awaitable[Response]]


class HttpServer:
    """Serves `handler`; a handler's exception is logged and answered 503."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.address: tuple[str, int] | None = None
        self._server: asyncio.Server | None = None

    async def start(self, host: str, port: int) -> None:
        self._server = await asyncio.start_server(
            self._serve_client, host, port, limit=MAX_HEAD, reuse_address=True
        )
        self.address = self._server.sockets[0].getsockname()[:2]
        log.info("admin_listening", listen=f"{self.address[0]}:{self.address[1]}")

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 1.0)
            self._server = None

    async def _serve_client(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            request = await asyncio.wait_for(_read_request(reader), READ_TIMEOUT)
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError):
            writer.close()
            return
        if isinstance(request, Response):
            response, method = request, "GET"
        else:
            method = request.method
            try:
                response = await self.handler(request)
            except Exception:
                log.exception("admin_error", path=request.path)
                response = text(503, "internal error; see the relayd log\n")
        try:
            head = _head(response)
        except ValueError:
            log.exception("admin_error", path=getattr(request, "path", ""))
            response = text(503, "internal error; see the relayd log\n")
            head = _head(response)
        writer.write(head)
        if method != "HEAD":
            writer.write(response.body)
        with contextlib.suppress(OSError):
            await writer.drain()
        writer.close()


def _head(response: Response) -> bytes:
    for name, value in response.headers:  # a value from a request must never split the head
        if "\r" in value or "\n" in value:
            raise ValueError(f"CR or LF in the {name} header")
    lines = [
        f"HTTP/1.1 {response.status} {REASONS.get(response.status, '')}",
        f"Content-Type: {response.content_type}",
        f"Content-Length: {len(response.body)}",
        "Connection: close",
        *(f"{name}: {value}" for name, value in SECURITY_HEADERS),
        *(f"{name}: {value}" for name, value in response.headers),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


async def _read_request(reader: asyncio.StreamReader) -> Request | Response:
    """The request, or the error Response for a malformed or oversized one."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split()
    if len(parts) != 3 or not parts[2].startswith("HTTP/"):
        return text(400, "bad request line\n")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    target = urllib.parse.urlsplit(parts[1])
    form: dict[str, str] = {}
    length = headers.get("content-length", "0")
    if not length.isdigit():
        return text(400, "bad Content-Length\n")
    if int(length) > MAX_BODY:
        return text(413, f"a form is at most {MAX_BODY} bytes\n")
    if int(length):
        body = await reader.readexactly(int(length))
        form = dict(urllib.parse.parse_qsl(body.decode("utf-8", "replace")))
    query = dict(urllib.parse.parse_qsl(target.query))
    return Request(parts[0].upper(), target.path or "/", query, headers, form)


def text(status: int, body: str, headers: tuple[tuple[str, str], ...] = ()) -> Response:
    return Response(status, "text/plain; charset=utf-8", body.encode(), headers)


def redirect(location: str, headers: tuple[tuple[str, str], ...] = ()) -> Response:
    """303: after a POST, the browser GETs the result (a reload does not repeat the action)."""
    return Response(303, "text/plain; charset=utf-8", b"", (("Location", location), *headers))
