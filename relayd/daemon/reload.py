"""SIGHUP: read the configuration file again and swap in what can change while running.

The file is validated completely first (config.load), so a reload is all or nothing: on any
error the running configuration stays, and `config_reload_failed` is logged with the error.
On success: routing, intake policy (networks, sizes, recipients), the retry schedule and
lifetimes, the log level and transcripts apply at once; an upstream whose settings changed
gets a new lane (delivery/lanes.py) without losing queued mail; [notifications] (the daemon's
_swap_config: the notice mailbox and timing, the notice round's and disk check's thresholds,
the jobs themselves) and [bounces] apart from its IMAP account apply too. What is bound or
opened at start (listen addresses, the queue backend and path, the admin listener, the log
format, the [bounces.imap] session) is kept as it was and `config_reload_restart_needed`
names the keys.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from relayd import metrics
from relayd.config.model import Config, load
from relayd.delivery.lanes import LaneSet
from relayd.errors import ConfigError
from relayd.logs import get_logger
from relayd.notices.notifier import NoticeKind, Notifier

log = get_logger("reload")

# Keys (or whole tables) whose value is used once, at start: a change needs a restart.
# "bounces.imap": the poller and its IDLE session are built once (bounces/jobs.bounce_poller);
# any change to the table (server, account, password, folders, poll_interval, idle), or adding
# or removing it, waits for a restart. The rest of [bounces] is read per message.
RESTART_KEYS = (
    "server.listen",
    "server.workers",
    "server.tls_cert",
    "server.tls_key",
    "queue.backend",
    "queue.path",
    "queue.dsn",
    "admin.listen",
    "log.format",
    "bounces.imap",
)


def _value(config: Config, dotted: str) -> object:
    """The value at a dotted key; None where an optional table on the way is absent."""
    value: object = config
    for name in dotted.split("."):
        value = getattr(value, name, None)
    return value


def restart_needed(running: Config, new: Config) -> list[str]:
    """The dotted keys in RESTART_KEYS whose new values differ from what runs (`running`: the
    configuration the daemon started with, not the file read last); names only, never a
    value, which may be a secret."""
    return [key for key in RESTART_KEYS if _value(running, key) != _value(new, key)]


def changed_upstreams(old: Config, new: Config) -> dict[str, list[str]]:
    """Upstream names added, changed and removed between two configurations."""
    return {
        "added": [name for name in new.upstreams if name not in old.upstreams],
        "changed": [
            name
            for name, upstream in new.upstreams.items()
            if name in old.upstreams and old.upstreams[name] != upstream
        ],
        "removed": [name for name in old.upstreams if name not in new.upstreams],
    }


async def reload_config(
    current: Config,
    lanes: LaneSet,
    swap: Callable[[Config], None],
    notifier: Notifier | None = None,
    started: Config | None = None,
) -> Config:
    """Load `current.source` again; on success `swap` it in, update the lanes, and return it;
    on failure log why, raise config_reload_failed with `notifier`, and return `current`.
    `started` is the configuration the daemon bound at start (default: `current`)."""
    path = current.source
    if path is None:
        log.error("config_reload_failed", error="the configuration was not read from a file")
        metrics.reload_result(False)
        return current
    key = str(path)
    try:
        new = await asyncio.to_thread(load, path)
    except (ConfigError, OSError) as exc:
        log.error("config_reload_failed", config=key, error=str(exc))
        metrics.reload_result(False)
        if notifier is not None:
            now = lanes.clock.now()
            notifier.raise_(NoticeKind.CONFIG_RELOAD_FAILED, key, str(exc), now=now)
        return current
    if notifier is not None:
        notifier.clear(NoticeKind.CONFIG_RELOAD_FAILED, key, lanes.clock.now())
    restart = restart_needed(started or current, new)
    upstreams = changed_upstreams(current, new)
    swap(new)
    await lanes.apply(new, new.queue.shutdown_timeout)
    log.info("config_reloaded", config=str(path), **upstreams)
    if restart:
        log.warning("config_reload_restart_needed", keys=restart)
    metrics.reload_result(True)
    return new


async def serve_reloads(requested: asyncio.Event, reload: Callable[[], Awaitable[None]]) -> None:
    """Forever: one reload per request (requests arriving during a reload make one more)."""
    while True:
        await requested.wait()
        requested.clear()
        await reload()
