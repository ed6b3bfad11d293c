"""New-work wake-ups between nodes: LISTEN on one dedicated connection per store.

Every write that makes mail due (enqueue, retry, release, release_upstream) sends
`pg_notify('relayd_work', '<schema> <instance>')` inside its transaction, so the
notification leaves only at COMMIT. Each store's listener wakes its dispatcher for a
notification from another instance on the same schema (its own writes wake it directly,
without the round trip). Nothing polls: a node asleep stays asleep until work arrives or
its own timer ends.

If the listening connection drops, the listener reconnects with a growing pause and then
wakes the dispatcher once, because notifications sent meanwhile are lost; until then the
dispatcher's own timers (next due time, at most a minute) keep mail moving.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import asyncpg

from relayd.errors import StoreError
from relayd.store.postgres.db import Database, translated

CHANNEL = "relayd_work"
RECONNECT_PAUSES = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0)  # the last one repeats


class Listener:
    """LISTEN for `CHANNEL` and call `on_work()` for other instances' commits."""

    def __init__(self, db: Database, instance: str, on_work: Callable[[], None]) -> None:
        self._db = db
        self.instance = instance
        self._on_work = on_work
        self._conn: asyncpg.Connection[asyncpg.Record] | None = None
        self._lost = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def payload(self) -> str:
        """What this instance's writes NOTIFY with: its schema and its id."""
        return f"{self._db.schema} {self.instance}"

    async def start(self) -> None:
        """LISTEN now (so a commit right after open() wakes us), then keep it up."""
        await self._connect()
        self._task = asyncio.create_task(self._keep_listening(), name="relayd-postgres-listen")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
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
