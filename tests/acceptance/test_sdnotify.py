"""sd_notify: READY=1 once the listener accepts, STOPPING=1 on SIGTERM (systemd Type=notify)."""

from __future__ import annotations

import asyncio
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.acceptance.process import DaemonProcess, Launcher, child_env, write_config
from tests.support.fake_upstream import FakeUpstream

pytestmark = pytest.mark.slow

SUN_PATH_MAX = 107  # sockaddr_un.sun_path is 108 bytes with the terminating NUL


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    """A bound unix datagram socket, as systemd offers one in NOTIFY_SOCKET."""
    directory = tmp_path
    short: tempfile.TemporaryDirectory[str] | None = None
    if len(str(tmp_path / "notify.sock")) > SUN_PATH_MAX:
        short = tempfile.TemporaryDirectory(prefix="relayd-notify-")
        directory = Path(short.name)
    path = str(directory / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.setblocking(False)
    try:
        yield sock, path
    finally:
        sock.close()
        if short is not None:
            short.cleanup()


async def receive(sock: socket.socket, daemon: DaemonProcess, timeout: float = 15.0) -> str:
    """The next datagram; fails if nothing comes in time or the daemon exited without it."""
    loop = asyncio.get_running_loop()
    deadline = time.monotonic() + timeout
    while True:
        exited = daemon.proc.poll() is not None  # anything it sent is queued by now
        try:
            data = await asyncio.wait_for(loop.sock_recv(sock, 4096), 0.1)
        except TimeoutError:
            if exited or time.monotonic() > deadline:
                raise AssertionError("no sd_notify datagram:\n" + daemon.log_text()) from None
            continue
        return data.decode()


def banner(port: int) -> bytes:
    """Connect to the intake right now and read its greeting (no retry: it must be up)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        return conn.recv(1024)


async def test_ready_after_the_listener_is_up_and_stopping_on_sigterm(
    tmp_path: Path,
    launch: Launcher,
    upstream: FakeUpstream,
    port: int,
    notify_socket: tuple[socket.socket, str],
) -> None:
    sock, path = notify_socket
    config = write_config(tmp_path, port=port, upstream_port=upstream.port)
    daemon = launch.start(config, port, env=child_env(NOTIFY_SOCKET=path))

    messages = [await receive(sock, daemon)]
    while "READY=1" not in messages[-1].splitlines():
        messages.append(await receive(sock, daemon))
    # READY means "accepting": a client connecting at this instant gets the greeting.
    greeting = await asyncio.to_thread(banner, port)
    assert greeting.startswith(b"220 "), greeting
    assert not any("STOPPING=1" in m for m in messages)

    code, _ = await daemon.terminate()
    assert code == 0
    after: list[str] = []
    while not any("STOPPING=1" in m.splitlines() for m in after):
        after.append(await receive(sock, daemon, timeout=2.0))
    assert not any("READY=1" in m.splitlines() for m in after)


async def test_without_notify_socket_nothing_is_required(
    tmp_path: Path, launch: Launcher, upstream: FakeUpstream, port: int
) -> None:
    """Under Docker or a terminal there is no NOTIFY_SOCKET: the daemon runs the same."""
    config = write_config(tmp_path, port=port, upstream_port=upstream.port)
    daemon = await launch.start_ready(config, port)
    greeting = await asyncio.to_thread(banner, port)
    assert greeting.startswith(b"220 ")
    code, _ = await daemon.terminate()
    assert code == 0
