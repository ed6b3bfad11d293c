"""A raw SMTP upstream on loopback that answers each command with whatever the test scripts,
in step or not (a 250 to DATA, a reply sent twice): what aiosmtpd (fake_upstream.py) will
not do."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

# A test's script: (connection number from 1, command line) -> the raw reply text to send,
# any number of lines; None for the usual answer (USUAL).
Script = Callable[[int, str], str | None]

DROP = "<drop>"  # a scripted reply that closes the connection instead of answering

USUAL = {"EHLO": "250-raw\r\n250 8BITMIME\r\n", "DATA": "354 go ahead\r\n", "QUIT": "221 bye\r\n"}


@dataclass
class RawUpstream:
    script: Script = lambda connection, command: None
    # seconds to wait before answering (connection, command line); the final dot is "."
    delay: Callable[[int, str], float] = lambda connection, command: 0.0
    commands: list[tuple[int, str]] = field(default_factory=list)  # (connection, line)
    bodies: list[bytes] = field(default_factory=list)  # every DATA body read, un-stuffed
    connections: int = 0
    open: int = 0  # connections open now
    port: int = 0
    _server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def reply(self, connection: int, line: str) -> str:
        scripted = self.script(connection, line)
        if scripted is not None:
            return scripted
        return USUAL.get(line.split(" ", 1)[0].upper(), "250 ok\r\n")

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.open += 1
        connection = self.connections
        writer.write(b"220 raw ESMTP\r\n")
        try:
            while line := (await reader.readline()).decode("utf-8", "replace").rstrip("\r\n"):
                self.commands.append((connection, line))
                answer = await self._answer(writer, connection, line)
                if line.upper() == "QUIT" or answer == DROP:
                    break
                if line.upper() == "DATA" and answer.startswith("354"):
                    lines = []
                    while (text := await reader.readline()) != b".\r\n":
                        if not text:
                            raise asyncio.IncompleteReadError(b"", None)
                        lines.append(text[1:] if text.startswith(b"..") else text)
                    if lines:  # the final dot alone ends DATA with no message
                        self.bodies.append(b"".join(lines))
                    self.commands.append((connection, "."))
                    if await self._answer(writer, connection, ".") == DROP:
                        break
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self.open -= 1
            writer.close()

    async def _answer(self, writer: asyncio.StreamWriter, connection: int, line: str) -> str:
        if (pause := self.delay(connection, line)) > 0:
            await asyncio.sleep(pause)
        answer = self.reply(connection, line)
        if answer != DROP:
            writer.write(answer.encode())
            await writer.drain()
        return answer
