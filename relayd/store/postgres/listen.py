"""New-work wake-ups between nodes: LISTEN on one dedicated connection per store, and a poll.

Every write that makes mail due (enqueue, retry, release, release_upstream) sends
`pg_notify('relayd_work', '<schema> <instance>')` inside its transaction, so the
notification leaves only at COMMIT. Each store's listener wakes its dispatcher for a
notification from another instance on the same schema (its own writes wake it directly,
without the round trip).

A notification sent while the listening session is gone is lost, so two things bound
what a lost one costs to POLL_INTERVAL: if the connection drops, the listener reconnects
at most RECONNECT_PAUSES[-1] after the server answers again and then wakes the
dispatcher once; and every POLL_INTERVAL it reads the queue's work signal (postgres.sql)
and wakes the dispatcher when that changed, and checks that the listening session still
answers (a silently dead one is replaced).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import asyncpg

from relayd.errors import StoreError
from relayd.store.postgres.db import Database, translated
from relayd.store.postgres.sql import Conn, Q

CHANNEL = "relayd_work"
RECONNECT_PAUSES = (0.25, 0.5, 1.0)  # the last one repeats
POLL_INTERVAL = 2.0  # seconds: the most a lost notification delays new work


class Listener:
    """LISTEN for `CHANNEL` and call `on_work()` for other instances' commits."""

    def __init__(self, db: Database, instance: str, on_work: Callable[[], None]) -> None:
        self._db = db
        self.instance = instance
        self._on_work = on_work
        self._conn: asyncpg.Connection[asyncpg.Record] | None = None
        self._lost = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def payload(self) -> str:
        """What this instance's writes NOTIFY with: its schema and its id."""
        return f"{self._db.schema} {self.instance}"

    async def start(self) -> None:
        """LISTEN now (so a commit right after open() wakes us), then keep it up."""
        await self._connect()
        self._tasks = [
            asyncio.create_task(self._keep_listening(), name="relayd-postgres-listen"),
            asyncio.create_task(self._poll(), name="relayd-postgres-poll"),
        ]

    async def close(self) -> None:
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), self._db.command_timeout)

    async def _connect(self) -> None:
        conn = await self._db.connect()
        try:
            conn.add_termination_listener(self._terminated)
            async with translated():
                await conn.add_listener(CHANNEL, self._notified)
        except BaseException:
            conn.terminate()
            raise
        self._lost.clear()
        self._conn = conn

    def _notified(self, _conn: Any, _pid: int, _channel: str, payload: object) -> None:
        schema, _, sender = str(payload).rpartition(" ")
        if schema == self._db.schema and sender != self.instance:
            self._on_work()

    def _terminated(self, _conn: Any) -> None:
        self._lost.set()

    async def _keep_listening(self) -> None:
        while True:
            await self._lost.wait()
            self._conn = None
            attempt = 0
            while True:
                await asyncio.sleep(RECONNECT_PAUSES[min(attempt, len(RECONNECT_PAUSES) - 1)])
                try:
                    await self._connect()
                except StoreError:
                    attempt += 1
                    continue
                break
            self._on_work()  # notifications sent while we were away are lost

    async def _poll(self) -> None:
        """Every POLL_INTERVAL: wake on a changed work signal; replace a mute session."""
        seen = None
        while True:
            await asyncio.sleep(POLL_INTERVAL)
            with contextlib.suppress(StoreError):
                signal = await self._db.run(_work_signal)
                if seen is not None and signal != seen:
                    self._on_work()
                seen = signal
            conn = self._conn
            if conn is not None and not await _answers(conn, POLL_INTERVAL):
                conn.terminate()  # its termination listener starts the reconnect


async def _work_signal(conn: Conn) -> tuple[float | None, int]:
    """What the poll compares (postgres.sql, work_signal)."""
    row = await conn.fetchrow(Q["work_signal"].sql)
    assert row is not None
    return (None if row["due"] is None else float(row["due"])), int(row["holds"])


async def _answers(conn: asyncpg.Connection[asyncpg.Record], timeout: float) -> bool:
    try:
        await conn.fetchval("SELECT 1", timeout=timeout)
    except Exception:
        return False
    return True
