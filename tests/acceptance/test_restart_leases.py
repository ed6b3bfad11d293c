"""A restart does not wait out leases: one daemon owns a SQLite queue, and its leases end
with it (SIGKILL: at the next start; SIGTERM: as it cancels the send), so the mail it held is
delivered within seconds of the restart, not after queue.lease_time."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from relayd.cli.main import EXIT_STARTUP
from tests.acceptance.process import Launcher, arun_cli, free_port, run_cli, write_config
from tests.support.client import message, send
from tests.support.fake_upstream import FakeUpstream

pytestmark = pytest.mark.slow

LEASE_TIME = '"60s"'  # far longer than any wait below: only an ended lease lets mail go
RESUMED_WITHIN = 3.0  # seconds from the restart's "started" to every message delivered


async def queue_list(config: Path) -> list[dict[str, Any]]:
    result = await arun_cli("queue", "list", "--json", "-c", str(config))
    assert result.returncode == 0, result.stderr
    views: list[dict[str, Any]] = json.loads(result.stdout)
    return views


def stalled_config(tmp_path: Path, port: int, upstream: FakeUpstream, **queue: str) -> Path:
    """An upstream that sits on DATA for 30 s, so relayd holds its mail leased."""
    upstream.script.stall = 30.0
    return write_config(
        tmp_path,
        port=port,
        upstream_port=upstream.port,
        queue={"lease_time": LEASE_TIME, **queue},
        upstream={"timeout": '"60s"', "max_connections": "2"},
    )


async def assert_delivered_soon(
    launch: Launcher, config: Path, port: int, upstream: FakeUpstream, count: int
) -> None:
    upstream.script.stall = 0.0
    again = await launch.start_ready(config, port)
    started = time.monotonic()
    await again.wait_event("delivered", timeout=RESUMED_WITHIN, count=count)
    assert time.monotonic() - started < RESUMED_WITHIN
    code, _ = await again.terminate()
    assert code == 0
    views = await queue_list(config)
    assert [r["state"] for v in views for r in v["recipients"]] == ["delivered"] * count
    # The attempts the dead daemon never finished are not counted.
    assert [r["attempts"] for v in views for r in v["recipients"]] == [1] * count


async def test_after_sigkill_the_restart_delivers_leased_mail_at_once(
    tmp_path: Path, launch: Launcher, upstream: FakeUpstream, port: int
) -> None:
    config = stalled_config(tmp_path, port, upstream)
    daemon = await launch.start_ready(config, port)
    for n in range(3):
        await send(port, message(subject=f"leased {n}"))
    await daemon.wait_event("delivery_attempt", count=2)  # both workers stuck in DATA

    await daemon.kill()

    await assert_delivered_soon(launch, config, port, upstream, 3)


async def test_sigterm_releases_the_lease_of_the_send_it_cancels(
    tmp_path: Path, launch: Launcher, upstream: FakeUpstream, port: int
) -> None:
    config = stalled_config(tmp_path, port, upstream, shutdown_timeout='"1s"')
    daemon = await launch.start_ready(config, port)
    await send(port, message(subject="stuck"))
    await daemon.wait_event("delivery_attempt")

    code, _ = await daemon.terminate()

    assert code == 0
    assert daemon.find("shutdown_cancelled")
    (view,) = await queue_list(config)
    (rcpt,) = view["recipients"]
    assert rcpt["state"] == "queued"
    assert rcpt["wait_reason"] == "delivery cancelled by a stop or reload"  # put back
    await assert_delivered_soon(launch, config, port, upstream, 1)


async def test_a_second_daemon_on_the_same_queue_is_refused(
    tmp_path: Path, launch: Launcher, upstream: FakeUpstream, port: int
) -> None:
    config = write_config(tmp_path, port=port, upstream_port=upstream.port)
    first = await launch.start_ready(config, port)
    other_port = free_port()
    second_config = write_config(
        tmp_path, port=other_port, upstream_port=upstream.port, name="second.toml"
    )

    second = launch.start(second_config, other_port)
    code = await second.wait_exit(15.0)

    assert code == EXIT_STARTUP
    text = second.log_text()
    assert f"in use by another `relayd run` (pid {first.pid}" in text, text
    assert "stop that daemon first, or give this one a queue.path of its own" in text
    # The first daemon goes on, and the queue tool still shares the queue with it.
    assert first.proc.poll() is None
    assert run_cli("queue", "list", "-c", str(config)).returncode == 0
    await send(port, message(subject="still served"))
    await first.wait_event("delivered")
