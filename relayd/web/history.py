"""The status page's history: once a minute, what this process counted in the minute that
ended (metrics.totals) and the queue's depth, written to the store (StatusHistory), so the
charts cover the last 24 hours across restarts and, on PostgreSQL, every node. A store error
is the scheduler's to log (job_failed): that minute's counts then go to the next one."""

from __future__ import annotations

from typing import Protocol

from relayd import metrics
from relayd.store.base import MinuteSample, QueueStats, StatusHistory
from relayd.types import RecipientState

KEEP = 2 * 86400  # seconds of history kept: the charts show 24 hours
SETTLE = 1.0  # seconds after the minute's end before sampling it


class HistoryStore(QueueStats, StatusHistory, Protocol):
    """The depth to sample and the history to write."""


class HistorySampler:
    """The "history" job of daemon/schedule.py, every minute just after it ends."""

    def __init__(self, store: HistoryStore) -> None:
        self.store = store
        self._last = metrics.totals()

    async def sample(self, now: float) -> MinuteSample:
        """Record the minute that ended last (counts since the previous sample)."""
        minute = int(now) // 60 * 60 - 60
        totals = metrics.totals()
        delta = {key: value - self._last.get(key, 0) for key, value in totals.items()}
        depth = await self.store.depth()
        counts = depth.counts
        sample = MinuteSample(
            minute,
            accepted=delta.get("accepted", 0),
            delivered=delta.get(RecipientState.DELIVERED.value, 0),
            deferred=delta.get(RecipientState.DEFERRED.value, 0),
            failed=delta.get(RecipientState.FAILED.value, 0)
            + delta.get(RecipientState.BOUNCED.value, 0),
            pending=counts.get(RecipientState.QUEUED, 0) + counts.get(RecipientState.DEFERRED, 0),
            held=counts.get(RecipientState.HELD, 0),
        )
        await self.store.add_minute(sample, keep_since=minute - KEEP)
        self._last = totals  # only now: a failed write leaves its counts to the next minute
        return sample


def first_delay(now: float) -> float:
    """Seconds from `now` until just after the current minute ends (the first sample)."""
    return 60 - now % 60 + SETTLE
