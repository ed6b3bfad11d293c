"""The listening half both fake SMTP servers share (FakeUpstream, FakeProvider): a server on
127.0.0.1, every connection's protocol kept so `stop` can cut them all (the relay under test
must then reconnect)."""

from __future__ import annotations

import asyncio
import ssl
from typing import Self

from aiosmtpd.smtp import SMTP


class LoopbackSMTPServer:
    """Subclasses build one protocol per connection in `_protocol()` and may serve implicit
    TLS from `_implicit_tls()`; `port` 0 picks a free one, read it after `start`."""

    def __init__(self, port: int = 0) -> None:
        self.port = port
        self._server: asyncio.Server | None = None
        self._protocols: list[SMTP] = []

    def _protocol(self) -> SMTP:
        raise NotImplementedError

    def _implicit_tls(self) -> ssl.SSLContext | None:
        return None

    def _factory(self) -> SMTP:
        protocol = self._protocol()
        self._protocols.append(protocol)
        return protocol

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self._factory, "127.0.0.1", self.port, ssl=self._implicit_tls(), reuse_address=True
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Stop listening and cut every open connection."""
        if self._server is not None:
            self._server.close()
            self._server = None
        for protocol in self._protocols:
            if isinstance(protocol.transport, asyncio.Transport):
                protocol.transport.abort()
        self._protocols.clear()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
