"""A TCP proxy between relayd and its database that can fail the ways a network does.

`freeze()` stops forwarding in both directions and keeps every socket open (a frozen
host, a partition the kernel does not notice): data read meanwhile is held, new
connections are accepted but not connected through, and everything flows again on
`thaw()`. `freeze_after(marker)` freezes right after forwarding the client's write that
follows one containing `marker`: asyncpg sends a statement's text to prepare it, then (in
its next write) executes it, so the server runs the statement and the client never hears.
`cut()` closes every connection; `refuse()` also stops listening (connection refused) until
`restore()`.
"""

from __future__ import annotations

import asyncio
import contextlib
from types import TracebackType


class TcpProxy:
    """127.0.0.1:`port` forwards to `target_host`:`target_port`."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self.frozen = asyncio.Event()
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._marker: bytes | None = None
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    def dsn(self, dsn: str) -> str:
        """`dsn` (postgresql://user@host:port/...) through this proxy."""
        host_port = f"{self.target[0]}:{self.target[1]}"
        assert host_port in dsn, dsn
        return dsn.replace(host_port, f"127.0.0.1:{self.port}", 1)

    async def __aenter__(self) -> TcpProxy:
        await self._listen()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.thaw()
        await self.refuse()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def freeze(self) -> None:
        self._flowing.clear()
        self.frozen.set()

    def freeze_after(self, marker: bytes) -> None:
        self._marker = marker

    def thaw(self) -> None:
        self._marker = None
        self.frozen.clear()
        self._flowing.set()

    def cut(self) -> None:
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def refuse(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
            self.cut()
            await server.wait_closed()
        self.cut()

    async def restore(self) -> None:
        self.thaw()
        if self._server is None:
            await self._listen()

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._accepted, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _accepted(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            await self._flowing.wait()
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except (OSError, asyncio.CancelledError):  # refused, or the test ended while frozen
            writer.transport.abort()
            return
        self._writers.add(up_writer)
        for source, sink, watch in ((reader, up_writer, True), (up_reader, writer, False)):
            task = asyncio.create_task(self._pump(source, sink, watch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pump(
        self, source: asyncio.StreamReader, sink: asyncio.StreamWriter, watch: bool
    ) -> None:
        marker_seen = False  # in this connection's previous write
        with contextlib.suppress(OSError, ConnectionError):
            while data := await source.read(65536):
                await self._flowing.wait()
                sink.write(data)
                await sink.drain()
                if watch and self._marker is not None:
                    if marker_seen:
                        self.freeze()
                        self._marker = None
                    marker_seen = self._marker is not None and self._marker in data
            await self._flowing.wait()
        sink.transport.abort()
