"""The systemd heartbeat: WATCHDOG=1 when the unit asks for it, STATUS= with the queue depth.

systemd sets WATCHDOG_USEC (and WATCHDOG_PID) when the unit has WatchdogSec=; the daemon must
then send WATCHDOG=1 more often than that, and sd_watchdog_enabled(3) recommends every half
interval. The ping comes from this task in the daemon's event loop, so a wedged loop stops it
and systemd restarts the service. STATUS= is what `systemctl status relayd` shows.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping

from relayd import metrics
from relayd.clock import Clock
from relayd.errors import StoreError
from relayd.logs import get_logger
from relayd.sdnotify import notify
from relayd.store.base import Store
from relayd.types import RecipientState
from relayd.units import format_age

log = get_logger("heartbeat")

STATUS_INTERVAL = 15.0  # seconds between STATUS= updates
STATUS_TIMEOUT = 5.0  # a store slower than this skips one STATUS update, never the ping


def watchdog_interval(environ: Mapping[str, str]) -> float | None:
    """Half of WATCHDOG_USEC in seconds, or None when the watchdog is off or meant for another
    process (WATCHDOG_PID names a different pid)."""
    usec = environ.get("WATCHDOG_USEC", "")
    pid = environ.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0 or (pid and pid != str(os.getpid())):
        return None
    return int(usec) / 2 / 1_000_000


def status_line(depth: metrics.Depth, now: float) -> str:
    """e.g. "queue: 12 queued, 3 deferred, 1 held; oldest 5m"."""
    counts = depth.counts
    parts = [
        f"{counts.get(state, 0)} {state.value}"
        for state in (RecipientState.QUEUED, RecipientState.DEFERRED, RecipientState.HELD)
    ]
    text = "queue: " + ", ".join(parts)
    if depth.oldest_pending is not None:
        text += f"; oldest {format_age(depth.oldest_age(now))}"
    return text


async def run_heartbeat(
    store: Store, clock: Clock, environ: Mapping[str, str] | None = None
) -> None:
    """Forever: WATCHDOG=1 each watchdog half-interval, STATUS= every STATUS_INTERVAL.

    Two loops, so a slow store delays a STATUS update but never a watchdog ping."""
    env = dict(os.environ if environ is None else environ)
    if not env.get("NOTIFY_SOCKET"):
        # Nobody listens (Docker, a terminal, tests): idle until cancelled at shutdown.
        await asyncio.get_running_loop().create_future()
    watchdog = watchdog_interval(env)
    async with asyncio.TaskGroup() as group:
        if watchdog:
            group.create_task(_ping(watchdog, env), name="watchdog")
        group.create_task(_status(store, clock, env), name="status")


async def _ping(interval: float, env: dict[str, str]) -> None:
    while True:
        notify("WATCHDOG=1", env)
        await asyncio.sleep(interval)


async def _status(store: Store, clock: Clock, env: dict[str, str]) -> None:
    while True:
        try:
            depth = await asyncio.wait_for(metrics.queue_depth(store), STATUS_TIMEOUT)
        except (StoreError, TimeoutError) as exc:
            log.warning("status_unavailable", error=str(exc) or type(exc).__name__)
        else:
            notify("STATUS=" + status_line(depth, clock.now()), env)
        await asyncio.sleep(STATUS_INTERVAL)
