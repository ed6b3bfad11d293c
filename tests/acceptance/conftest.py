"""Fixtures for `relayd` as a subprocess: a launcher that always reaps what it started."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.acceptance.process import Launcher, free_port, launcher


@pytest.fixture
def launch(tmp_path: Path) -> Iterator[Launcher]:
    """`launch.start(config, port)`; every child is terminated, then killed, at teardown."""
    with launcher(tmp_path) as starter:
        yield starter


@pytest.fixture
def port() -> int:
    """A fixed intake port, so a restarted daemon listens where the first one did."""
    return free_port()
