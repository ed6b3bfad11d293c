"""systemd/: `systemd-analyze verify` accepts the unit, its security score is the README's,
and its ExecStart command line is one relayd understands."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.acceptance.process import REPO_ROOT, relayd_command, run_cli

UNIT = REPO_ROOT / "systemd" / "relayd.service"
ANALYZE = shutil.which("systemd-analyze")


def needs_analyze() -> None:
    if ANALYZE is None:
        if os.environ.get("CI") == "true":
            pytest.fail("systemd-analyze is missing")
        pytest.skip("systemd-analyze is not installed")


def unit_value(key: str) -> list[str]:
    return re.findall(rf"^{key}=(.*)$", UNIT.read_text(), re.MULTILINE)


def test_unit_settings_the_daemon_relies_on() -> None:
    assert unit_value("Type") == ["notify"]
    assert unit_value("ExecReload") == ["/bin/kill -HUP $MAINPID"]
    assert unit_value("WatchdogSec") == ["60s"]
    assert unit_value("KillSignal") == ["SIGTERM"]
    (start,) = unit_value("ExecStart")
    assert start == "/usr/local/bin/relayd run -c /etc/relayd/relayd.toml"


def test_verify_passes_with_the_binary_installed(tmp_path: Path) -> None:
    """The only thing verify can miss here is /usr/local/bin/relayd: point it at this
    installation's relayd instead and nothing else may be reported."""
    needs_analyze()
    assert ANALYZE is not None
    command = relayd_command()
    if len(command) != 1:
        pytest.skip("relayd is not installed as a script")
    unit = tmp_path / "relayd.service"
    unit.write_text(UNIT.read_text().replace("/usr/local/bin/relayd", command[0]))
    result = subprocess.run(
        [ANALYZE, "verify", str(unit)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stderr.strip() == "", result.stderr
    # And the real file differs only in that path.
    real = subprocess.run(
        [ANALYZE, "verify", str(UNIT)], capture_output=True, text=True, check=False
    )
    lines = [line for line in real.stderr.splitlines() if line.strip()]
    assert all("/usr/local/bin/relayd" in line for line in lines), real.stderr


def test_security_score_is_the_one_in_the_readme() -> None:
    needs_analyze()
    assert ANALYZE is not None
    result = subprocess.run(
        [ANALYZE, "security", "--offline=yes", str(UNIT)],
        capture_output=True,
        text=True,
        check=False,
    )
    match = re.search(r"Overall exposure level for relayd.service: (\d+\.\d)", result.stdout)
    assert match, result.stdout + result.stderr
    score = float(match.group(1))
    assert score <= 2.0
    readme = (REPO_ROOT / "README.md").read_text()
    assert f"`systemd-analyze security` scores it {match.group(1)}" in readme


def test_exec_start_is_a_valid_relayd_command_line(tmp_path: Path) -> None:
    """`run -c FILE` as in ExecStart, checked with check-config on a file of that layout."""
    (start,) = unit_value("ExecStart")
    _, subcommand, flag, path = start.split()
    assert (subcommand, flag, path) == ("run", "-c", "/etc/relayd/relayd.toml")
    config = tmp_path / "relayd.toml"
    config.write_text(
        (REPO_ROOT / "config" / "relayd.example.toml")
        .read_text()
        .replace("/var/lib/relayd", str(tmp_path))
    )
    result = run_cli("check-config", flag, str(config))
    assert result.returncode == 0, result.stderr


def test_the_low_ports_drop_in_makes_the_capability_reachable(tmp_path: Path) -> None:
    """Issue 15: port 25 needs CAP_NET_BIND_SERVICE, which PrivateUsers=yes makes
    unreachable; the README's drop-in grants it and turns PrivateUsers off, and the
    unit with it still verifies, at the score the README gives."""
    needs_analyze()
    assert ANALYZE is not None
    command = relayd_command()
    if len(command) != 1:
        pytest.skip("relayd is not installed as a script")
    unit = tmp_path / "relayd.service"
    unit.write_text(UNIT.read_text().replace("/usr/local/bin/relayd", command[0]))
    drop_in = REPO_ROOT / "systemd" / "relayd-low-ports.conf"
    (tmp_path / "relayd.service.d").mkdir()
    (tmp_path / "relayd.service.d" / "low-ports.conf").write_text(drop_in.read_text())
    settings = re.findall(r"^(\w+)=(.*)$", drop_in.read_text(), re.MULTILINE)
    assert settings == [
        ("CapabilityBoundingSet", "CAP_NET_BIND_SERVICE"),
        ("AmbientCapabilities", "CAP_NET_BIND_SERVICE"),
        ("PrivateUsers", "no"),
    ]
    verify = subprocess.run(
        [ANALYZE, "verify", str(unit)], capture_output=True, text=True, check=False
    )
    assert verify.returncode == 0 and verify.stderr.strip() == "", verify.stderr
    security = subprocess.run(
        [ANALYZE, "security", "--offline=yes", str(unit)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert re.search(r"✗ PrivateUsers=", security.stdout), security.stdout  # read, and off
    match = re.search(r"Overall exposure level for relayd.service: (\d+\.\d)", security.stdout)
    assert match, security.stdout
    readme = (REPO_ROOT / "README.md").read_text()
    assert f"`systemd-analyze\nsecurity` scores the unit {match.group(1)}." in readme
    assert "low-ports.conf" in readme


def test_the_readme_installs_the_documentation_the_unit_names() -> None:
    (documentation,) = unit_value("Documentation")
    path = documentation.removeprefix("file://")
    readme = (REPO_ROOT / "README.md").read_text()
    assert re.search(rf"install .*README\.md {re.escape(path)}", readme)
