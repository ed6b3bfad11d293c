"""Node liveness: this node's id, held by one daemon at a time, and its heartbeat.

`claim()` takes the id with a session-level advisory lock on a dedicated connection (so a
second daemon configured with the same queue.node_id is refused, while a killed one's
session ends with the process and its restart proceeds at once), writes a first heartbeat
and releases the leases the id's earlier run left. Then every node_timeout / 3 the node
renews its heartbeat (server time) and its leads (postgres/leader.py). A node whose
heartbeat is older than node_timeout is taken for dead by the others: its leases are
claimable (postgres/leases.py) and its leads lapse.

Each beat is bounded by the beat interval: a frozen connection (a partition) is dropped and
made again, with the lock, at the next beat, rather than waiting out a statement timeout.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import asyncpg

from relayd.errors import StoreError
from relayd.logs import get_logger
from relayd.store.postgres.db import TCP_KEEPALIVES, Database, translated
from relayd.store.postgres.leases import beat, release_node_leases
from relayd.store.postgres.sql import Conn, Q

log = get_logger("node")

DEFAULT_NODE_TIMEOUT = 10.0  # seconds without a heartbeat after which a node counts as gone
LOCK_RETRY = 0.5  # seconds between attempts to take the node id at start
# A dead run's session ends at once when its process was killed, within the server's TCP
# keepalives (db.TCP_KEEPALIVES) when its host vanished: claim() waits that long for it.
CLAIM_WAIT = TCP_KEEPALIVES[0] + TCP_KEEPALIVES[1] * TCP_KEEPALIVES[2] + 1.0


class NodeLiveness:
    """The node id `node` held, and its heartbeat renewed until close()."""

    def __init__(
        self,
        db: Database,
        node: str,
        timeout: float,
        on_beat: Callable[[], Awaitable[None]],
    ) -> None:
        self._db = db
        self.node = node
        self.interval = timeout / 3
        self._on_beat = on_beat
        self._conn: asyncpg.Connection[asyncpg.Record] | None = None
        self._task: asyncio.Task[None] | None = None

    async def claim(self) -> int:
        """Take the node id, beat once, end the earlier run's leases; returns how many."""
        deadline = time.monotonic() + CLAIM_WAIT
        while not await self._lock():
            if time.monotonic() > deadline:
                raise StoreError(
                    f"another relayd runs as node {self.node!r} on this queue database; "
                    "give each node its own queue.node_id (default: host name and first "
                    "server.listen address)"
                )
            await asyncio.sleep(LOCK_RETRY)

        async def start(conn: Conn) -> int:
            await beat(conn, self.node)
            return await release_node_leases(conn, self.node)

        released = await self._db.run(start, write=True)
        self._task = asyncio.create_task(self._beat_forever(), name="relayd-postgres-heartbeat")
        return released

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        self._drop()

    async def _lock(self) -> bool:
        """Take the node id's lock on a new session; False when another session holds it."""
        self._drop()
        conn = await self._db.connect()
        query = Q["node_lock"]
        try:
            async with translated():
                locked = bool(await conn.fetchval(query.sql, *query.args(node=self.node)))
        except BaseException:
            conn.terminate()
            raise
        if locked:
            self._conn = conn
        else:
            conn.terminate()
        return locked

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.terminate()  # the server releases the lock with the session

    async def _beat_forever(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                async with asyncio.timeout(self.interval):
                    await self._beat()
                    await self._on_beat()
            except (StoreError, TimeoutError) as exc:
                self._drop()  # frozen or gone: a new session (and the lock) at the next beat
                log.warning("heartbeat_failed", node=self.node, error=str(exc) or "timed out")
            except Exception:  # a bug must not end the heartbeat: the node would seem dead
                self._drop()
                log.exception("heartbeat_failed", node=self.node)

    async def _beat(self) -> None:
        if (self._conn is None or self._conn.is_closed()) and not await self._lock():
            raise StoreError(f"the node id {self.node!r} is held by another session")
        assert self._conn is not None
        async with translated():
            await beat(self._conn, self.node)
