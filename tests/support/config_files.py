"""Config files for config tests: written to a temp dir, loaded as the daemon loads them."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from relayd.config.model import Config, load
from relayd.errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    """`text` (dedented) as `tmp_path/relayd.toml`."""
    tmp_path.mkdir(exist_ok=True)
    path = tmp_path / "relayd.toml"
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


def load_text(tmp_path: Path, text: str, **env: str) -> Config:
    return load(write(tmp_path, text), environ=env)


def error_of(tmp_path: Path, text: str, **env: str) -> ConfigError:
    """The ConfigError loading `text` raises (the test fails when it loads)."""
    with pytest.raises(ConfigError) as caught:
        load_text(tmp_path, text, **env)
    return caught.value
