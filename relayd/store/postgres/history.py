"""The PostgreSQL store's status-page verbs (store/base.py, StatusHistory), with
sqlite/history.py's semantics: every node adds its own counts to a minute's row.

Async functions of one pool connection inside the caller's transaction, as postgres/ops.py.
"""

from __future__ import annotations

from dataclasses import asdict

from relayd.policy.limits import Reservation
from relayd.store import sqlfile
from relayd.store.base import MinuteSample
from relayd.store.postgres import ops
from relayd.store.postgres.sql import Conn, compile_query
from relayd.types import MessageView, QueueId, RecipientState

Q = {
    name: compile_query(name, text)
    for name, text in sqlfile.load(__package__ or "", "history.sql").items()
}


async def add_minute(conn: Conn, sample: MinuteSample, keep_since: int) -> None:
    query = Q["add_minute"]
    await conn.execute(query.sql, *query.args(**asdict(sample)))
    query = Q["prune_minutes"]
    await conn.execute(query.sql, *query.args(keep_since=keep_since))


async def minutes(conn: Conn, since: int) -> list[MinuteSample]:
    query = Q["minutes"]
    rows = await conn.fetch(query.sql, *query.args(since=since))
    return [MinuteSample(**dict(row)) for row in rows]


async def ledger_sends(conn: Conn, upstream: str, since: float) -> list[Reservation]:
    query = Q["ledger_sends"]
    rows = await conn.fetch(query.sql, *query.args(upstream=upstream, since=since))
    return [(row["sent_at"], row["ended_at"], row["weight"]) for row in rows]


async def recent_problems(conn: Conn, limit: int) -> list[tuple[float, MessageView]]:
    query = Q["recent_problems"]
    found = []
    for row in await conn.fetch(query.sql, *query.args(limit=limit)):
        view = await ops.show(conn, QueueId(row["queue_id"]))
        if view is not None:
            found.append((row["at"], view))
    return found


async def counts_by_upstream(conn: Conn) -> dict[str, dict[RecipientState, int]]:
    result: dict[str, dict[RecipientState, int]] = {}
    for row in await conn.fetch(Q["counts_by_upstream"].sql):
        result.setdefault(row["upstream"], {})[RecipientState(row["state"])] = row["n"]
    return result
