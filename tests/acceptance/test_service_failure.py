"""A service that dies takes the daemon down with a failing exit code (so systemd restarts it)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests.acceptance.process import Launcher, write_config
from tests.support.fake_upstream import FakeUpstream

pytestmark = pytest.mark.slow

# Fault injection: the real CLI, with a lane worker replaced by one that fails at once (the
# lane supervisor, lanes.LaneSet, must take the daemon down).
BROKEN_DISPATCHER = """\
from relayd.delivery import lane
from relayd.cli.main import main


async def broken(self, *args):
    raise RuntimeError("injected dispatcher failure")


lane.Lane.run_worker = broken
main()
"""


async def test_a_failed_dispatcher_stops_the_daemon_with_a_nonzero_exit(
    tmp_path: Path, launch: Launcher, upstream: FakeUpstream, port: int
) -> None:
    config = write_config(tmp_path, port=port, upstream_port=upstream.port)
    daemon = launch.start(config, port, command=[sys.executable, "-c", BROKEN_DISPATCHER])
    code = await daemon.wait_exit(10.0)
    (failed,) = daemon.find("service_failed")
    assert failed["service"] == "dispatcher"
    assert "injected dispatcher failure" in failed["error"]
    assert daemon.event_names()[-1] == "stopped"
    assert code != 0
