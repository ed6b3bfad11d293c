"""Leadership among nodes: at most one node runs a named job (IMAP polling, digests).

A lead is a row of `leaders` (postgres.sql's take_lead): its holder and until when it
holds, in the server's time. The holder renews it with every heartbeat (postgres/nodes.py)
and every question; anyone takes a row that lapsed. So a leader that dies, freezes
(SIGSTOP) or is cut off from the database loses the lead after queue.node_timeout, and a
node that wants it (one that asked before) takes it at its next heartbeat. The old leader
learns it at its own next renewal or question and logs `leadership_lost`; the jobs ask
again before they report anything (notices/watches.py), so it reports nothing after that.
"""

from __future__ import annotations

import contextlib

from relayd.errors import StoreError
from relayd.logs import get_logger
from relayd.store.postgres.db import Database
from relayd.store.postgres.sql import Conn, Q

log = get_logger("leadership")


class Leadership:
    """The leads `holder` (the node id) asked for, holds, and renews."""

    def __init__(self, db: Database, holder: str, ttl: float) -> None:
        self._db = db
        self.holder = holder
        self.ttl = ttl
        self._held: set[str] = set()
        self._wanted: set[str] = set()  # every job this node asked for: taken when it lapses

    async def try_lead(self, name: str) -> bool:
        """Whether this node leads `name` now (renewing it, or taking it if it lapsed).

        Raises StoreUnavailable when the server cannot be reached: then nobody should
        assume the lead on this node's behalf.
        """
        self._wanted.add(name)
        return await self._take(name)

    async def renew(self) -> None:
        """The heartbeat's part: renew every lead held, take every wanted one that lapsed."""
        for name in sorted(self._wanted):
            await self._take(name)

    async def resign(self, name: str) -> None:
        """Give up `name` (a graceful stop lets another node take over at once)."""
        self._wanted.discard(name)
        if name not in self._held:
            return
        query = Q["resign"]
        await self._db.run(
            lambda conn: conn.execute(query.sql, *query.args(name=name, holder=self.holder)),
            write=True,
        )
        self._held.discard(name)
        log.info("leadership_resigned", job=name, node=self.holder)

    async def close(self) -> None:
        """Resign every lead (best effort: an unreachable server lets them lapse)."""
        for name in sorted(self._held):
            with contextlib.suppress(StoreError):
                await self.resign(name)
        self._held.clear()
        self._wanted.clear()

    async def _take(self, name: str) -> bool:
        async def take(conn: Conn) -> tuple[bool, str | None]:
            query = Q["take_lead"]
            args = query.args(name=name, holder=self.holder, ttl=float(self.ttl))
            if await conn.fetchval(query.sql, *args) is not None:
                return True, self.holder
            query = Q["leader_of"]
            return False, await conn.fetchval(query.sql, *query.args(name=name))

        leads, leader = await self._db.run(take, write=True)
        if leads and name not in self._held:
            self._held.add(name)
            log.info("leadership_taken", job=name, node=self.holder)
        elif not leads and name in self._held:
            self._held.discard(name)
            log.warning(
                "leadership_lost",
                job=name,
                node=self.holder,
                leader=leader,
                why="not renewed within queue.node_timeout; another node leads now",
            )
        return leads
