"""Fixtures of the integration tests: PostgreSQL, relayd processes, a scripted raw upstream."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.acceptance.process import Launcher, launcher
from tests.support import postgres
from tests.support.raw_upstream import RawUpstream


@pytest.fixture
def dsn() -> Iterator[str]:
    """A private schema in the test database, dropped afterwards."""
    with postgres.private_schema() as schema_dsn:
        yield schema_dsn


@pytest.fixture
def launch(tmp_path: Path) -> Iterator[Launcher]:
    """`launch.start(config, port)`; every child is terminated, then killed, at teardown."""
    with launcher(tmp_path) as starter:
        yield starter


@pytest.fixture
async def raw() -> AsyncIterator[RawUpstream]:
    """A RawUpstream on loopback (tests/support/raw_upstream.py), stopped afterwards."""
    upstream = RawUpstream()
    await upstream.start()
    yield upstream
    await upstream.stop()
