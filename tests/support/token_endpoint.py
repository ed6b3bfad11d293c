"""A local OAuth2 token endpoint (RFC 6749 section 3.2) that tests program; plain HTTP/1.1.

The real Google and Microsoft endpoints cannot be reached here. This one answers POST /token
with the next programmed reply (or the default: a fresh access token), records every request
body (form fields), and counts requests. It speaks just enough HTTP for httpx: one request
per connection, Content-Length bodies, `Connection: close`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import json
import urllib.parse
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Reply:
    status: int = 200
    body: dict[str, Any] | str = field(default_factory=dict)


def grant(access_token: str, expires_in: int = 3600, **extra: Any) -> Reply:
    """A successful token response (RFC 6749 5.1)."""
    return Reply(200, {"access_token": access_token, "token_type": "Bearer",
                       "expires_in": expires_in, **extra})  # fmt: skip


def refusal(error: str, description: str = "", status: int = 400) -> Reply:
    """An error response (RFC 6749 5.2)."""
    body = {"error": error, **({"error_description": description} if description else {})}
    return Reply(status, body)


class TokenEndpoint:
    """`async with TokenEndpoint() as endpoint:`; `endpoint.url`, `.requests`, `.replies`."""

    def __init__(self) -> None:
        self.replies: collections.deque[Reply] = collections.deque()
        self.requests: list[dict[str, str]] = []
        self.port = 0
        self._numbers = itertools.count(1)
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/token"

    def issued(self, number: int) -> str:
        """The access token the default reply hands out as its `number`th (from 1)."""
        return f"access-token-{number}"

    def _next_reply(self) -> Reply:
        if self.replies:
            return self.replies.popleft()
        return grant(self.issued(next(self._numbers)))

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, path, _ = lines[0].split(" ", 2)
            headers = {
                name.strip().lower(): value.strip()
                for name, _, value in (line.partition(":") for line in lines[1:] if line)
            }
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            if method != "POST" or path != "/token":
                reply = Reply(404, "not found")
            else:
                form = urllib.parse.parse_qs(body.decode(), keep_blank_values=True)
                self.requests.append({key: values[0] for key, values in form.items()})
                reply = self._next_reply()
            text = reply.body if isinstance(reply.body, str) else json.dumps(reply.body)
            data = text.encode()
            kind = "text/plain" if isinstance(reply.body, str) else "application/json"
            writer.write(
                f"HTTP/1.1 {reply.status} X\r\nContent-Type: {kind}\r\n"
                f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n".encode()
                + data
            )
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, ValueError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def __aenter__(self) -> TokenEndpoint:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
