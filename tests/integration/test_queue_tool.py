"""The queue tool against a store the daemon is not running on."""

from __future__ import annotations

import asyncio

import pytest

from relayd.cli import main
from relayd.store import open_store
from relayd.types import UpstreamHold
from tests.conftest import ConfigFactory


def test_retry_all_ends_an_upstream_pause(make_config: ConfigFactory) -> None:
    """DESIGN: an auth-failed upstream stays paused until the config changes or an operator
    retries; `relayd queue retry --all` is that retry."""
    config = make_config(
        'provider = "generic"\nhost = "127.0.0.1"\nport = 9\nsecurity = "none"\nauth = "none"'
    )

    async def pause() -> None:
        store = open_store(config.queue.backend, config.queue.path)
        await store.open()
        await store.hold_upstream(UpstreamHold("main", None, "535 5.7.8 bad credentials"))
        await store.close()

    async def current_hold() -> UpstreamHold | None:
        store = open_store(config.queue.backend, config.queue.path)
        await store.open()
        try:
            return await store.upstream_hold("main")
        finally:
            await store.close()

    asyncio.run(pause())
    assert asyncio.run(current_hold()) is not None
    assert config.source is not None

    with pytest.raises(SystemExit) as exit_info:
        main(["queue", "retry", "--all", "-c", str(config.source)])
    assert exit_info.value.code == 0

    assert asyncio.run(current_hold()) is None
