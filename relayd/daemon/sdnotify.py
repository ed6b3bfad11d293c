"""systemd's sd_notify protocol over the stdlib socket (no dependency needed).

`NOTIFY_SOCKET` is set by systemd for Type=notify units; without it every call is a no-op,
so the daemon behaves the same under Docker or a terminal.
"""

from __future__ import annotations

import os
import socket


def notify(state: str, environ: dict[str, str] | None = None) -> bool:
    """Send e.g. "READY=1" or "STATUS=..."; returns whether a socket was there to send to."""
    address = (environ if environ is not None else os.environ).get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):  # abstract namespace socket
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect(address)
            sock.sendall(state.encode())
        except OSError:
            return False
    return True
