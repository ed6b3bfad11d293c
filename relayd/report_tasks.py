"""The daemon's report side tasks: the late-bounce poller and the notice digests.

Both run as named side tasks of the daemon. On a store with leadership (PostgreSQL) each
runs only on the node that leads its name ("bounces", "notices"), asked before every round,
so when the leader dies the next node to ask takes over. Without leadership (SQLite, one
node) they simply run; the poller then uses IMAP IDLE where the server has it.
"""

from __future__ import annotations

import asyncio

from relayd.bounce_reports import enqueue_report
from relayd.bounce_store import QueueBounceStore
from relayd.bounces import BouncePoller, ImapSettings
from relayd.clock import Clock
from relayd.config import Config
from relayd.config_reports import BouncesImapConfig
from relayd.logs import get_logger
from relayd.notify import Notifier, NotifySettings, render_notice
from relayd.store.base import Leadership, Store
from relayd.types import new_queue_id

log = get_logger("report_tasks")
FLUSH_EVERY = 5.0  # seconds between notice flushes (a digest at most every digest_interval)


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


async def _leads(store: Store, name: str) -> bool:
    return await store.try_lead(name) if isinstance(store, Leadership) else True


async def run_bounce_poller(config: Config, store: Store, clock: Clock) -> None:
    """Poll [bounces.imap] for late bounces until cancelled."""
    assert config.bounces is not None
    assert config.bounces.imap is not None
    settings = imap_settings(config.bounces.imap)
    poller = BouncePoller(settings, QueueBounceStore(config, store), clock)
    if not isinstance(store, Leadership):
        await poller.run(asyncio.Event())
        return
    while True:
        try:
            if await _leads(store, "bounces"):
                await poller.poll_once(clock.now())
        except Exception as exc:  # logged and retried at the next interval
            log.error("bounce_poll_failed", error=f"{type(exc).__name__}: {exc}")
        await clock.sleep(settings.poll_interval)


class QueueNoticeSink:
    """A NoticeSink: the rendered notice, from notifications.from to notifications.mailbox,
    through the queue (via notifications.via when set)."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.store: Store | None = None  # set when the daemon has opened the store

    async def enqueue_notice(self, subject: str, body: str, now: float) -> None:
        notifications = self.config.notifications
        if notifications is None or self.store is None:
            raise RuntimeError("no notification mailbox or store")
        host = self.config.server.hostname
        sender = notifications.from_ or f"relayd@{host}"
        raw = render_notice(
            subject,
            body,
            from_addr=sender,
            to=notifications.mailbox,
            now=now,
            message_id=f"<relayd.notice.{new_queue_id(now)}@{host}>",
        )
        recipients = (notifications.mailbox,)
        await enqueue_report(
            self.config, self.store, raw, recipients, now, mail_from=sender, via=notifications.via
        )


def make_notifier(config: Config) -> tuple[Notifier, QueueNoticeSink]:
    sink = QueueNoticeSink(config)
    n = config.notifications
    settings = NotifySettings(hostname=config.server.hostname)
    if n is not None:
        settings = NotifySettings(
            hostname=config.server.hostname,
            digest_interval=n.digest_interval,
            remind_after=n.remind_after,
        )
    return Notifier(sink, settings), sink


async def run_notices(notifier: Notifier, store: Store, clock: Clock) -> None:
    """Flush the notifier every few seconds (it sends a digest at most every interval)."""
    while True:
        try:
            if await _leads(store, "notices"):
                await notifier.flush(clock.now())
        except Exception as exc:  # the digest waits for the next flush
            log.error("notice_flush_failed", error=f"{type(exc).__name__}: {exc}")
        await clock.sleep(FLUSH_EVERY)
