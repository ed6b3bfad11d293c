"""Retention: finished messages leave the store `queue.retention` after their last update.

A message whose recipients are all final (delivered, failed, bounced) stays listable by
the queue tool as history; its body was dropped when it finished. The purge deletes the
history older than the retention (an hourly schedule job, daemon/schedule.py), so the store stays
the size of recent traffic rather than of its whole past (on PostgreSQL, autovacuum then
reuses the space). Every node may run it: the DELETE is idempotent, and concurrent ones
simply find less to do. A retention of 0 keeps history for ever.
"""

from __future__ import annotations

from relayd.errors import StoreError
from relayd.logs import get_logger
from relayd.store.base import QueueAdmin

log = get_logger("retention")


async def purge_history(store: QueueAdmin, now: float, retention: float) -> int:
    """Delete the history older than `retention` seconds before `now`; how many messages went.

    A store failure is logged and skipped: the next purge deletes what this one left."""
    if retention <= 0:
        return 0
    try:
        purged = await store.purge_finished(now - retention)
    except StoreError as exc:
        log.error("store_error", job="retention", error=str(exc))
        return 0
    if purged:
        log.info("history_purged", messages=purged, retention_seconds=retention)
    return purged
