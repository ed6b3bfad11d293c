"""The systemd heartbeat: WATCHDOG=1 when the unit asks for it, STATUS= with the queue depth.

systemd sets WATCHDOG_USEC (and WATCHDOG_PID) when the unit has WatchdogSec=; the daemon must
then send WATCHDOG=1 more often than that, and sd_watchdog_enabled(3) recommends every half
interval. The ping comes from a task in the daemon's event loop (run_watchdog), so a wedged
loop stops it and systemd restarts the service. STATUS= is what `systemctl status relayd`
shows; it is a periodic schedule job (update_status, daemon/schedule.py), so a slow store delays a
STATUS update but never a watchdog ping.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping

from relayd.daemon.sdnotify import notify
from relayd.errors import StoreError
from relayd.logs import get_logger
from relayd.store.base import QueueStats
from relayd.types import QueueDepth, RecipientState
from relayd.units import format_age

log = get_logger("heartbeat")

STATUS_TIMEOUT = 5.0  # a store slower than this skips one STATUS update, never the ping


def watchdog_interval(environ: Mapping[str, str]) -> float | None:
    """Half of WATCHDOG_USEC in seconds, or None when the watchdog is off or meant for another
    process (WATCHDOG_PID names a different pid)."""
    usec = environ.get("WATCHDOG_USEC", "")
    pid = environ.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0 or (pid and pid != str(os.getpid())):
        return None
    return int(usec) / 2 / 1_000_000


def status_line(depth: QueueDepth, now: float) -> str:
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


async def update_status(store: QueueStats, now: float, environ: Mapping[str, str]) -> bool:
    """One STATUS= update (a schedule job, when NOTIFY_SOCKET is set); whether it was sent.

    Bounded by STATUS_TIMEOUT: a slow store skips this update, logged, and the next one
    tries again (the job must end, or the scheduler would skip every later run)."""
    try:
        depth = await asyncio.wait_for(store.depth(), STATUS_TIMEOUT)
    except (StoreError, TimeoutError) as exc:
        log.warning("status_unavailable", error=str(exc) or type(exc).__name__)
        return False
    return notify("STATUS=" + status_line(depth, now), dict(environ))


async def run_watchdog(interval: float, environ: Mapping[str, str]) -> None:
    """Forever: WATCHDOG=1 every `interval` seconds (watchdog_interval()).

    A loop of its own, not a schedule job: the ping should measure one thing, that the event
    loop still runs, with nothing between the two (a scheduler job would go through the
    scheduler's timer and executor too), and a ping the loop could not send on time must be
    sent as soon as it can, where a job late by more than misfire_grace_time is dropped.
    Both stop when the loop is wedged. asyncio.sleep, not the injected clock: systemd's
    deadline is real time."""
    env = dict(environ)
    while True:
        notify("WATCHDOG=1", env)
        await asyncio.sleep(interval)
