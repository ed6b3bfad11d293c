"""Writes per delivered message on SQLite (issue 17): counts, not timings.

Every statement of an outcome runs inside the queue's write lock, which the intake
processes' fsynced commits wait for; SQLite's trace callback on the store's connections
counts what one record_outcome wrote.
"""

from __future__ import annotations

import itertools
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from relayd.store.sqlite.store import SqliteStore
from relayd.types import NewMessage, Recipient, RecipientOutcome, RecipientState

T0 = 1_700_000_000.0


class Trace(list[str]):
    """The statements of every connection, in order; `by` holds each one's connection."""

    def __init__(self) -> None:
        super().__init__()
        self.by: list[int] = []

    def add(self, conn: int, sql: str) -> None:
        self.append(" ".join(sql.split())[:60])
        self.by.append(conn)


@pytest.fixture
def statements(monkeypatch: pytest.MonkeyPatch) -> Trace:
    seen = Trace()
    connect = sqlite3.connect
    numbers = itertools.count()

    def traced(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        conn: sqlite3.Connection = connect(*args, **kwargs)
        number = next(numbers)
        conn.set_trace_callback(lambda sql: seen.add(number, sql))
        return conn

    monkeypatch.setattr(sqlite3, "connect", traced)  # db.py calls it by module
    return seen


@pytest.fixture
async def store(tmp_path: Path, statements: Trace) -> AsyncIterator[SqliteStore]:
    async with SqliteStore(tmp_path / "queue.db") as opened:
        yield opened


async def test_an_outcome_writes_its_message_row_once(
    store: SqliteStore, statements: Trace
) -> None:
    await store.enqueue(
        NewMessage(
            mail_from="app@example.org",
            recipients=(Recipient("a@example.net"), Recipient("b@example.net")),
            body=b"Subject: x\r\n\r\nHello.\r\n",
            upstream="up",
            message_id="<1@example.org>",
            received_at=T0,
        )
    )
    (lease,) = await store.lease_due("up", T0 + 1, 32, 300.0, "w1")
    later = T0 + 600
    mark = len(statements)
    await store.record_outcome(
        lease,
        [
            RecipientOutcome("a@example.net", RecipientState.DELIVERED, "250 ok"),
            RecipientOutcome("b@example.net", RecipientState.DEFERRED, "451 later", later, "r"),
        ],
        T0 + 2,
    )
    writes = [sql for sql in statements[mark:] if sql.startswith("UPDATE messages")]
    assert len(writes) == 1, writes  # the lease ends and the due time is recomputed at once
    assert await store.next_due("up", T0 + 3) == later
    (again,) = await store.lease_due("up", later, 32, 300.0, "w2")
    assert again.addresses == ("b@example.net",)


def _message(upstream: str = "up") -> NewMessage:
    return NewMessage(
        mail_from="app@example.org",
        recipients=(Recipient("a@example.net"),),
        body=b"Subject: x\r\n\r\nHello.\r\n",
        upstream=upstream,
        message_id="<1@example.org>",
        received_at=T0,
    )


async def test_a_lease_with_nothing_due_takes_no_write_transaction(
    store: SqliteStore, statements: Trace
) -> None:
    """Every idle lane wakes for each new message and all but one find nothing: that must
    cost a read, not a transaction under the write lock intake's fsynced commits wait for."""
    await store.enqueue(_message())
    (lease,) = await store.lease_due("up", T0 + 1, 32, 300.0, "w1")
    commits, mark = store.commits, len(statements)
    assert await store.lease_due("other", T0 + 1, 32, 300.0, "w2") == []  # nothing queued
    assert await store.lease_due("up", T0 + 2, 32, 300.0, "w2") == []  # leased until T0+301
    assert store.commits == commits
    assert "BEGIN IMMEDIATE" not in statements[mark:]
    (again,) = await store.lease_due("up", T0 + 302, 32, 300.0, "w2")  # the lease ran out
    assert again.queue_id == lease.queue_id


def _synchronous_at_commits(statements: Trace, mark: int) -> list[str]:
    """The committing connection's synchronous setting at each COMMIT after `mark` (SQLite's
    default, FULL, until the connection sets it)."""
    levels: dict[int, str] = {}
    at_commits = []
    for n, (conn, sql) in enumerate(zip(statements.by, statements, strict=True)):
        if sql.startswith("PRAGMA synchronous ="):
            levels[conn] = sql.split("=")[1].strip()
        elif sql == "COMMIT" and n >= mark:
            at_commits.append(levels.get(conn, "FULL"))
    return at_commits


async def test_only_an_accepted_message_waits_for_an_fsync(
    store: SqliteStore, statements: Trace
) -> None:
    """synchronous=FULL (an fsync per commit) for an enqueue, NORMAL for the delivering
    side's lease and outcome: losing those to a power cut delivers a message twice, never
    loses it; and the next FULL commit's fsync of the WAL makes them durable too."""
    mark = len(statements)
    await store.enqueue(_message())
    (lease,) = await store.lease_due("up", T0 + 1, 32, 300.0, "w1")
    delivered = RecipientOutcome("a@example.net", RecipientState.DELIVERED, "250 ok")
    await store.record_outcome(lease, [delivered], T0 + 2)
    await store.enqueue(_message())
    assert _synchronous_at_commits(statements, mark) == ["FULL", "NORMAL", "NORMAL", "FULL"]


async def test_an_enqueue_alone_is_fsynced_on_the_loops_connection_and_nothing_after_it(
    store: SqliteStore, statements: Trace
) -> None:
    """An enqueue committed on the loop's connection (alone: intake's only session) commits
    with synchronous=FULL like one on the write thread, and the connection is back to NORMAL
    for the delivering side's writes after it; all of them on that one connection."""
    mark = len(statements)
    await store.enqueue(_message(), alone=True)
    (lease,) = await store.lease_due("up", T0 + 1, 32, 300.0, "w1")
    delivered = RecipientOutcome("a@example.net", RecipientState.DELIVERED, "250 ok")
    await store.record_outcome(lease, [delivered], T0 + 2)
    assert _synchronous_at_commits(statements, mark) == ["FULL", "NORMAL", "NORMAL"]
    committers = {
        conn
        for conn, sql in zip(statements.by[mark:], statements[mark:], strict=True)
        if sql == "COMMIT"
    }
    assert len(committers) == 1
