"""The watches that raise and clear notices: the queue (backlog, bounce rate) and the disk,
as plain async functions of `now` that the daemon's schedule runs.

Leadership (PostgreSQL): the queue-wide checks run only on the node that leads "notices",
asked before every round and again before the round's digest: a node that lost the lead
meanwhile (frozen, cut off) drops what it measured without a word (neither "problem" nor
"resolved": the new leader measures and reports it). Every node flushes its own Notifier,
though: a condition only one node sees (its upstream login refused, its disk filling) is
mailed by that node, and the digest names it (server.hostname, notices/notifier.py).
"""

from __future__ import annotations

import asyncio
import shutil
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path

from relayd.config.model import Config
from relayd.config.reports import NotificationsConfig
from relayd.logs import get_logger
from relayd.notices.notifier import NoticeKind, Notifier
from relayd.store.base import QueueStats, leads
from relayd.types import PENDING_STATES, RecipientState
from relayd.units import format_duration, format_size

log = get_logger("report_tasks")

# shutil.disk_usage's shape: (total, used, free) bytes of the file system holding a path.
DiskUsage = Callable[[Path], tuple[int, int, int]]


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

    async def check(self, store: QueueStats, now: float) -> None:
        depth = await store.depth()
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
        """Nobody measures the queue any more (a reload removed [notifications]): its
        conditions are over as far as this node can tell."""
        for kind, key in sorted(self._raised):
            self.notifier.clear(kind, key, now)
        self._raised.clear()
        self._failures.clear()

    def hand_over(self) -> None:
        """This node no longer leads "notices": its queue conditions are the new leader's to
        report, so forget them here (and the failure samples, now stale) without a
        "resolved": the backlog it saw is most likely still there."""
        for kind, key in sorted(self._raised):
            self.notifier.forget(kind, key)
        self._raised.clear()
        self._failures.clear()


class NoticeRound:
    """The notices job: the queue checks on the node leading "notices", then this node's
    digest (its own conditions and, on the leader, the queue's)."""

    def __init__(
        self, notifier: Notifier, store: QueueStats, notifications: NotificationsConfig
    ) -> None:
        self.notifier = notifier
        self.store = store
        self.watch = QueueWatch(notifier, notifications)

    def reconfigure(self, notifications: NotificationsConfig) -> None:
        """A reload's thresholds, from the next round on."""
        self.watch.n = notifications

    async def __call__(self, now: float) -> None:
        try:
            if await leads(self.store, "notices"):
                await self.watch.check(self.store, now)
                # Fencing: the lead may have passed while this node was frozen mid-round.
                if not await leads(self.store, "notices"):
                    self.watch.hand_over()
            else:
                self.watch.hand_over()
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
