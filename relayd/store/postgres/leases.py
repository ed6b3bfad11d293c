"""Leases between nodes: claiming due mail, keeping a lease through a long send, and the
leases of a node that is gone.

A lease is live while its lease_until has not passed *and* the node that took it
(`lease_node`, postgres/nodes.py) keeps its heartbeat: a claim passes over the first and
takes the second kind as if expired, so a dead, frozen or cut-off node's mail moves to
another node after queue.node_timeout, not after queue.lease_time. A store that never
claimed a node id (the contract tests, a CLI command) leases with lease_node NULL: only
lease_until holds such a lease.
"""

from __future__ import annotations

import json
from typing import Any

import asyncpg

from relayd.errors import LeaseLost
from relayd.store.postgres.sql import Conn, Q
from relayd.types import Lease, QueueId, RcptDsn, Recipient


async def lease_due(
    conn: Conn,
    upstream: str,
    now: float,
    limit: int,
    lease_for: float,
    worker: str,
    *,
    node: str | None,
    node_timeout: float,
) -> list[Lease]:
    if node is not None:
        # A node that leases is alive: its heartbeat is fresh whatever its heartbeat task
        # did, so right after an outage (every heartbeat lapsed) its new leases are not
        # taken over before that task catches up.
        await beat(conn, node)
    query = Q["lease_due_messages"]
    values = {
        "upstream": upstream,
        "now": float(now),
        "limit": max(0, limit),
        "worker": worker,
        "node": node,
        "node_timeout": float(node_timeout),
        "lease_until": float(now + lease_for),
    }
    claimed = list(await conn.fetch(query.sql, *query.args(**values)))
    if not claimed:
        return []
    # RETURNING has no order: put the claims back in line (due time, then arrival).
    claimed.sort(key=lambda row: (row["next_attempt_at"], row["received_at"]))
    ids = [row["id"] for row in claimed]
    due: dict[str, list[Any]] = {queue_id: [] for queue_id in ids}
    query = Q["due_recipients"]
    for row in await conn.fetch(query.sql, *query.args(ids=ids, now=float(now))):
        due[row["queue_id"]].append(row)
    empty = [queue_id for queue_id, rcpts in due.items() if not rcpts]
    if empty:  # next_attempt_at is kept exact, so this is only a safety net
        query = Q["clear_leases"]
        await conn.execute(query.sql, *query.args(ids=empty))
    return [_lease(row, due[row["id"]], now + lease_for) for row in claimed if due[row["id"]]]


def _lease(row: Any, due: list[Any], lease_until: float) -> Lease:
    """A Lease from a claimed message row and its due recipient rows (in idx order)."""
    return Lease(
        queue_id=QueueId(row["id"]),
        upstream=row["upstream"],
        mail_from=row["mail_from"],
        recipients=tuple(Recipient(r["address"], RcptDsn(r["notify"], r["orcpt"])) for r in due),
        attempts=max(r["attempts"] for r in due),
        message_id=row["message_id"],
        received_at=row["received_at"],
        size=row["size"],
        token=row["lease_token"],
        lease_until=lease_until,
        mail_options=tuple(json.loads(row["mail_options"])),
    )


async def next_due(conn: Conn, upstream: str, now: float, node_timeout: float) -> float | None:
    query = Q["next_due"]
    due = await conn.fetchval(
        query.sql, *query.args(upstream=upstream, now=float(now), node_timeout=node_timeout)
    )
    return None if due is None else float(due)


async def renew_lease(conn: Conn, lease: Lease, now: float, lease_for: float) -> None:
    query = Q["renew_lease"]
    values = {"queue_id": lease.queue_id, "token": lease.token, "lease_until": now + lease_for}
    if await conn.fetchval(query.sql, *query.args(**values)) is None:
        raise LeaseLost()


async def beat(conn: Conn | asyncpg.Connection[asyncpg.Record], node: str) -> None:
    """`node` is alive now (the server's time)."""
    query = Q["node_beat"]
    await conn.execute(query.sql, *query.args(node=node))


async def release_node_leases(conn: Conn, node: str) -> int:
    """End the leases `node`'s earlier run left; returns how many."""
    query = Q["release_node_leases"]
    tag = await conn.execute(query.sql, *query.args(node=node))
    count = tag.rpartition(" ")[2]
    return int(count) if count.isdigit() else 0
