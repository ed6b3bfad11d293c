"""The shared store backend: one PostgreSQL database for every relayd node.

PostgresStore is the `Store` contract (store/base.py) over asyncpg. Several nodes behave
as one relay: they claim mail with SELECT ... FOR UPDATE SKIP LOCKED and expiring leases
(fenced by a token on every final write), reserve sends with a version per upstream (so
the rate ceilings and min_interval hold across all of them, and no lock waits on a node),
share holds and waits, and wake each other with LISTEN/NOTIFY. What lives here is which
verbs write and which NOTIFY; the SQL is in postgres.sql, the transaction bodies in
postgres/ops.py, the pool, its timeouts and error translation in postgres/db.py, group
commit in postgres/batch.py (enqueues) and postgres/outcomes.py (attempt outcomes), the
listener and its poll in postgres/listen.py, migrations in postgres/migrate.py, claims and
their renewal in postgres/leases.py, the node's id and heartbeat in postgres/nodes.py and
leadership in postgres/leader.py.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Sequence
from types import TracebackType
from typing import TypeVar

from relayd.dsn.parse import ParsedDsn
from relayd.errors import StoreError
from relayd.policy.limits import Reservation
from relayd.store.base import MinuteSample, ReportInfo, SendSlot
from relayd.store.postgres import history, leases, ledger, ops, reports
from relayd.store.postgres.batch import GroupCommit
from relayd.store.postgres.db import (
    DEFAULT_COMMAND_TIMEOUT,
    DEFAULT_LOCK_TIMEOUT,
    DEFAULT_POOL_SIZE,
    Database,
)
from relayd.store.postgres.leader import Leadership
from relayd.store.postgres.listen import CHANNEL, Listener
from relayd.store.postgres.nodes import DEFAULT_NODE_TIMEOUT, NodeLiveness
from relayd.store.postgres.outcomes import OutcomeBatch
from relayd.store.postgres.sql import Conn
from relayd.types import (
    Ceiling,
    Lease,
    MessageView,
    NewMessage,
    QueueDepth,
    QueueId,
    RecipientOutcome,
    RecipientState,
    UpstreamHold,
)

T = TypeVar("T")
UNMETERED = 0  # the reservation of an unlimited upstream's send (ledger ids start at 1)


class PostgresStore:
    """The queue, the rate ledger and upstream holds in the PostgreSQL database at `dsn`.

    `pool_size` bounds this store's pooled connections; it also opens one for LISTEN and,
    once claim_queue() made it a node, one for the node's id and heartbeat. `lock_timeout`
    is how long a statement waits for a row or table lock before failing with
    StoreUnavailable. `node_id` names the node (queue.node_id) for claim_queue() and its
    leads; `node_timeout` is how long a node's heartbeat may lapse before its leases and
    leads pass to the others.
    """

    def __init__(
        self,
        dsn: str,
        *,
        pool_size: int = DEFAULT_POOL_SIZE,
        lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
        command_timeout: float = DEFAULT_COMMAND_TIMEOUT,
        node_id: str | None = None,
        node_timeout: float = DEFAULT_NODE_TIMEOUT,
    ) -> None:
        self._db = Database(
            dsn, pool_size=pool_size, lock_timeout=lock_timeout, command_timeout=command_timeout
        )
        self.node_id = node_id
        self.node_timeout = node_timeout
        self._node: NodeLiveness | None = None  # once claim_queue() made this store a node
        self._work = asyncio.Event()
        self._listener = Listener(self._db, uuid.uuid4().hex, self._work.set)
        self._batch = GroupCommit(self._db, self._signal)
        self._outcomes = OutcomeBatch(self._db)
        # Without a node id (a test's store), a lead is this store instance's.
        holder = node_id or f"store-{uuid.uuid4().hex[:12]}"
        self._leadership = Leadership(self._db, holder, node_timeout)

    @property
    def commits(self) -> int:
        """Write transactions committed so far (fewer than writes: group commit)."""
        return self._db.commits

    @property
    def migrated(self) -> tuple[int, int]:
        """The schema version before and after open() migrated it."""
        return self._db.migrated

    async def open(self) -> None:
        """Connect, migrate the schema (one node at a time), LISTEN; then usable."""
        await self._db.open()
        try:
            await self._listener.start()
        except BaseException:
            await self._db.close()
            raise
        self._batch.start()
        self._outcomes.start()

    async def close(self) -> None:
        """Commit every enqueue and outcome already submitted, then end every connection."""
        await self._batch.close()
        await self._outcomes.close()
        await self._listener.close()
        await self._leadership.close()
        if self._node is not None:
            await self._node.close()
        await self._db.close()

    async def claim_queue(self) -> int:
        """Become node `node_id` (store/base.py, QueueOwnership): one daemon per id, its
        earlier run's leases released, a heartbeat from now on (postgres/nodes.py)."""
        if self.node_id is None:
            raise StoreError("claiming a share of the queue needs a node id (queue.node_id)")
        if self._node is not None:
            return 0
        node = NodeLiveness(self._db, self.node_id, self.node_timeout, self._leadership.renew)
        released = await node.claim()
        self._node = node
        if released:
            await self._write(self._notify)  # due now: the other nodes may take them first
        return released

    async def __aenter__(self) -> PostgresStore:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def _signal(self) -> tuple[str, str]:
        """The NOTIFY of this store's commits: the channel, and who sent it."""
        return CHANNEL, self._listener.payload

    async def _notify(self, conn: Conn) -> None:
        await ops.notify_work(conn, *self._signal())

    async def _write(
        self, op: Callable[[Conn], Awaitable[T]], *, wake: bool = False, wake_self: bool = True
    ) -> T:
        """One write transaction; with `wake`, it NOTIFYs the other nodes at COMMIT and
        (unless not `wake_self`) wakes this one directly."""
        if not wake:
            return await self._db.run(op, write=True)

        async def op_and_notify(conn: Conn) -> T:
            result = await op(conn)
            await self._notify(conn)
            return result

        result = await self._db.run(op_and_notify, write=True)
        if wake_self:
            self._work.set()
        return result

    # --- the queue ------------------------------------------------------------------

    async def enqueue(self, message: NewMessage, *, alone: bool = False) -> QueueId:
        """`alone` changes nothing here: the batch writer's task takes a lone request at once."""
        queue_id = await self._batch.submit(message)
        self._work.set()
        return queue_id

    async def lease_due(
        self, upstream: str, now: float, limit: int, lease_for: float, worker: str
    ) -> list[Lease]:
        node = None if self._node is None else self._node.node
        return await self._write(
            lambda conn: leases.lease_due(
                conn,
                upstream,
                now,
                limit,
                lease_for,
                worker,
                node=node,
                node_timeout=self.node_timeout,
            )
        )

    async def load_body(self, queue_id: QueueId) -> bytes:
        return await self._db.run(lambda conn: ops.load_body(conn, queue_id))

    async def record_outcome(
        self, lease: Lease, outcomes: Sequence[RecipientOutcome], now: float
    ) -> None:
        await self._outcomes.submit(lease, outcomes, now)

    async def renew_lease(self, lease: Lease, now: float, lease_for: float) -> None:
        await self._write(lambda conn: leases.renew_lease(conn, lease, now, lease_for))

    async def release(self, lease: Lease, not_before: float, reason: str) -> None:
        """End a lease unattempted. The other nodes are woken (a stopping node's mail is due
        now); this one is not: its lane released the lease because it must wait."""
        await self._write(
            lambda conn: ops.release(conn, lease, not_before, reason), wake=True, wake_self=False
        )

    async def next_due(self, upstream: str, now: float) -> float | None:
        return await self._db.run(
            lambda conn: leases.next_due(conn, upstream, now, self.node_timeout)
        )

    async def wait_for_work(self, timeout: float) -> None:
        """Return at once if work arrived since the last waiter returned, else wait for
        it (a commit on any node: enqueue, retry, release) or `timeout` seconds."""
        try:
            async with asyncio.timeout(timeout):
                await self._work.wait()
        except TimeoutError:
            return
        self._work.clear()

    # --- the send ledger ------------------------------------------------------------

    async def reserve_send(
        self,
        upstream: str,
        now: float,
        ceilings: Sequence[Ceiling],
        min_interval: float,
        weight: int,
        open_for: float,
    ) -> SendSlot:
        """As the contract says; an upstream without ceilings or min_interval is not
        metered: nothing would ever read its ledger (SQLite prunes it to `now` on every
        reservation), so it costs no transaction and no lock shared by every node."""
        if not ceilings and min_interval <= 0:
            return SendSlot(UNMETERED, now)
        return await self._db.run(  # not one transaction: see ledger.reserve_send
            lambda conn: ledger.reserve_send(
                conn, upstream, now, ceilings, min_interval, weight, open_for
            )
        )

    async def finish_send(self, reservation_id: int, at: float, reached_data: bool) -> None:
        if reservation_id == UNMETERED:
            return
        await self._db.run(lambda conn: ledger.finish_send(conn, reservation_id, at, reached_data))

    async def check_writable(self) -> None:
        """A committed transaction id (the database server watches its own disk)."""
        await self._write(ops.probe_write)

    # --- upstream holds -------------------------------------------------------------

    async def hold_upstream(self, hold: UpstreamHold) -> None:
        await self._write(lambda conn: ops.hold_upstream(conn, hold))

    async def release_upstream(self, upstream: str) -> None:
        await self._write(lambda conn: ops.release_upstream(conn, upstream), wake=True)

    async def upstream_hold(self, upstream: str) -> UpstreamHold | None:
        """The stored hold, even if `until` has passed: the caller compares it with now."""
        return await self._db.run(lambda conn: ops.upstream_hold(conn, upstream))

    async def set_upstream_wait(
        self, upstream: str, reason: str | None, until: float | None
    ) -> None:
        await self._write(lambda conn: ops.set_upstream_wait(conn, upstream, reason, until))

    # --- the queue tool -------------------------------------------------------------

    async def list_messages(
        self, state: RecipientState | None = None, upstream: str | None = None, limit: int = 1000
    ) -> list[MessageView]:
        return await self._db.run(
            lambda conn: ops.list_messages(conn, state, upstream, limit), snapshot=True
        )

    async def show(self, queue_id: QueueId) -> MessageView | None:
        return await self._db.run(lambda conn: ops.show(conn, queue_id), snapshot=True)

    async def counts(self) -> dict[RecipientState, int]:
        """Recipients per state; every state is present, 0 when none."""
        return await self._db.run(ops.counts)

    async def depth(self) -> QueueDepth:
        return await self._db.run(ops.depth, snapshot=True)

    async def retry_now(self, queue_id: QueueId | None, now: float) -> int:
        return await self._write(lambda conn: ops.retry_now(conn, queue_id, now), wake=True)

    async def hold_message(self, queue_id: QueueId) -> int:
        return await self._write(lambda conn: ops.hold_message(conn, queue_id))

    async def release_message(self, queue_id: QueueId, now: float) -> int:
        return await self._write(lambda conn: ops.release_message(conn, queue_id, now), wake=True)

    async def delete_message(self, queue_id: QueueId) -> bool:
        return await self._write(lambda conn: ops.delete_message(conn, queue_id))

    async def purge_finished(self, before: float) -> int:
        """Delete messages whose recipients were all final before `before`; returns how many."""
        return await self._write(lambda conn: ops.purge_finished(conn, before))

    # --- delivery reports -------------------------------------------------------------

    async def report_info(self, queue_id: QueueId) -> ReportInfo | None:
        return await self._db.run(lambda conn: reports.report_info(conn, queue_id), snapshot=True)

    async def mark_delay_warned(self, queue_id: QueueId) -> bool:
        return await self._write(lambda conn: reports.mark_delay_warned(conn, queue_id))

    async def match_bounce(self, parsed: ParsedDsn, now: float) -> QueueId | None:
        return await self._write(lambda conn: reports.match_bounce(conn, parsed, now))

    async def imap_state(self, account: str) -> tuple[int, int] | None:
        return await self._db.run(lambda conn: reports.imap_state(conn, account))

    async def save_imap_state(self, account: str, uidvalidity: int, last_uid: int) -> None:
        await self._write(
            lambda conn: reports.save_imap_state(conn, account, uidvalidity, last_uid)
        )

    # --- the status page --------------------------------------------------------------

    async def add_minute(self, sample: MinuteSample, keep_since: int) -> None:
        await self._write(lambda conn: history.add_minute(conn, sample, keep_since))

    async def minutes(self, since: int) -> list[MinuteSample]:
        return await self._db.run(lambda conn: history.minutes(conn, since))

    async def ledger_sends(self, upstream: str, since: float) -> list[Reservation]:
        return await self._db.run(lambda conn: history.ledger_sends(conn, upstream, since))

    async def recent_problems(self, limit: int) -> list[tuple[float, MessageView]]:
        return await self._db.run(lambda conn: history.recent_problems(conn, limit), snapshot=True)

    async def counts_by_upstream(self) -> dict[str, dict[RecipientState, int]]:
        return await self._db.run(history.counts_by_upstream)

    # --- leadership (optional contract, see base.Leadership) ----------------------------

    async def try_lead(self, name: str) -> bool:
        return await self._leadership.try_lead(name)

    async def resign(self, name: str) -> None:
        await self._leadership.resign(name)
