"""The PostgreSQL store's send ledger: reserve a send at its start, stamp it at its final reply.

The semantics are sqlite/ledger.py's. Several nodes reserve on one ledger, optimistically: a
version per upstream (send_locks, migration_3) makes read-decide-insert atomic, and no row
lock outlives the one statement that takes it, so a node that freezes holds nothing. The
stamp needs no version: a send under way counts as ending "now" for every reader, so one that
missed its stamp only waited longer. Each function runs outside a transaction: each statement
commits by itself.
"""

from __future__ import annotations

from collections.abc import Sequence

from relayd.errors import StoreUnavailable
from relayd.policy import limits
from relayd.store.base import SendSlot
from relayd.store.postgres.sql import Conn, Q
from relayd.types import Ceiling

RESERVE_ATTEMPTS = 50  # reads of a ledger that others keep changing before giving up


async def reserve_send(
    conn: Conn,
    upstream: str,
    now: float,
    ceilings: Sequence[Ceiling],
    min_interval: float,
    weight: int,
    open_for: float,
) -> SendSlot:
    """Read the ledger, decide with relayd.policy.limits, and insert only if nobody reserved
    in between (one statement, its row lock never held across a round trip); else again."""
    before = float(now - limits.ledger_horizon(ceilings, min_interval))
    read, insert = Q["read_ledger"], Q["insert_ledger_if_unchanged"]
    for _ in range(RESERVE_ATTEMPTS):
        rows = await conn.fetch(
            read.sql, *read.args(upstream=upstream, before=before, open_for=float(open_for))
        )
        if not rows:
            create = Q["create_upstream_ledger"]
            await conn.execute(create.sql, *create.args(upstream=upstream))
            continue
        reservations = [
            (float(r["sent_at"]), r["ended_at"], int(r["weight"]))
            for r in rows
            if r["sent_at"] is not None
        ]
        sends = limits.occupying(reservations, now, open_for)
        earliest = limits.next_permitted(sends, now, ceilings, min_interval, weight)
        if earliest > now:
            reason = limits.describe_wait(sends, now, ceilings, min_interval, weight)
            return SendSlot(None, earliest, reason)
        values = {"version": rows[0]["version"], "sent_at": float(now), "weight": weight}
        reservation = await conn.fetchval(insert.sql, *insert.args(upstream=upstream, **values))
        if reservation is not None:
            return SendSlot(int(reservation), now)
    raise StoreUnavailable(
        f"send ledger of {upstream!r}: {RESERVE_ATTEMPTS} reservations by other nodes came in "
        "between reading and reserving; trying again later"
    )


async def finish_send(conn: Conn, reservation_id: int, at: float, reached_data: bool) -> None:
    if reached_data:
        stamp = Q["stamp_ledger"]
        await conn.execute(stamp.sql, *stamp.args(id=reservation_id, ended_at=float(at)))
    else:
        delete = Q["delete_ledger"]
        await conn.execute(delete.sql, *delete.args(id=reservation_id))
