"""The report jobs: the late-bounce poll, the notice round (queue checks, then the digest)
and the disk check, as plain async functions of `now` that schedule.py runs periodically.

Leadership (PostgreSQL): the bounce poll and the queue-wide checks (QueueWatch: backlog,
bounce rate) run only on the node that leads their name ("bounces", "notices"), asked before
every round, so when the leader dies the next node to ask takes over. Every node flushes its
own Notifier, though: a condition only one node sees (its upstream login refused, its disk
filling) is mailed by that node, and the digest names it (server.hostname, notify.py).
Without leadership (SQLite, one node) every job simply runs.
"""

from __future__ import annotations

import asyncio
import shutil
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path

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
from relayd.units import format_duration, format_size

log = get_logger("report_tasks")

# shutil.disk_usage's shape: (total, used, free) bytes of the file system holding a path.
DiskUsage = Callable[[Path], tuple[int, int, int]]


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


def bounce_poller(config: Config, store: Store, clock: Clock) -> BouncePoller | None:
    """The [bounces.imap] poller, or None without that table."""
    if config.bounces is None or config.bounces.imap is None:
        return None
    return BouncePoller(imap_settings(config.bounces.imap), QueueBounceStore(config, store), clock)


def polls_with_idle(poller: BouncePoller, store: Store) -> bool:
    """Whether the poller runs as its own long-lived task (BouncePoller.run: one IMAP session
    that IDLEs between polls where the server offers it) rather than as a schedule job.

    Only on one node with `idle = true`: a leader's IDLE session would have to keep asking
    whether it still leads, so with leadership every poll is a short scheduled round."""
    return poller.settings.idle and not isinstance(store, Leadership)


