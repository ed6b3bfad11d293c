"""The SQLite store's send ledger: reserve a send at its start, stamp it at its final reply.

Plain functions of a sqlite3 connection run inside the writer's batch transaction, like
sqlite/ops.py (whose named queries they use); the writer serialises every reservation.
relayd.policy.limits decides; this module only reads, prunes and writes the rows.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from relayd.policy import limits
from relayd.store.base import SendSlot
from relayd.store.sqlite.ops import Q
from relayd.types import Ceiling


def reserve_send(
    conn: sqlite3.Connection,
    upstream: str,
    now: float,
    ceilings: Sequence[Ceiling],
    min_interval: float,
    weight: int,
    open_for: float,
) -> SendSlot:
    before = now - limits.ledger_horizon(ceilings, min_interval)
    conn.execute(Q["prune_ledger"], {"upstream": upstream, "before": before, "open_for": open_for})
    rows = [
        (float(sent_at), None if ended_at is None else float(ended_at), int(w))
        for sent_at, ended_at, w in conn.execute(Q["select_ledger"], {"upstream": upstream})
    ]
    sends = limits.occupying(rows, now, open_for)
    earliest = limits.next_permitted(sends, now, ceilings, min_interval, weight)
    if earliest > now:
        reason = limits.describe_wait(sends, now, ceilings, min_interval, weight)
        return SendSlot(None, earliest, reason)
    cursor = conn.execute(
        Q["insert_ledger"], {"upstream": upstream, "sent_at": now, "weight": weight}
    )
    return SendSlot(cursor.lastrowid, now)


def finish_send(
    conn: sqlite3.Connection, reservation_id: int, ended_at: float, reached_data: bool
) -> None:
    if reached_data:
        conn.execute(Q["stamp_ledger"], {"id": reservation_id, "ended_at": ended_at})
    else:
        conn.execute(Q["delete_ledger"], {"id": reservation_id})
