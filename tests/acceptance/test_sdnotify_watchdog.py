"""sd_notify beyond READY/STOPPING: WATCHDOG=1 when systemd asks, STATUS= with the queue
depth, RELOADING=1 / READY=1 around a SIGHUP reload (a fake NOTIFY_SOCKET, a real daemon)."""

from __future__ import annotations

import asyncio
import signal
import socket
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.acceptance.process import DaemonProcess, Launcher, child_env, run_cli, write_config
from tests.support.fake_upstream import FakeUpstream

pytestmark = pytest.mark.slow


@pytest.fixture
def notify_socket() -> Iterator[tuple[socket.socket, str]]:
    """A bound unix datagram socket in a short directory (sun_path holds 107 bytes)."""
    with tempfile.TemporaryDirectory(prefix="relayd-wd-") as directory:
        path = str(Path(directory) / "notify.sock")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(path)
        sock.setblocking(False)
        try:
            yield sock, path
        finally:
            sock.close()


async def collect(sock: socket.socket, daemon: DaemonProcess, seconds: float) -> list[str]:
    """Every datagram that arrives within `seconds`."""
    loop = asyncio.get_running_loop()
    deadline = time.monotonic() + seconds
    out: list[str] = []
    while (left := deadline - time.monotonic()) > 0:
        try:
            out.append((await asyncio.wait_for(loop.sock_recv(sock, 4096), left)).decode())
        except TimeoutError:
            break
    assert daemon.proc.poll() is None, daemon.log_text()
    return out


def closed_today(config: Path) -> None:
    """Close the upstream's send window today and tomorrow (UTC): mail stays queued."""
    today = datetime.now(UTC).date()
    dates = ", ".join(str(today + timedelta(days=n)) for n in range(2))
    with config.open("a") as handle:
        handle.write(f'\n[upstreams.main.window]\ntimezone = "UTC"\nclosed_dates = [{dates}]\n')


async def test_watchdog_status_and_reload_notifications(
    tmp_path: Path,
    launch: Launcher,
    upstream: FakeUpstream,
    port: int,
    notify_socket: tuple[socket.socket, str],
) -> None:
    sock, path = notify_socket
    config = write_config(tmp_path, port=port, upstream_port=upstream.port)
    closed_today(config)
    # One message already queued while the daemon is down (the sendmail fallback).
    queued = run_cli(
        "sendmail", "-c", str(config), "someone@example.net", input_text="Subject: q\n\nx\n"
    )
    assert queued.returncode == 0, queued.stderr
    env = child_env(NOTIFY_SOCKET=path, WATCHDOG_USEC="400000")
    daemon = launch.start(config, port, env=env)
    await daemon.wait_started()
    first = await collect(sock, daemon, 1.5)
    assert "READY=1" in first
    status = [m for m in first if m.startswith("STATUS=")]
    assert status and status[0].startswith("STATUS=queue: 1 queued, 0 deferred, 0 held; oldest ")
    pings = first.count("WATCHDOG=1")
    assert 4 <= pings <= 12, first  # every 0.2 s (half of 0.4 s)

    daemon.send_signal(signal.SIGHUP)
    await daemon.wait_event("config_reloaded")
    reload = await collect(sock, daemon, 0.5)
    assert reload.index("RELOADING=1") < reload.index("READY=1"), reload

    code, _ = await daemon.terminate()
    assert code == 0


async def test_no_watchdog_pings_unless_asked(
    tmp_path: Path,
    launch: Launcher,
    upstream: FakeUpstream,
    port: int,
    notify_socket: tuple[socket.socket, str],
) -> None:
    sock, path = notify_socket
    config = write_config(tmp_path, port=port, upstream_port=upstream.port)
    daemon = launch.start(config, port, env=child_env(NOTIFY_SOCKET=path))
    await daemon.wait_started()
    seen = await collect(sock, daemon, 1.0)
    assert "READY=1" in seen and "WATCHDOG=1" not in seen
    assert any(m == "STATUS=queue: 0 queued, 0 deferred, 0 held" for m in seen), seen
    code, _ = await daemon.terminate()
    assert code == 0