async def poll_bounces(poller: BouncePoller, store: Store, now: float) -> None:
    """One scheduled poll round, on the node leading "bounces"; a failure is logged and the
    next round tries again."""
    if not await _leads(store, "bounces"):
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
    session itself keeps its start-up settings ([bounces.imap] needs a restart, reload.py)."""
    if isinstance(poller.store, QueueBounceStore):
        poller.store.config = config


class QueueNoticeSink:
    """A NoticeSink: the rendered notice, from notifications.from to notifications.mailbox,
    through the queue (via notifications.via when set)."""

    def __init__(self, config: Config) -> None:
        self.config = config  # replaced on reload (reconfigure_notices)
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


def notify_settings(config: Config) -> NotifySettings:
    n = config.notifications
    if n is None:
        return NotifySettings(hostname=config.server.hostname)
    return NotifySettings(
        hostname=config.server.hostname,
        digest_interval=n.digest_interval,
        remind_after=n.remind_after,
        grace={NoticeKind.UPSTREAM_UNREACHABLE: n.unreachable_after},
    )


def make_notifier(config: Config) -> tuple[Notifier, QueueNoticeSink]:
    sink = QueueNoticeSink(config)
    return Notifier(sink, notify_settings(config)), sink


def reconfigure_notices(notifier: Notifier, sink: QueueNoticeSink, config: Config) -> None:
    """A reload: the next digest goes to the new mailbox (from, via) on the new timing; the
    same Notifier keeps the conditions already raised."""
    sink.config = config
    notifier.reconfigure(notify_settings(config))


class QueueWatch:
    """queue_backlog and bounce_rate, measured from the store at every check.

    Backlog: the oldest pending message is older than notifications.backlog_age, or more
    than backlog_depth recipients wait. Bounce rate: more than notifications.bounce_rate
    recipients became failed or bounced within digest_interval (the growth of their count
    since the last sample at least that old). Each is cleared when back under.
    """

    def __init__(self, notifier: Notifier, notifications: NotificationsConfig) -> None:
        self.notifier = notifier
        self.n = notifications  # replaced on reload; the failure samples carry over
        self._failures: deque[tuple[float, int]] = deque()  # (when, failed + bounced)
        self._raised: set[tuple[NoticeKind, str]] = set()

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
        # The keys name the thresholds: one raised under a threshold a reload has changed is
        # no longer measured, so it ends here (the new key is raised if it holds).
        measured = {(NoticeKind.QUEUE_BACKLOG, age_key), (NoticeKind.QUEUE_BACKLOG, depth_key)}
        measured.add((NoticeKind.BOUNCE_RATE, rate_key))
        for kind, key in sorted(self._raised - measured):
            self.notifier.clear(kind, key, now)
            self._raised.discard((kind, key))

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
            self._raised.add((kind, key))
        else:
            self.notifier.clear(kind, key, now)
            self._raised.discard((kind, key))

    def release(self, now: float) -> None:
        """This node no longer leads "notices": its queue conditions are the new leader's
        to report, so clear them here (and forget the failure samples, now stale) rather
        than remind the operator of them from a node that no longer measures them."""
        for kind, key in sorted(self._raised):
            self.notifier.clear(kind, key, now)
        self._raised.clear()
        self._failures.clear()


class NoticeRound:
    """The notices job: the queue checks on the node leading "notices", then this node's
    digest (its own conditions and, on the leader, the queue's)."""

    def __init__(
        self, notifier: Notifier, store: Store, notifications: NotificationsConfig
    ) -> None:
        self.notifier = notifier
        self.store = store
        self.watch = QueueWatch(notifier, notifications)

    def reconfigure(self, notifications: NotificationsConfig) -> None:
        """A reload's thresholds, from the next round on."""
        self.watch.n = notifications

    async def __call__(self, now: float) -> None:
        try:
            if await _leads(self.store, "notices"):
                await self.watch.check(self.store, now)
            else:
                self.watch.release(now)
        except Exception as exc:  # the store: the checks wait for the next round, not the flush
            log.error("queue_check_failed", error=f"{type(exc).__name__}: {exc}")
        await self.notifier.flush(now)  # keeps a digest it cannot enqueue for the next one


def disk_paths(config: Config) -> list[Path]:
    """The local directories relayd writes to: the SQLite queue's and the transcripts'.
    A PostgreSQL queue's disk is the database server's (its DBA watches it)."""
    paths = [config.queue.path.parent] if config.queue.backend == "sqlite" else []
    if config.log.transcript_dir is not None:
        paths.append(config.log.transcript_dir)
    return paths


class DiskWatch:
    """disk_low: raised for each path whose file system has less than `minimum` bytes free
    (notifications.disk_free_min), cleared when it has that much again.

    The queue needs the space most: a full disk makes intake answer 451 and stalls every
    state change. `usage` is shutil.disk_usage; it runs in a thread, because statvfs on a
    hung network mount would otherwise block the event loop (and the watchdog with it)."""

    def __init__(
        self,
        notifier: Notifier,
        minimum: int,
        paths: Sequence[Path],
        usage: DiskUsage = shutil.disk_usage,
    ) -> None:
        self.notifier = notifier
        self.minimum = minimum
        self.paths = list(dict.fromkeys(paths))
        self.usage = usage

    def retarget(self, minimum: int, paths: Sequence[Path], now: float) -> None:
        """A reload's minimum and paths (none: the check is off). A path no longer watched
        has its disk_low cleared: nothing would ever clear it otherwise."""
        kept = list(dict.fromkeys(paths))
        for path in self.paths:
            if path not in kept:
                self.notifier.clear(NoticeKind.DISK_LOW, str(path), now)
        self.minimum, self.paths = minimum, kept

    async def check(self, now: float) -> None:
        for path in self.paths:
            try:
                total, _used, free = await asyncio.to_thread(self.usage, path)
            except OSError as exc:  # not there (yet): nothing to measure, nothing to clear
                log.warning("disk_check_failed", path=str(path), error=str(exc))
                continue
            if path not in self.paths:  # dropped by a reload while measured: retarget cleared it
                continue
            if free < self.minimum:
                detail = (
                    f"{format_size(free)} free of {format_size(total)} on the file system holding "
                    f"{path}; notifications.disk_free_min is {format_size(self.minimum)}"
                )
                self.notifier.raise_(NoticeKind.DISK_LOW, str(path), detail, now=now)
            else:
                self.notifier.clear(NoticeKind.DISK_LOW, str(path), now)
