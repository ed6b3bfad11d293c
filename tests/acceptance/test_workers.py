"""`server.workers = 2`: a second intake process shares the port and the queue."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from tests.acceptance.process import Launcher, write_config
from tests.support.client import message, send
from tests.support.fake_upstream import FakeUpstream

pytestmark = pytest.mark.slow


async def test_two_intake_processes_share_the_port_and_every_message_is_delivered(
    tmp_path: Path, launch: Launcher, upstream: FakeUpstream, port: int
) -> None:
    config = write_config(tmp_path, port=port, upstream_port=upstream.port)
    text = config.read_text().replace(
        'hostname = "relay.test"', 'hostname = "relay.test"\nworkers = 2'
    )
    config.write_text(text)
    daemon = await launch.start_ready(config, port)
    (started,) = await daemon.wait_event("intake_workers_started")
    (worker_pid,) = started["pids"]
    await daemon.wait_event("intake_worker_started")

    async def sender(index: int) -> None:
        for number in range(10):  # one connection per message: the kernel spreads them
            await send(port, message(subject=f"w{index}-{number}"))

    await asyncio.gather(*(sender(index) for index in range(4)))
    got = await upstream.wait_for(40, timeout=30)
    subjects = {r.data.split(b"Subject: ", 1)[1].split(b"\r\n", 1)[0] for r in got}
    assert len(subjects) == 40
    # Both processes accepted mail (the worker's events carry its pid).
    queued = await daemon.wait_event("queued", count=40)  # both processes' logs are flushed
    assert len(queued) == 40
    by_worker = [event for event in queued if event.get("intake_worker") == worker_pid]
    assert 0 < len(by_worker) < 40

    code, _ = await daemon.terminate()
    assert code == 0
    # The worker stopped with the daemon, and the daemon reaped it (no zombie left behind).
    with pytest.raises(ProcessLookupError):
        os.kill(worker_pid, 0)


async def test_workers_need_a_fixed_port(tmp_path: Path) -> None:
    from tests.acceptance.process import arun_cli

    config = write_config(tmp_path, port=0, upstream_port=9)
    config.write_text(
        config.read_text().replace(
            'hostname = "relay.test"', 'hostname = "relay.test"\nworkers = 2'
        )
    )
    result = await arun_cli("run", "-c", str(config))
    assert result.returncode == 3
    assert "fixed ports" in result.stderr
