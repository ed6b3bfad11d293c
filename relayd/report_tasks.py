"""The daemon's report side tasks: the late-bounce poller and the notice digests (with the
queue checks: backlog and bounce rate).

Both run as named side tasks of the daemon. On a store with leadership (PostgreSQL) each
runs only on the node that leads its name ("bounces", "notices"), asked before every round,
so when the leader dies the next node to ask takes over. Without leadership (SQLite, one
node) they simply run; the poller then uses IMAP IDLE where the server has it.
"""

from __future__ import annotations

import asyncio
from collections import deque

from relayd.bounce_reports import enqueue_report
from relayd.bounce_store import QueueBounceStore
from relayd.bounces import BouncePoller, ImapSettings
from relayd.clock import Clock
from relayd.config import Config
from relayd.config_reports import BouncesImapConfig, NotificationsConfig
from relayd.logs import get_logger
from relayd.metrics import queue_depth
from relayd.notify import NoticeKind, Notifier, NotifySettings, render_notice
from relayd.store.base import Leadership, Store
from relayd.types import PENDING_STATES, RecipientState, new_queue_id
from relayd.units import format_duration

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
            grace={NoticeKind.UPSTREAM_UNREACHABLE: n.unreachable_after},
        )
    return Notifier(sink, settings), sink


class QueueWatch:
    """queue_backlog and bounce_rate, measured from the store at every check.

    Backlog: the oldest pending message is older than notifications.backlog_age, or more
    than backlog_depth recipients wait. Bounce rate: more than notifications.bounce_rate
    recipients became failed or bounced within digest_interval (the growth of their count
    since the last sample at least that old). Each is cleared when back under.
    """

    def __init__(self, notifier: Notifier, notifications: NotificationsConfig) -> None:
        self.notifier = notifier
        self.n = notifications
        self._failures: deque[tuple[float, int]] = deque()  # (when, failed + bounced)

    async def check(self, store: Store, now: float) -> None:
        depth = await queue_depth(store)
        pending = sum(depth.counts[state] for state in PENDING_STATES)
        oldest = depth.oldest_pending
        detail = f"{pending} recipients wait"
        if oldest is not None:
            detail += f"; the oldest message has waited {format_duration(now - oldest)}"
        age_key = f"oldest message older than {format_duration(self.n.backlog_age)}"
        self._set(
            NoticeKind.QUEUE_BACKLOG,
            age_key,
            depth.oldest_age(now) > self.n.backlog_age,
            detail,
            pending,
            now,
        )
        depth_key = f"more than {self.n.backlog_depth} recipients waiting"
        self._set(
            NoticeKind.QUEUE_BACKLOG,
            depth_key,
            pending > self.n.backlog_depth,
            detail,
            pending,
            now,
        )
        failed = depth.counts[RecipientState.FAILED] + depth.counts[RecipientState.BOUNCED]
        recent = self._recent_failures(failed, now)
        period = format_duration(self.n.digest_interval)
        rate_key = f"more than {self.n.bounce_rate} failed recipients in {period}"
        rate_detail = f"{recent} recipients failed or bounced in the last {period}"
        self._set(
            NoticeKind.BOUNCE_RATE, rate_key, recent > self.n.bounce_rate, rate_detail, recent, now
        )

    def _recent_failures(self, total: int, now: float) -> int:
        samples = self._failures
        samples.append((now, total))
        start = now - self.n.digest_interval
        while len(samples) > 1 and samples[1][0] <= start:
            samples.popleft()  # keep the newest sample at or before the period's start
        return max(0, total - samples[0][1])

    def _set(
        self, kind: NoticeKind, key: str, holds: bool, detail: str, affected: int, now: float
    ) -> None:
        if holds:
            self.notifier.raise_(kind, key, detail, affected=affected, now=now)
        else:
            self.notifier.clear(kind, key, now)


async def run_notices(notifier: Notifier, store: Store, clock: Clock, config: Config) -> None:
    """Check the queue and flush the notifier every few seconds (a digest at most every
    digest_interval)."""
    assert config.notifications is not None
    watch = QueueWatch(notifier, config.notifications)
    while True:
        try:
            if await _leads(store, "notices"):
                now = clock.now()
                await watch.check(store, now)
                await notifier.flush(now)
        except Exception as exc:  # the digest waits for the next flush
            log.error("notice_flush_failed", error=f"{type(exc).__name__}: {exc}")
        await clock.sleep(FLUSH_EVERY)
