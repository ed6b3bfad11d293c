"""Intake processes for `server.workers > 1`: accepting mail on more than one core.

With `workers = N` the daemon starts N intake-only children. They listen on the same
addresses with SO_REUSEPORT, so the kernel spreads new connections over them, and each
commits to the shared queue, whose wake-up socket tells the dispatcher at once. The main
process accepts no mail: it delivers, serves [admin] and runs the periodic jobs. Keeping
delivery out of the intake processes is what makes the split pay: its store writes (leases
and outcomes, which need no fsync) no longer queue behind intake's fsynced commits in one
writer, and delivery's Python work no longer holds up intake's SQLite thread.

Each child reports to the main process on a pipe, one line at a time: `ready` once it
listens, then every second its accepted-message totals per upstream (JSON), which the main
process adds to /metrics. The daemon is ready (READY=1, /readyz) when every child is. A
child whose pipe breaks (the main process was killed) stops.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import Callable, Mapping
from contextlib import suppress

from relayd import metrics
from relayd.config.model import Config
from relayd.errors import RelaydError
from relayd.logs import get_logger

log = get_logger("workers")

# Variables that belong to the main process only: systemd talks to it, not to its children.
_MAIN_ONLY = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS", "LISTEN_PID")
REPORT_FD = "RELAYD_REPORT_FD"  # the child's end of its report pipe
REPORT_INTERVAL = 1.0  # seconds between a child's reports
KILL_WAIT = 5.0  # seconds to reap the children SIGKILLed after shutdown_timeout + 1


def check_workers(config: Config) -> None:
    """Several processes can only share fixed ports, read from a config file."""
    if config.server.workers <= 1:
        return
    if config.source is None:
        raise RelaydError("server.workers > 1 needs the daemon started with a config file")
    if any(listen.rsplit(":", 1)[-1] == "0" for listen in config.server.listen):
        raise RelaydError("server.workers > 1 needs fixed ports in server.listen (not :0)")


class IntakeWorkers:
    """The main process's side: starts the children, follows their reports, reaps them."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.ready = asyncio.Event()  # every child listens
        self.children: list[asyncio.subprocess.Process] = []
        self.shutdown_timeout = config.queue.shutdown_timeout  # a reload may change it
        self._ready_pids: set[int] = set()
        self._reload_pending: set[int] = set()  # SIGHUP for when these children are ready

    def listening(self) -> list[str]:
        """The configured addresses while every child is ready and running, else none."""
        running = all(child.returncode is None for child in self.children)
        return list(self.config.server.listen) if self.ready.is_set() and running else []

    def reload(self, config: Config) -> None:
        """Pass a reload on: SIGHUP to every worker, which reads the file itself. One still
        starting gets it once it is ready: until its handler is in place SIGHUP kills it."""
        self.shutdown_timeout = config.queue.shutdown_timeout
        for child in self.children:
            if child.pid in self._ready_pids:
                _signal(child, signal.SIGHUP)
            else:
                self._reload_pending.add(child.pid)

    async def run(self) -> None:
        """Run the children until cancelled; a child that dies is a failure of the daemon
        (systemd's Restart= then restarts the whole service)."""
        env = {key: value for key, value in os.environ.items() if key not in _MAIN_ONLY}
        # -P: not the working directory first on sys.path, where a `relayd` folder (a source
        # checkout) would be imported instead of the installed package.
        command = [sys.executable, "-P", "-m", "relayd", "run", "--intake-only"]
        command += ["-c", str(self.config.source)]
        followers: list[asyncio.Task[None]] = []
        try:
            for _ in range(self.config.server.workers):
                read_fd, write_fd = os.pipe()
                try:
                    child = await asyncio.create_subprocess_exec(
                        *command, env={**env, REPORT_FD: str(write_fd)}, pass_fds=(write_fd,)
                    )
                except BaseException:
                    os.close(read_fd)
                    raise
                finally:
                    os.close(write_fd)
                self.children.append(child)
                followers.append(asyncio.create_task(self._follow(child, read_fd)))
            log.info("intake_workers_started", pids=[child.pid for child in self.children])
            exits = [asyncio.ensure_future(child.wait()) for child in self.children]
            done, _ = await asyncio.wait(exits, return_when=asyncio.FIRST_COMPLETED)
            codes = [task.result() for task in done]
            raise RelaydError(f"an intake worker exited (code {codes[0]})")
        finally:
            # Stop the children first: a child whose report pipe closes stops as an orphan.
            await _stop(self.children, self.shutdown_timeout)
            for follower in followers:
                follower.cancel()

    async def _follow(self, child: asyncio.subprocess.Process, read_fd: int) -> None:
        """Read one child's reports until its pipe closes."""
        reader = asyncio.StreamReader()
        pipe = os.fdopen(read_fd, "rb", buffering=0)  # closes read_fd when it is closed
        transport: asyncio.BaseTransport | None = None
        counted: dict[str, int] = {}
        try:
            protocol = asyncio.StreamReaderProtocol(reader)
            transport, _ = await asyncio.get_running_loop().connect_read_pipe(
                lambda: protocol, pipe
            )
            async for line in reader:
                self._report(child, line, counted)
        finally:
            if transport is not None:
                transport.close()
            else:
                pipe.close()

    def _report(
        self, child: asyncio.subprocess.Process, line: bytes, counted: dict[str, int]
    ) -> None:
        pid = child.pid
        if line == b"ready\n":
            self._ready_pids.add(pid)
            if len(self._ready_pids) == self.config.server.workers:
                self.ready.set()
            if pid in self._reload_pending:
                self._reload_pending.discard(pid)
                _signal(child, signal.SIGHUP)
            return
        try:
            reported = json.loads(line)["accepted"].items()
            totals = {str(upstream): int(total) for upstream, total in reported}
        except (ValueError, KeyError, TypeError, AttributeError):
            log.warning("intake_worker_report_unreadable", pid=pid)
            return
        for upstream, total in totals.items():
            if total > counted.get(upstream, 0):
                metrics.accepted(upstream, total - counted.get(upstream, 0))
                counted[upstream] = total


