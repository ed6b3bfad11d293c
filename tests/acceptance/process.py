"""`relayd` as a real subprocess: config files, start/stop, the JSON log it writes to stderr.

The daemon's stderr goes to a file (one per start), never to a pipe nobody reads, so a chatty
daemon cannot block on a full pipe and the test can poll the log for events while its own
event loop keeps serving the fake upstream. Waiting is always polling a condition with a
deadline: the process's exit, a log event, a port that accepts.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
POLL = 0.02


def relayd_command() -> list[str]:
    """The installed `relayd` entry point beside this interpreter, else `python -m relayd`."""
    script = Path(sys.executable).parent / "relayd"
    if script.exists():
        return [str(script)]
    found = shutil.which("relayd")
    return [found] if found else [sys.executable, "-m", "relayd"]


def free_port() -> int:
    """A port nobody listens on now, for configs that must survive a restart.

    Chosen below the kernel's ephemeral range: a port from bind(0) is ephemeral, and an
    outgoing connection (the daemon's own, to the fake upstream) may take it before the
    daemon binds it.
    """
    for _ in range(200):
        port = random.randint(20000, 30000)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port in 20000-30000")


def child_env(**extra: str) -> dict[str, str]:
    """The environment of a relayd child: no RELAYD_* or NOTIFY_SOCKET unless given."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("RELAYD_") and key != "NOTIFY_SOCKET"
    }
    env.update(extra)
    return env


QUEUE_DEFAULTS = {
    "retry": '["200ms", "400ms"]',
    "lease_time": '"3s"',
    "shutdown_timeout": '"5s"',
}
UPSTREAM_DEFAULTS = {
    "timeout": '"3s"',
    "connect_timeout": '"2s"',
}


def _table(values: dict[str, str]) -> str:
    return "\n".join(f"{key} = {value}" for key, value in values.items())


def write_config(
    directory: Path,
    *,
    port: int,
    upstream_port: int,
    queue: dict[str, str] | None = None,
    upstream: dict[str, str] | None = None,
    name: str = "relayd.toml",
) -> Path:
    """A JSON-logging config: intake on 127.0.0.1:`port`, one plaintext generic upstream.

    `queue` and `upstream` override keys of those tables; values are TOML literals.
    """
    queue_keys = _table({**QUEUE_DEFAULTS, **(queue or {})})
    upstream_keys = _table({**UPSTREAM_DEFAULTS, **(upstream or {})})
    text = f"""\
[server]
listen = ["127.0.0.1:{port}"]
hostname = "relay.test"

[queue]
path = "{directory / "queue.db"}"
{queue_keys}

[log]
format = "json"
level = "info"

[upstreams.main]
provider = "generic"
host = "127.0.0.1"
port = {upstream_port}
security = "none"
auth = "none"
{upstream_keys}
"""
    path = directory / name
    path.write_text(text)
    return path


def run_cli(
    *args: str,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 30.0,
    input_text: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a short relayd command (check-config, queue ...) to completion; `input_text` is
    its standard input (sendmail)."""
    return subprocess.run(
        [*relayd_command(), *args],
        input=input_text,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env=env if env is not None else child_env(),
        check=False,
    )


async def arun_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """run_cli in a thread, so the test's loop (and its fake upstream) keeps running."""
    return await asyncio.to_thread(run_cli, *args, cwd=cwd)


@dataclass
class DaemonProcess:
    """One `relayd run` child; `events()` are the JSON log lines it wrote so far."""

    proc: subprocess.Popen[bytes]
    log_path: Path
    port: int
    _stderr: Any = field(repr=False)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def events(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log_text().splitlines():
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                if isinstance(record, dict):
                    out.append(record)
        return out

    def event_names(self) -> list[str]:
        return [str(e.get("event")) for e in self.events()]

    def find(self, name: str, **fields: object) -> list[dict[str, Any]]:
        return [
            e
            for e in self.events()
            if e.get("event") == name and all(e.get(k) == v for k, v in fields.items())
        ]

    async def wait_event(
        self, name: str, timeout: float = 10.0, count: int = 1, **fields: object
    ) -> list[dict[str, Any]]:
        """Wait until `count` events `name` (with `fields`) were logged; fail if it dies."""
        found: list[dict[str, Any]] = []

        def seen() -> bool:
            nonlocal found
            found = self.find(name, **fields)
            return len(found) >= count

        await self.until(seen, timeout, f"{count} x {name!r} {fields or ''}")
        return found

    async def until(self, predicate: Callable[[], object], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"relayd exited with {self.proc.returncode} while waiting for {what}:\n"
                    + self.log_text()[-4000:]
                )
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"timed out after {timeout}s waiting for {what}:\n" + self.log_text()[-4000:]
                )
            await asyncio.sleep(POLL)

    async def wait_started(self, timeout: float = 15.0) -> dict[str, Any]:
        (started,) = await self.wait_event("started", timeout)
        return started

    def send_signal(self, sig: signal.Signals) -> None:
        self.proc.send_signal(sig)

    async def wait_exit(self, timeout: float) -> int:
        """The exit code, polled without blocking the loop; fails if it takes longer."""
        deadline = time.monotonic() + timeout
        while (code := self.proc.poll()) is None:
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"relayd did not exit within {timeout}s:\n" + self.log_text()[-4000:]
                )
            await asyncio.sleep(POLL)
        self._close_log()
        return code

    async def terminate(self, timeout: float = 10.0) -> tuple[int, float]:
        """SIGTERM and wait: (exit code, seconds it took)."""
        started = time.monotonic()
        self.send_signal(signal.SIGTERM)
        code = await self.wait_exit(timeout)
        return code, time.monotonic() - started

    async def kill(self) -> None:
        """SIGKILL (a crash): nothing runs in the daemon after this."""
        self.proc.kill()
        await self.wait_exit(10.0)

    def reap(self) -> None:
        """Teardown: terminate, then kill if it lingers; always wait so nothing is left."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._close_log()

    def _close_log(self) -> None:
        if not self._stderr.closed:
            self._stderr.close()


class Launcher:
    """Starts `relayd run -c CONFIG` children and reaps every one of them at teardown."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.started: list[DaemonProcess] = []

    def start(
        self,
        config: Path,
        port: int,
        env: dict[str, str] | None = None,
        command: list[str] | None = None,
    ) -> DaemonProcess:
        """`relayd run -c CONFIG` (or `command` + `run -c CONFIG`), stderr to a log file."""
        log_path = self.directory / f"relayd-{len(self.started) + 1}.log"
        stderr = log_path.open("wb")
        proc = subprocess.Popen(
            [*(command or relayd_command()), "run", "-c", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=stderr,
            stderr=stderr,
            env=env if env is not None else child_env(),
            cwd=self.directory,
        )
        daemon = DaemonProcess(proc, log_path, port, stderr)
        self.started.append(daemon)
        return daemon

    async def start_ready(
        self, config: Path, port: int, env: dict[str, str] | None = None
    ) -> DaemonProcess:
        daemon = self.start(config, port, env)
        await daemon.wait_started()
        return daemon

    def reap_all(self) -> None:
        for daemon in self.started:
            daemon.reap()


@contextlib.contextmanager
def launcher(directory: Path) -> Iterator[Launcher]:
    starter = Launcher(directory)
    try:
        yield starter
    finally:
        starter.reap_all()
