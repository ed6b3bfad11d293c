"""The status page's history: once a minute, what this process counted in the minute that
ended (metrics.totals) and the queue's depth, written to the store (StatusHistory), so the
charts cover the last 24 hours across restarts and, on PostgreSQL, every node."""

from __future__ import annotations

from typing import Protocol

from relayd import metrics
from relayd.clock import Clock
from relayd.errors import StoreError
from relayd.logs import get_logger
from relayd.store.base import MinuteSample, QueueStats, StatusHistory
from relayd.types import RecipientState

log = get_logger("admin")

KEEP = 2 * 86400  # seconds of history kept: the charts show 24 hours
SETTLE = 1.0  # seconds after the minute's end before sampling it


class HistoryStore(QueueStats, StatusHistory, Protocol):
    """The depth to sample and the history to write."""


class HistorySampler:
    def __init__(self, store: HistoryStore, clock: Clock) -> None:
        self.store = store
        self.clock = clock
        self._last = metrics.totals()

    async def sample(self) -> MinuteSample:
        """Record the minute that ended last (counts since the previous sample)."""
        now = self.clock.now()
        minute = int(now) // 60 * 60 - 60
        totals = metrics.totals()
        delta = {key: value - self._last.get(key, 0) for key, value in totals.items()}
        self._last = totals
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
        return sample

    async def run(self) -> None:
        """Sample every minute, just after it ends; a store error skips one minute."""
        while True:
            now = self.clock.now()
            await self.clock.sleep(60 - now % 60 + SETTLE)
            try:
                await self.sample()
            except StoreError as exc:
                log.warning("history_sample_failed", error=str(exc))