async def report_to_main(environ: Mapping[str, str], main_gone: Callable[[], None]) -> None:
    """In a child: say `ready`, then send the accepted totals every second. They are
    cumulative, so a report the pipe had no room for is made good by the next one; and a
    write is how the child finds out that the main process is gone."""
    if REPORT_FD not in environ:
        return
    fd = int(environ[REPORT_FD])
    os.set_blocking(fd, False)
    line = b"ready\n"
    try:
        while True:
            try:
                os.write(fd, line)
            except BlockingIOError:
                pass  # a full pipe (the main process is busy): the next report says it all
            except BrokenPipeError:
                log.error("intake_worker_orphaned", why="the main process is gone; stopping")
                main_gone()
                return
            await asyncio.sleep(REPORT_INTERVAL)
            line = json.dumps({"accepted": metrics.accepted_totals()}).encode() + b"\n"
    finally:
        os.close(fd)


def _signal(child: asyncio.subprocess.Process, sig: int) -> None:
    if child.returncode is None:
        with suppress(ProcessLookupError):
            child.send_signal(sig)


async def _stop(children: list[asyncio.subprocess.Process], timeout: float) -> None:
    """SIGTERM (the workers finish their SMTP transactions), then SIGKILL after `timeout`."""
    running = [child for child in children if child.returncode is None]
    for child in running:
        _signal(child, signal.SIGTERM)
    if not running:
        return
    waits = [asyncio.ensure_future(child.wait()) for child in running]
    _, pending = await asyncio.wait(waits, timeout=timeout + 1)
    for child in running:
        _signal(child, signal.SIGKILL)
    if pending:
        await asyncio.wait(pending, timeout=KILL_WAIT)
