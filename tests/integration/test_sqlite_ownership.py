"""One daemon owns a SQLite queue (store/sqlite/instance.py): claim_queue refuses a second
owner and ends the leases an earlier run left, without counting an attempt."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from relayd.errors import StoreError
from relayd.store.base import QueueOwnership
from relayd.store.postgres.store import PostgresStore
from relayd.store.sqlite.store import SqliteStore
from relayd.types import NewMessage, Recipient

T0 = 1_700_000_000.0
LEASE = 300.0


def message(at: float = T0) -> NewMessage:
    return NewMessage(
        mail_from="app@example.org",
        recipients=(Recipient("someone@example.net"),),
        body=b"Subject: hi\r\n\r\nhello\r\n",
        upstream="main",
        message_id=f"<{at}@example.org>",
        received_at=at,
        client="127.0.0.1",
    )


async def test_claim_ends_the_leases_of_an_earlier_run(tmp_path: Path) -> None:
    path = tmp_path / "queue.db"
    async with SqliteStore(path) as crashed:  # an earlier daemon, leasing, then gone
        queue_id = await crashed.enqueue(message())
        (lease,) = await crashed.lease_due("main", T0 + 1, 10, LEASE, "dead-worker")
    async with SqliteStore(path) as restarted:
        assert await restarted.lease_due("main", T0 + 2, 10, LEASE, "w") == []  # still leased

        assert await restarted.claim_queue() == 1

        (again,) = await restarted.lease_due("main", T0 + 2, 10, LEASE, "w")
        assert again.queue_id == queue_id
        assert again.token != lease.token
        assert again.attempts == 0  # no attempt counted for the one the dead run never ended


async def test_a_second_claim_is_refused_until_the_owner_closes(tmp_path: Path) -> None:
    path = tmp_path / "queue.db"
    async with SqliteStore(path) as owner, SqliteStore(path) as other:
        assert await owner.claim_queue() == 0
        with pytest.raises(StoreError) as refused:
            await other.claim_queue()
        text = str(refused.value)
        assert f"{path} is in use by another `relayd run` (pid {os.getpid()}" in text
        assert "stop that daemon first, or give this one a queue.path of its own" in text
        await other.enqueue(message())  # sharing the queue (queue tool, sendmail) goes on
    async with SqliteStore(path) as next_owner:
        assert await next_owner.claim_queue() == 0


def test_both_backends_claim_at_start(tmp_path: Path) -> None:
    """SQLite's owner is the one daemon; PostgreSQL's is the node id (issue 14), whose
    earlier run's leases a restart releases (tests/integration/test_pg_liveness.py)."""
    assert isinstance(SqliteStore(tmp_path / "queue.db"), QueueOwnership)
    assert isinstance(PostgresStore("postgresql://relayd@localhost/relayd"), QueueOwnership)
