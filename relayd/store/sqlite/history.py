"""The SQLite store's status-page verbs (store/base.py, StatusHistory): the per-minute history,
the rate ledger's recent sends and the latest failures, over history.sql's named queries.

Plain functions of a sqlite3 connection, like sqlite/ops.py: writes run inside the writer's
batch transaction, reads on their own.
"""

from __future__ import annotations

import sqlite3
from dataclasses import astuple, fields

from relayd.policy.limits import Reservation
from relayd.store import sqlfile
from relayd.store.base import MinuteSample
from relayd.store.sqlite import ops
from relayd.types import MessageView, QueueId, RecipientState

Q = sqlfile.load(__package__ or "", "history.sql")
_COLUMNS = [f.name for f in fields(MinuteSample)]


def add_minute(conn: sqlite3.Connection, sample: MinuteSample, keep_since: int) -> None:
    conn.execute(Q["add_minute"], dict(zip(_COLUMNS, astuple(sample), strict=True)))
    conn.execute(Q["prune_minutes"], {"keep_since": keep_since})


def minutes(conn: sqlite3.Connection, since: int) -> list[MinuteSample]:
    return [MinuteSample(*row) for row in conn.execute(Q["minutes"], {"since": since})]


def ledger_sends(conn: sqlite3.Connection, upstream: str, since: float) -> list[Reservation]:
    rows = conn.execute(Q["ledger_sends"], {"upstream": upstream, "since": since})
    return [(sent_at, ended_at, weight) for sent_at, ended_at, weight in rows]


def recent_problems(conn: sqlite3.Connection, limit: int) -> list[tuple[float, MessageView]]:
    found = []
    for queue_id, at in conn.execute(Q["recent_problems"], {"limit": limit}).fetchall():
        view = ops.show(conn, QueueId(queue_id))
        if view is not None:
            found.append((at, view))
    return found


def counts_by_upstream(conn: sqlite3.Connection) -> dict[str, dict[RecipientState, int]]:
    result: dict[str, dict[RecipientState, int]] = {}
    for upstream, state, count in conn.execute(Q["counts_by_upstream"]):
        result.setdefault(upstream, {})[RecipientState(state)] = count
    return result
