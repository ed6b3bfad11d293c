"""Which of a lane's idle workers new mail wakes (delivery/watch.py), and the delivery loop's
reads on the event loop's own thread (SqliteStore via Database.read_now): the real store and
clock, four workers, a session that only counts.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path

import pytest

from relayd.clock import SystemClock
from relayd.delivery.lanes import LaneSet
from relayd.store.sqlite import ops
from relayd.store.sqlite import store as sqlite_store
from relayd.store.sqlite.store import SqliteStore
from relayd.types import (
    Lease,
    NewMessage,
    Outgoing,
    QueueId,
    Recipient,
    SendResult,
    SmtpReply,
    UpstreamHold,
)
from tests.conftest import ConfigFactory
from tests.support.waits import until

UPSTREAM = (
    'provider = "generic"\nhost = "127.0.0.1"\nport = 2\nsecurity = "none"\nauth = "none"\n'
    "max_connections = 4\n"
)


class CountingStore(SqliteStore):
    """The real store, counting the lane workers' looks for due mail."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.looks = 0

    async def lease_due(
        self, upstream: str, now: float, limit: int, lease_for: float, worker: str
    ) -> list[Lease]:
        self.looks += 1
        return await super().lease_due(upstream, now, limit, lease_for, worker)


class CountingSession:
    """Delivers every message after `delay` seconds; keeps the most sends at once."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.sent: list[str] = []
        self.now = 0
        self.most = 0

    async def send(self, message: Outgoing) -> SendResult:
        self.now += 1
        self.most = max(self.most, self.now)
        try:
            await asyncio.sleep(self.delay)
        finally:
            self.now -= 1
        self.sent.append(message.name)
        replies = {r: SmtpReply(250, "2.0.0 OK") for r in message.recipients}
        return SendResult(replies, reached_data=True)

    async def close(self) -> None:
        pass


def message(n: int) -> NewMessage:
    return NewMessage(
        mail_from="app@example.org",
        recipients=(Recipient(f"to{n}@example.net"),),
        body=b"Subject: hi\r\n\r\nhello\r\n",
        upstream="main",
        message_id=f"<{n}@example.org>",
        received_at=SystemClock().now(),
    )


async def test_one_message_wakes_one_idle_worker_of_four(
    make_config: ConfigFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every idle worker used to wake and look for due mail (five looks for one message:
    four woken, then the one that sent it looks again); now the one whose turn it is.
    (The once-a-second look for other processes' commits, which may wake one more when
    this process wrote through both its connections, is turned off here.)"""
    monkeypatch.setattr(sqlite_store, "EXTERNAL_POLL", 3600.0)
    async with CountingStore(tmp_path / "queue.db") as store:
        session = CountingSession()
        lanes = LaneSet(make_config(UPSTREAM), store, SystemClock(), "w", lambda _u, _h: session)
        run = asyncio.create_task(lanes.run())
        try:
            await until(lambda: store.looks >= 4)  # each worker looked once at start
            await asyncio.sleep(0.3)  # and went to sleep
            store_ids: list[QueueId] = []
            for n in range(3):
                store.looks = 0
                store_ids.append(await store.enqueue(message(n)))
                await until(lambda: len(session.sent) == len(store_ids))
                await asyncio.sleep(0.3)
                assert store.looks == 2  # the watcher's lease, and its look after sending
        finally:
            lanes.stop()
            await asyncio.wait_for(run, 10)


async def test_a_backlog_released_at_once_wakes_every_worker(
    make_config: ConfigFactory, tmp_path: Path
) -> None:
    """A release is one signal; the worker it wakes leases a full batch and wakes the rest,
    so the backlog goes out over all four connections."""
    async with CountingStore(tmp_path / "queue.db") as store:
        session = CountingSession(delay=0.02)
        await store.hold_upstream(UpstreamHold("main", SystemClock().now() + 3600, "421 busy"))
        ids: list[QueueId] = [await store.enqueue(message(n)) for n in range(160)]
        lanes = LaneSet(make_config(UPSTREAM), store, SystemClock(), "w", lambda _u, _h: session)
        run = asyncio.create_task(lanes.run())
        try:
            await asyncio.sleep(0.3)  # every worker asleep behind the hold
            assert session.sent == []
            await store.release_upstream("main")
            await until(lambda: len(session.sent) == len(ids), timeout=20)
            assert session.most == 4
        finally:
            lanes.stop()
            await asyncio.wait_for(run, 10)


async def test_the_delivery_loops_reads_run_on_the_event_loops_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No hop to the read thread for a hold, the due check, the next due time or a body."""
    threads: dict[str, set[int]] = {}

    def spied(name: str) -> None:
        real = getattr(ops, name)

        def op(*args: object) -> object:
            threads.setdefault(name, set()).add(threading.get_ident())
            return real(*args)

        monkeypatch.setattr(ops, name, op)

    for name in ("upstream_hold", "any_due", "next_due", "load_body"):
        spied(name)
    async with SqliteStore(tmp_path / "queue.db") as store:
        queue_id = await store.enqueue(message(1))
        now = SystemClock().now()
        await store.upstream_hold("main")
        await store.lease_due("main", now, 1, 60, "w")
        await store.next_due("main", now)
        await store.load_body(queue_id)
    assert set(map(frozenset, threads.values())) == {frozenset({threading.get_ident()})}
    assert sorted(threads) == ["any_due", "load_body", "next_due", "upstream_hold"]


async def test_a_read_sqlite_would_wait_for_goes_to_the_read_thread(tmp_path: Path) -> None:
    """The loop's connection never waits for a lock (timeout 0); SQLITE_BUSY there means
    the read thread's connection, which may wait up to the busy timeout, does the read."""
    threads: list[int] = []

    def op(conn: sqlite3.Connection) -> int:
        threads.append(threading.get_ident())
        if len(threads) == 1:
            busy = sqlite3.OperationalError("database is locked")
            busy.sqlite_errorcode = sqlite3.SQLITE_BUSY
            raise busy
        return int(conn.execute("SELECT count(*) FROM messages").fetchone()[0])

    async with SqliteStore(tmp_path / "queue.db") as store:
        await store.enqueue(message(1))
        assert await store._db.read_now(op) == 1
    assert threads[0] == threading.get_ident() != threads[1]
