"""The `directory` capture upstream (provider = "directory"): mail written to files instead
of sent, for development, tests and appliances that collect it.

A capture must show what an SMTP server would have received: the message in wire form and
the envelope, which the message itself may not show (Bcc recipients, the return path).
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

from relayd.clock import Clock
from relayd.delivery.client import crlf_lines
from relayd.errors import UpstreamUnavailable
from relayd.types import Outgoing, SendResult, SmtpReply
from relayd.units import format_iso

CAPTURED = SmtpReply(250, "2.0.0 Ok: written to the capture directory")


class DirectorySession:
    """The `directory` capture upstream: per message, `<queue-id>.eml` in wire form (CRLF
    line ends throughout, as an SMTP server would receive it) and `<queue-id>.json` with
    the envelope (mail_from, rcpt_to, upstream, time), which the message itself may not
    show (Bcc); each written atomically, the envelope first (a
    watcher that sees the .eml finds its envelope beside it)."""

    def __init__(self, path: Path, upstream: str, clock: Clock) -> None:
        self.path = path
        self.upstream = upstream
        self.clock = clock

    async def send(self, message: Outgoing) -> SendResult:
        envelope = {
            "mail_from": message.mail_from,
            "rcpt_to": list(message.recipients),
            "upstream": self.upstream,
            "time": format_iso(self.clock.now()),
        }
        document = json.dumps(envelope, ensure_ascii=False, indent=2).encode() + b"\n"
        try:
            await asyncio.to_thread(self._write, f"{message.name}.json", document)
            await asyncio.to_thread(self._write, f"{message.name}.eml", crlf_lines(message.body))
        except OSError as exc:
            raise UpstreamUnavailable(f"cannot write to {self.path}: {exc.strerror}") from exc
        return SendResult({rcpt: CAPTURED for rcpt in message.recipients}, reached_data=True)

    def _write(self, filename: str, data: bytes) -> None:
        # temp + fsync + rename + fsync(dir): a reader never sees a half-written file, and a
        # retry after a crash rewrites the same name (at-least-once, no duplicates here).
        self.path.mkdir(parents=True, exist_ok=True)
        final = self.path / filename
        temp = self.path / f".{filename}.tmp"
        with open(temp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, final)
        dir_fd = os.open(self.path, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    async def close(self) -> None:
        return None
