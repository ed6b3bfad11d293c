"""Leadership among nodes: at most one node runs a named job (IMAP polling, digests).

`try_lead(name)` takes a session-level advisory lock keyed on (schema, name) with
pg_try_advisory_lock on a connection of its own, outside the pool: the lock lives exactly as
long as that session, so a node that dies (or loses the network) stops leading when the
server drops its session, and the next node that asks becomes leader. Callers ask before
every run of the job (it is cheap and idempotent) and run it only when the answer is True.
"""

from __future__ import annotations

import asyncio
import contextlib

import asyncpg

from relayd.store.postgres.db import Database, translated
from relayd.store.postgres.sql import Q


class Leadership:
    """The advisory locks this node holds, on one dedicated connection."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._conn: asyncpg.Connection[asyncpg.Record] | None = None
        self._held: set[str] = set()
        self._lock = asyncio.Lock()  # one query at a time on the connection

    async def try_lead(self, name: str) -> bool:
        """Whether this node leads `name` now (taking the lead if nobody has it).

        Raises StoreUnavailable when the server cannot be reached: then nobody should
        assume the lead on this node's behalf.
        """
        async with self._lock, translated():
            conn = await self._connection()
            if name in self._held:
                await conn.fetchval("SELECT 1")  # the session, and so the lock, is alive
                return True
            query = Q["try_lead"]
            if await conn.fetchval(query.sql, *query.args(name=name)):
                self._held.add(name)
                return True
            return False

    async def resign(self, name: str) -> None:
        """Give up `name` (a graceful stop lets another node take over at once)."""
        async with self._lock, translated():
            if name not in self._held or self._conn is None or self._conn.is_closed():
                self._held.discard(name)
                return
            query = Q["resign"]
            await self._conn.fetchval(query.sql, *query.args(name=name))
            self._held.discard(name)

    async def close(self) -> None:
        """End the session: every lock it holds is released by the server."""
        conn, self._conn = self._conn, None
        self._held.clear()
        if conn is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), self._db.command_timeout)

    async def _connection(self) -> asyncpg.Connection[asyncpg.Record]:
        if self._conn is None or self._conn.is_closed():
            self._held.clear()  # a new session holds nothing yet
            self._conn = await self._db.connect()
        return self._conn
