"""Shared fixtures: a clean environment, config files, an in-process daemon, a fake upstream."""

from __future__ import annotations

import asyncio
import os
import textwrap
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from relayd.config.model import Config, load
from relayd.daemon.relayd import Relayd
from tests.support.fake_upstream import FakeUpstream
from tests.support.waits import until


@pytest.fixture(autouse=True)
def _scrub_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests never see the developer's RELAYD_* settings."""
    for key in list(os.environ):
        if key.startswith("RELAYD_") or key == "NOTIFY_SOCKET":
            monkeypatch.delenv(key)


ConfigFactory = Callable[..., Config]


@pytest.fixture
def make_config(tmp_path: Path) -> ConfigFactory:
    """Write a relayd.toml into tmp_path and load it. `upstream` is the TOML of the
    [upstreams.main] table body; `extra` is appended verbatim."""

    def factory(upstream: str, extra: str = "", server: str = "", queue: str = "") -> Config:
        text = textwrap.dedent(
            f"""
            [server]
            listen = ["127.0.0.1:0"]
            hostname = "relay.test"
            {server}

            [queue]
            path = "{tmp_path / "queue.db"}"
            retry = ["200ms", "400ms"]
            {"" if "lease_time" in queue else 'lease_time = "10s"'}
            shutdown_timeout = "5s"
            {queue}

            [log]
            format = "console"

            [upstreams.main]
            {upstream}
            """
        )
        path = tmp_path / "relayd.toml"
        path.write_text(textwrap.dedent(text) + textwrap.dedent(extra))
        return load(path)

    return factory


@asynccontextmanager
async def running(config: Config) -> AsyncIterator[Relayd]:
    """An in-process daemon on an ephemeral port; stopped (gracefully) on exit."""
    daemon = Relayd(config, handle_signals=False)
    task = asyncio.create_task(daemon.serve())
    started = asyncio.create_task(daemon.started.wait())
    done, _ = await asyncio.wait({task, started}, return_when=asyncio.FIRST_COMPLETED)
    if task in done:
        started.cancel()
        task.result()  # raises the startup error
    await _lanes_started(daemon, config)
    try:
        yield daemon
    finally:
        daemon.stop_event.set()
        await asyncio.wait_for(task, 30)


async def _lanes_started(daemon: Relayd, config: Config, timeout: float = 10.0) -> None:
    """Each lane lifts an earlier run's account hold as it starts (Lane.start): a test that
    holds an upstream must do so after that, not race it. Intake readiness comes first."""
    names = set(config.upstreams)
    await until(lambda: daemon.lanes is not None and set(daemon.lanes.lanes) == names, timeout)


@pytest.fixture
async def upstream() -> AsyncIterator[FakeUpstream]:
    async with FakeUpstream() as fake:
        yield fake
