"""Cross-process "new mail" wake-ups for a SQLite queue shared by several processes.

The dispatcher listens on a Linux abstract-namespace datagram socket named after the
database's path; any process that commits new work (intake in another process, the
sendmail fallback, `relayd queue retry`) sends it one byte. Abstract names need no file,
leave nothing stale behind and have no path-length limit. Where they do not exist, or a
datagram is lost, the store's data_version poll still notices within a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import socket
import sys
from pathlib import Path


def socket_name(path: Path) -> str:
    digest = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:24]
    return f"\0relayd-wake-{digest}"


class Wakeup:
    """poke() from any process; listen() in the one process that waits for work."""

    def __init__(self, path: Path) -> None:
        self.name = socket_name(path)
        self._listener: socket.socket | None = None
        self._sender: socket.socket | None = None
        self.enabled = sys.platform.startswith("linux")

    def poke(self) -> None:
        """Tell a listening dispatcher (if any) that work arrived; never blocks or fails.
        Not when it listens in this process: the caller woke it already, and a second
        wake-up would send a second idle worker to look for the same mail."""
        if not self.enabled or self._listener is not None:
            return
        if self._sender is None:
            self._sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._sender.setblocking(False)
        with contextlib.suppress(OSError):  # nobody listening, or its buffer is full
            self._sender.sendto(b"!", self.name)

    def listen(self, event: asyncio.Event) -> None:
        """Set `event` whenever a poke arrives; idempotent. Another listener on the same
        queue (a second daemon by mistake) keeps the name; this one then relies on polling."""
        if not self.enabled or self._listener is not None:
            return
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.setblocking(False)
        try:
            sock.bind(self.name)
        except OSError:
            sock.close()
            self.enabled = False
            return
        self._listener = sock
        asyncio.get_running_loop().add_reader(sock.fileno(), self._drain, event)

    def _drain(self, event: asyncio.Event) -> None:
        assert self._listener is not None
        with contextlib.suppress(BlockingIOError):
            while self._listener.recv(64):
                pass
        event.set()

    def close(self) -> None:
        if self._listener is not None:
            with contextlib.suppress(RuntimeError):  # the loop may already be closed
                asyncio.get_running_loop().remove_reader(self._listener.fileno())
            self._listener.close()
            self._listener = None
        if self._sender is not None:
            self._sender.close()
            self._sender = None
