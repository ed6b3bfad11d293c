"""`relayd check-config`: exit codes, the effective config, masked secrets, error lines."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

from tests.acceptance.process import child_env, run_cli

SECRET = "hunter2-acceptance-s3cret"

GOOD = textwrap.dedent(
    """\
    [server]
    listen = ["127.0.0.1:2599"]
    hostname = "relay.test"

    [queue]
    path = "queue.db"
    max_lifetime = "5d"
    retry = ["1m", "10m"]

    [upstreams.office]
    provider = "generic"
    host = "smtp.example.net"
    security = "starttls"
    username = "relay@example.net"
    auth = "password"
    password_file = "office.secret"
    rate_limits = ["3/minute", "200/hour"]
    """
)


def write(directory: Path, text: str, *, secret: bool = True) -> Path:
    if secret:
        path = directory / "office.secret"
        path.write_text(SECRET + "\n")
        path.chmod(0o600)
    config = directory / "relayd.toml"
    config.write_text(text)
    return config


def line_of(text: str, needle: str) -> int:
    """1-based line number of the first line containing `needle`."""
    return next(n for n, line in enumerate(text.splitlines(), 1) if needle in line)


def test_good_config_prints_the_effective_config_with_the_secret_masked(tmp_path: Path) -> None:
    config = write(tmp_path, GOOD)
    result = run_cli("check-config", "-c", str(config))
    assert result.returncode == 0, result.stderr
    assert SECRET not in result.stdout and SECRET not in result.stderr
    out = result.stdout
    assert f"effective configuration from {config}" in out
    assert "[upstreams.office]" in out
    assert re.search(r'^password = "\*+"', out, re.MULTILINE), out
    # Values as written, defaults filled in, relative paths resolved against the file's dir.
    assert 'max_lifetime = "5d"' in out
    assert 'rate_limits = ["3/minute", "200/hour"]' in out
    assert "port = 587" in out  # starttls' default port
    assert f'path = "{tmp_path / "queue.db"}"' in out
    assert f'password_file = "{tmp_path / "office.secret"}"' in out


def test_config_from_relayd_config_env(tmp_path: Path) -> None:
    config = write(tmp_path, GOOD)
    result = run_cli("check-config", env=child_env(RELAYD_CONFIG=str(config)))
    assert result.returncode == 0, result.stderr
    assert f"effective configuration from {config}" in result.stdout
    assert SECRET not in result.stdout


def test_bad_duration_names_the_key_and_line(tmp_path: Path) -> None:
    text = GOOD.replace('max_lifetime = "5d"', 'max_lifetime = "5x"')
    config = write(tmp_path, text)
    result = run_cli("check-config", "-c", str(config))
    assert result.returncode == 2
    assert result.stdout == ""
    line = line_of(text, "max_lifetime")
    assert result.stderr.strip() == (
        'relayd: config error: queue.max_lifetime: "5x" is not a duration '
        f'(use e.g. "300ms", "90s", "5m", "4h", "5d") (line {line})'
    )


def test_unknown_key_names_the_key_and_line(tmp_path: Path) -> None:
    text = GOOD.replace('max_lifetime = "5d"', 'max_lifetim = "5d"')
    config = write(tmp_path, text)
    result = run_cli("check-config", "-c", str(config))
    assert result.returncode == 2
    assert result.stdout == ""
    line = line_of(text, "max_lifetim")
    assert result.stderr.strip() == (
        f"relayd: config error: queue.max_lifetim: unknown key (line {line})"
    )


def test_unknown_key_in_an_upstream_table(tmp_path: Path) -> None:
    text = GOOD + 'hots = "smtp.example.net"\n'
    config = write(tmp_path, text)
    result = run_cli("check-config", "-c", str(config))
    assert result.returncode == 2
    line = line_of(text, "hots")
    assert re.fullmatch(
        rf"relayd: config error: upstreams\.office\.hots: unknown key \(line {line}\)\n",
        result.stderr,
    ), result.stderr


def test_missing_config_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope" / "relayd.toml"
    result = run_cli("check-config", "-c", str(missing))
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.startswith("relayd: ")
    assert str(missing) in result.stderr
    assert "No such file or directory" in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_password_file_is_a_config_error_without_traceback(tmp_path: Path) -> None:
    config = write(tmp_path, GOOD, secret=False)
    result = run_cli("check-config", "-c", str(config))
    assert result.returncode == 2
    line = line_of(GOOD, "password_file")
    assert result.stderr.startswith("relayd: config error: upstreams.office.password_file: ")
    assert f"(line {line})" in result.stderr
    assert "Traceback" not in result.stderr
