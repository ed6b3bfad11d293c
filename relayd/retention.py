"""Retention: finished messages leave the store `queue.retention` after their last update.

A message whose recipients are all final (delivered, failed, bounced) stays listable by
the queue tool as history; its body was dropped when it finished. This task deletes the
history older than the retention, hourly, so the store stays the size of recent traffic
rather than of its whole past (on PostgreSQL, autovacuum then reuses
the space). Every node may run it: the DELETE is idempotent, and concurrent ones simply
find less to do. A retention of 0 keeps history for ever.

Until schedule.py exists this is a plain supervised task of the daemon; it is a
periodic job like the others and moves there with them.
"""

from __future__ import annotations

from relayd.clock import Clock
from relayd.errors import StoreError
from relayd.logs import get_logger
from relayd.store.base import Store

log = get_logger("retention")

PURGE_INTERVAL = 3600.0  # seconds between purges
FIRST_PURGE = 60.0  # the first one waits until startup traffic has settled


async def run_retention(store: Store, clock: Clock, retention: float) -> None:
    """Forever: delete history older than `retention` seconds every PURGE_INTERVAL."""
    delay = FIRST_PURGE
    while True:
        await clock.sleep(delay)
        delay = PURGE_INTERVAL
        if retention <= 0:
            continue
        try:
            purged = await store.purge_finished(clock.now() - retention)
        except StoreError as exc:
            log.error("store_error", job="retention", error=str(exc))
            continue
        if purged:
            log.info("history_purged", messages=purged, retention_seconds=retention)
