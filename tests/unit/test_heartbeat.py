"""daemon/heartbeat.py: when the watchdog is on, what STATUS= says, the STATUS= job (on a fake
NOTIFY_SOCKET, with the time it is given) and the watchdog loop."""

from __future__ import annotations

import asyncio
import os
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from relayd.daemon.heartbeat import run_watchdog, status_line, update_status, watchdog_interval
from relayd.errors import StoreError
from relayd.types import QueueDepth, RecipientState
from tests.support.fakes import QueueStore

T0 = 1_704_189_600.0


def test_watchdog_interval_is_half_of_watchdog_usec_for_this_process() -> None:
    assert watchdog_interval({}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "60000000"}) == 30.0
    assert watchdog_interval({"WATCHDOG_USEC": "0"}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "junk"}) is None
    mine = {"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid())}
    assert watchdog_interval(mine) == 1.0
    assert watchdog_interval({**mine, "WATCHDOG_PID": "1"}) is None  # meant for another pid


def test_status_line() -> None:
    counts = dict.fromkeys(RecipientState, 0) | {
        RecipientState.QUEUED: 12,
        RecipientState.DEFERRED: 3,
        RecipientState.HELD: 1,
        RecipientState.DELIVERED: 900,
    }
    assert status_line(QueueDepth(counts, 1000.0), 1300.0) == (
        "queue: 12 queued, 3 deferred, 1 held; oldest 5m"
    )
    assert status_line(QueueDepth(dict.fromkeys(RecipientState, 0), None), 0) == (
        "queue: 0 queued, 0 deferred, 0 held"
    )


@pytest.fixture
def notify_socket() -> Iterator[tuple[socket.socket, dict[str, str]]]:
    """A unix datagram socket standing in for systemd's, in a short directory (sun_path)."""
    with tempfile.TemporaryDirectory(prefix="relayd-hb-") as directory:
        path = str(Path(directory) / "notify.sock")
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.bind(path)
            sock.setblocking(False)
            yield sock, {"NOTIFY_SOCKET": path}


async def test_the_status_job_sends_the_queue_depth_at_the_time_it_is_given(
    notify_socket: tuple[socket.socket, dict[str, str]],
) -> None:
    sock, env = notify_socket
    store = QueueStore(oldest=T0 - 300)
    store.counts_[RecipientState.QUEUED] = 2
    assert await update_status(store, T0, env)
    message = sock.recv(4096).decode()
    assert message == "STATUS=queue: 2 queued, 0 deferred, 0 held; oldest 5m"


async def test_a_failing_store_skips_one_status_update_with_a_warning(
    notify_socket: tuple[socket.socket, dict[str, str]],
) -> None:
    sock, env = notify_socket
    store = QueueStore(error=StoreError("database is locked"))
    with capture_logs() as logs:
        assert not await update_status(store, T0, env)
    assert [(e["event"], e["log_level"], e["error"]) for e in logs] == [
        ("status_unavailable", "warning", "database is locked")
    ]
    with pytest.raises(BlockingIOError):
        sock.recv(4096)  # nothing was sent


async def test_the_watchdog_loop_pings_until_cancelled(
    notify_socket: tuple[socket.socket, dict[str, str]],
) -> None:
    sock, env = notify_socket
    loop = asyncio.get_running_loop()
    pinger = asyncio.create_task(run_watchdog(0.01, env))
    try:
        pings = [await asyncio.wait_for(loop.sock_recv(sock, 4096), 10) for _ in range(3)]
    finally:
        pinger.cancel()
    assert pings == [b"WATCHDOG=1"] * 3
    with pytest.raises(asyncio.CancelledError):
        await pinger
