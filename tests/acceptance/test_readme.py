"""The README's quick start works as written: its dev config exists and is valid."""

from __future__ import annotations

import re

from tests.acceptance.process import REPO_ROOT, run_cli


def test_readme_dev_command_uses_a_valid_config() -> None:
    readme = (REPO_ROOT / "README.md").read_text()
    shell = "\n".join(re.findall(r"```sh\n(.*?)```", readme, re.DOTALL))
    commands = re.findall(r"relayd run -c (\S+)", shell)
    assert commands == ["config/relayd.dev.toml"]
    result = run_cli("check-config", "-c", commands[0], cwd=REPO_ROOT)
    assert result.returncode == 0, result.stderr
    # What the quick start then tells the reader to use: port 2525 and var/outbox.
    assert re.search(r"swaks --server 127\.0\.0\.1:2525\b", shell)
    assert 'listen = ["127.0.0.1:2525"]' in result.stdout
    assert f'path = "{REPO_ROOT / "var" / "outbox"}"' in result.stdout
    assert "ls var/outbox/" in shell
