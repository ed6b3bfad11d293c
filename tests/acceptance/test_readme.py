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


# The repository's own top-level entries: a README path that starts with one of them is a
# file of this repository and must exist (runtime paths such as var/outbox/ start elsewhere).
_TOP = ("bench/", "config/", "docker/", "docs/", "relayd/", "scripts/", "systemd/", "tests/")


def readme_paths(readme: str) -> set[str]:
    """Repository paths the README names: in `code`, in links, and in its shell blocks."""
    tokens = set(re.findall(r"`([^`\s]+)`", readme)) | set(re.findall(r"\]\(([^)\s]+)\)", readme))
    for block in re.findall(r"```\w*\n(.*?)```", readme, re.DOTALL):
        tokens |= set(block.split())
    return {
        token.strip("\"'(),;")
        for token in tokens
        if token.startswith(_TOP) or re.fullmatch(r"[\w.-][\w./-]*\.md", token)
    }


def test_every_file_the_readme_names_is_in_the_repository() -> None:
    readme = (REPO_ROOT / "README.md").read_text()
    named = readme_paths(readme)
    assert "docs/ARCHITECTURE.md" in named  # the parser sees links and code alike
    missing = sorted(path for path in named if not (REPO_ROOT / path).exists())
    assert missing == []
