"""Extra intake processes for `server.workers > 1`: accepting mail on more than one core.

Every process listens on the same addresses with SO_REUSEPORT, so the kernel spreads new
connections over them; each commits to the shared queue, whose wake-up socket tells the
main process's dispatcher at once. The main process alone delivers, serves [admin] and runs
the periodic jobs. Intake metrics (/metrics) count only the main process's share.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from contextlib import suppress

from relayd.config import Config
from relayd.errors import RelaydError
from relayd.logs import get_logger

log = get_logger("workers")

# Variables that belong to the main process only: systemd talks to it, not to its children.
_MAIN_ONLY = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS", "LISTEN_PID")


def check_workers(config: Config) -> None:
    """Several processes can only share fixed ports, read from a config file."""
    if config.server.workers <= 1:
        return
    if config.source is None:
        raise RelaydError("server.workers > 1 needs the daemon started with a config file")
    if any(listen.rsplit(":", 1)[-1] == "0" for listen in config.server.listen):
        raise RelaydError("server.workers > 1 needs fixed ports in server.listen (not :0)")


async def supervise_intake_workers(config: Config) -> None:
    """Run `server.workers - 1` intake-only children until cancelled; a child that dies is
    a failure of the daemon (systemd's Restart= then restarts the whole service)."""
    env = {key: value for key, value in os.environ.items() if key not in _MAIN_ONLY}
    command = [sys.executable, "-m", "relayd", "run", "--intake-only", "-c", str(config.source)]
    children: list[asyncio.subprocess.Process] = []
    try:
        for _ in range(config.server.workers - 1):
            children.append(await asyncio.create_subprocess_exec(*command, env=env))
        log.info("intake_workers_started", pids=[child.pid for child in children])
        exits = [asyncio.ensure_future(child.wait()) for child in children]
        done, _ = await asyncio.wait(exits, return_when=asyncio.FIRST_COMPLETED)
        codes = [task.result() for task in done]
        raise RelaydError(f"an intake worker exited (code {codes[0]})")
    finally:
        await _stop(children, config.queue.shutdown_timeout)


async def _stop(children: list[asyncio.subprocess.Process], timeout: float) -> None:
    """SIGTERM (the workers finish their SMTP transactions), then SIGKILL after `timeout`."""
    running = [child for child in children if child.returncode is None]
    for child in running:
        with suppress(ProcessLookupError):
            child.send_signal(signal.SIGTERM)
    if not running:
        return
    waits = [asyncio.ensure_future(child.wait()) for child in running]
    _, pending = await asyncio.wait(waits, timeout=timeout + 1)
    for child in running:
        if child.returncode is None:
            with suppress(ProcessLookupError):
                child.kill()
    if pending:
        await asyncio.wait(pending, timeout=5)
