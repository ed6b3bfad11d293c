"""SMTP clients for tests: the stdlib smtplib, run in a thread so the test's loop keeps going."""

from __future__ import annotations

import asyncio
import contextlib
import smtplib
import socket


def message(subject: str = "hello", body: str = "Hello from a test.\r\n", extra: str = "") -> bytes:
    return (
        f"From: App <app@example.org>\r\nTo: someone@example.net\r\nSubject: {subject}\r\n"
        f"{extra}\r\n{body}"
    ).encode()


def _send(
    port: int, mail_from: str, rcpts: list[str], data: bytes, host: str
) -> dict[str, tuple[int, bytes]]:
    with smtplib.SMTP(host, port, timeout=20) as client:
        return client.sendmail(mail_from, rcpts, data)


async def send(
    port: int,
    data: bytes | None = None,
    mail_from: str = "app@example.org",
    rcpts: list[str] | None = None,
    host: str = "127.0.0.1",
) -> dict[str, tuple[int, bytes]]:
    """Send one message with smtplib; raises smtplib's exceptions on refusal."""
    return await asyncio.to_thread(
        _send, port, mail_from, rcpts or ["someone@example.net"], data or message(), host
    )


class RawClient:
    """A line-level SMTP client for sending exactly the bytes a test needs (smuggling, junk)."""

    def __init__(self, port: int, source: str = "127.0.0.1") -> None:
        self.port = port
        self.source = source
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def connect(self) -> str:
        self.reader, self.writer = await asyncio.open_connection(
            "127.0.0.1", self.port, local_addr=(self.source, 0), family=socket.AF_INET
        )
        return await self.reply()

    async def reply(self) -> str:
        assert self.reader is not None
        lines = []
        while True:
            line = await asyncio.wait_for(self.reader.readline(), 10)
            if not line:
                lines.append("<closed>")
                break
            lines.append(line.decode().rstrip("\r\n"))
            if len(line) < 4 or line[3:4] != b"-":
                break
        return "\n".join(lines)

    async def cmd(self, raw: bytes | str) -> str:
        assert self.writer is not None
        data = raw.encode() if isinstance(raw, str) else raw
        self.writer.write(data if data.endswith(b"\n") else data + b"\r\n")
        await self.writer.drain()
        return await self.reply()

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await self.writer.wait_closed()
