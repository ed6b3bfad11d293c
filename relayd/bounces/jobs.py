"""The late-bounce poll as the daemon runs it: the poller built from [bounces.imap], one
scheduled round on the node leading "bounces", and what a reload changes.

Leadership (PostgreSQL): the poll runs only on the node that leads "bounces", asked before
every round, so when the leader dies the next node to ask takes over. Without leadership
(SQLite, one node) every round simply runs.
"""

from __future__ import annotations

from relayd.bounces.poller import BouncePoller, ImapSettings
from relayd.bounces.store import BounceQueue, QueueBounceStore
from relayd.clock import Clock
from relayd.config.model import Config
from relayd.config.reports import BouncesImapConfig
from relayd.logs import get_logger
from relayd.store.base import Leadership, leads

log = get_logger("report_tasks")


def imap_settings(imap: BouncesImapConfig) -> ImapSettings:
    assert imap.host is not None  # filled at load
    assert imap.password is not None
    return ImapSettings(
        host=imap.host,
        username=imap.username,
        password=imap.password.get_secret_value(),
        port=imap.port,
        folder=imap.folder,
        move_to=imap.move_to,
        tls=imap.tls,
        tls_ca_file=str(imap.tls_ca_file) if imap.tls_ca_file else None,
        poll_interval=imap.poll_interval,
        timeout=imap.timeout,
        lookback=imap.lookback,
        idle=imap.idle,
    )


def bounce_poller(config: Config, store: BounceQueue, clock: Clock) -> BouncePoller | None:
    """The [bounces.imap] poller, or None without that table."""
    if config.bounces is None or config.bounces.imap is None:
        return None
    return BouncePoller(imap_settings(config.bounces.imap), QueueBounceStore(config, store), clock)


def polls_with_idle(poller: BouncePoller, store: object) -> bool:
    """Whether the poller runs as its own long-lived task (BouncePoller.run: one IMAP session
    that IDLEs between polls where the server offers it) rather than as a schedule job.

    Only on one node with `idle = true`: a leader's IDLE session would have to keep asking
    whether it still leads, so with leadership every poll is a short scheduled round."""
    return poller.settings.idle and not isinstance(store, Leadership)


async def poll_bounces(poller: BouncePoller, store: object, now: float) -> None:
    """One scheduled poll round, on the node leading "bounces"; a failure is logged and the
    next round tries again."""
    if not await leads(store, "bounces"):
        return
    try:
        await poller.poll_once(now)
    except Exception as exc:  # the IMAP server or the store: retried at the next round
        log.error(
            "bounce_poll_failed",
            account=poller.settings.account,
            error=f"{type(exc).__name__}: {exc}",
        )


def retarget_poller(poller: BouncePoller, config: Config) -> None:
    """A reload: matched reports go to the new bounces.mailbox over the new routes. The IMAP
    session itself keeps its start-up settings ([bounces.imap] needs a restart))."""
    if isinstance(poller.store, QueueBounceStore):
        poller.store.config = config
