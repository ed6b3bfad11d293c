"""Real filesystem faults under a real relayd: a full queue disk, another process's lock."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import shutil
import smtplib
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.acceptance.process import Launcher, free_port, write_config
from tests.support.client import RawClient, message, send
from tests.support.fake_upstream import FakeUpstream
from tests.support.http import get_json

pytestmark = pytest.mark.slow

TMPFS_SIZE = "2m"


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs of its own, so the test can fill it; skipped (visibly) where mount is
    not permitted, except under CI=true, where the fault must be tested."""
    mountpoint = tmp_path / "disk"
    mountpoint.mkdir()
    command = ["mount", "-t", "tmpfs", "-o", f"size={TMPFS_SIZE}", "tmpfs", str(mountpoint)]
    try:
        mounted = subprocess.run(command, capture_output=True, text=True, check=False)
    except FileNotFoundError as exc:
        mounted = subprocess.CompletedProcess(command, 1, "", str(exc))
    if mounted.returncode != 0:
        reason = f"cannot mount a tmpfs here ({mounted.stderr.strip()}): needs root"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], check=False)


def fill(directory: Path) -> Path:
    """Write a file until the file system is full (ENOSPC); returns it (delete it to free)."""
    filler = directory / "filler"
    for small in (4096, 512, 64, 1):  # down to the last partial block
        with contextlib.suppress(OSError), filler.open("ab", buffering=0) as out:
            while True:
                out.write(b"\0" * small)
    return filler


def with_admin_and_notices(config: Path, admin: int) -> None:
    text = config.read_text()
    text += f"""
[admin]
listen = "127.0.0.1:{admin}"

[notifications]
mailbox = "ops@example.net"
disk_free_min = "1MiB"
"""
    config.write_text(text)


async def refused_with(port: int) -> str:
    with pytest.raises(smtplib.SMTPDataError) as refused:
        await send(port)
    error = refused.value.smtp_error
    return f"{refused.value.smtp_code} {error.decode() if isinstance(error, bytes) else error}"


async def data_reply(port: int) -> str:
    """The reply to one message's final dot (raw: the daemon may be shutting down, and its
    421 to QUIT is none of this test's business)."""
    client = RawClient(port)
    try:
        await client.connect()
        for command in ("EHLO app.test", "MAIL FROM:<app@example.org>", "RCPT TO:<a@example.net>"):
            assert (await client.cmd(command)).startswith("250"), command
        assert (await client.cmd("DATA")).startswith("354")
        return await client.cmd(message() + b"\r\n.\r\n")
    finally:
        await client.close()


async def test_a_full_queue_disk_is_451_unready_and_disk_low_within_seconds(
    small_disk: Path, launch: Launcher, upstream: FakeUpstream, port: int
) -> None:
    admin = free_port()
    config = write_config(small_disk, port=port, upstream_port=upstream.port)
    with_admin_and_notices(config, admin)
    daemon = await launch.start_ready(config, port)
    await daemon.wait_event("admin_listening")
    status, ready = await get_json(admin, "/readyz")
    assert status == 200, ready

    filler = fill(small_disk)
    assert shutil.disk_usage(small_disk).free == 0
    full_at = time.monotonic()

    assert (await refused_with(port)).startswith("451 4.3.0")
    status, ready = await get_json(admin, "/readyz")
    assert status == 503
    assert ready["store"]["ok"] is False
    (problem,) = ready["problems"]
    assert problem.startswith("store: disk full: ")
    assert str(small_disk) in problem and "free space there" in problem
    (notice,) = await daemon.wait_event("notice", timeout=8.0, kind="disk_low")
    assert notice["key"] == str(small_disk)
    assert time.monotonic() - full_at < 8.0

    filler.unlink()
    await send(port)
    assert (await get_json(admin, "/readyz"))[0] == 200
    await upstream.wait_for(1)
    code, _ = await daemon.terminate()
    assert code == 0


@contextlib.contextmanager
def write_lock_held(queue: Path) -> Iterator[None]:
    """This process (not relayd) holds the queue's write lock, as a stuck queue command."""
    fd = os.open(f"{queue}-writelock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


LOCK_TIMEOUT = 2.0


async def test_a_held_write_lock_costs_a_451_within_lock_timeout_and_never_holds_shutdown(
    tmp_path: Path, launch: Launcher, upstream: FakeUpstream, port: int
) -> None:
    config = write_config(
        tmp_path, port=port, upstream_port=upstream.port, queue={"lock_timeout": '"2s"'}
    )
    daemon = await launch.start_ready(config, port)
    with write_lock_held(tmp_path / "queue.db"):
        started = time.monotonic()
        reply = await asyncio.wait_for(refused_with(port), LOCK_TIMEOUT + 3)
        assert reply.startswith("451 4.3.0"), reply
        assert LOCK_TIMEOUT - 0.5 < time.monotonic() - started < LOCK_TIMEOUT + 2
        (unavailable,) = daemon.find("store_unavailable")
        assert "queue.lock_timeout" in str(unavailable) and "writelock" in str(unavailable)

        # SIGTERM while a client waits in DATA: like any transaction in DATA it gets its
        # answer (the 451, at lock_timeout); the store's close does not wait for the lock.
        waiting = asyncio.ensure_future(data_reply(port))
        await asyncio.sleep(0.5)
        code, took = await daemon.terminate()
        assert code == 0
        assert took < LOCK_TIMEOUT + 1.5
        assert (await asyncio.wait_for(waiting, 5)).startswith("451 4.3.0")
    assert upstream.received == []


async def test_sigterm_is_prompt_while_another_process_holds_the_write_lock(
    tmp_path: Path, launch: Launcher, upstream: FakeUpstream, port: int
) -> None:
    """The holder keeps the lock past the daemon's exit: a write in flight (a lane's lease,
    the poll for other processes' commits) gives up at lock_timeout, the close at once."""
    config = write_config(
        tmp_path, port=port, upstream_port=upstream.port, queue={"lock_timeout": '"2s"'}
    )
    daemon = await launch.start_ready(config, port)
    with write_lock_held(tmp_path / "queue.db"):
        await asyncio.sleep(1.5)  # the lanes' writes now wait for the lock
        code, took = await daemon.terminate()
    assert code == 0
    assert took < LOCK_TIMEOUT + 1.5
