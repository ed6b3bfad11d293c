"""Group commit for attempt outcomes: concurrent record_outcome calls share a transaction.

A lane records a message's outcome while it sends the next, so with several lane workers
the outcomes of one node arrive together. One at a time, each was a transaction of its own
(BEGIN, fence, recipients, end of the lease, COMMIT: five round trips and a WAL flush per
delivered message). The writer task here takes every outcome waiting, fences them with one
statement (the message rows locked in id order until COMMIT, as ops.record_outcome locks
one), writes the recipients and ends the leases with one statement each, commits once, and
only then answers each caller; as with SQLite's write thread, the longer a commit takes,
the more outcomes share the next one. A lease whose token moved gets LeaseLost and
changes nothing, alone. If the batch fails for a reason that may belong to one outcome, or
loses a deadlock or serialisation conflict, each is redone in a transaction of its own
(ops.record_outcome), so only its own caller sees its error; if the server is unavailable,
every caller gets StoreUnavailable (the lease expires, the message is tried again).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg

from relayd.errors import LeaseLost, StoreError, StoreUnavailable
from relayd.store.batching import GroupWriter
from relayd.store.postgres import ops
from relayd.store.postgres.db import Database, translate
from relayd.store.postgres.sql import Conn, Q
from relayd.types import Lease, RecipientOutcome

_CONFLICTS = ("40001", "40P01")  # serialization_failure, deadlock_detected: per transaction


@dataclass
class _Outcome:
    lease: Lease
    outcomes: Sequence[RecipientOutcome]
    now: float
    future: asyncio.Future[None]


class OutcomeBatch(GroupWriter[_Outcome]):
    """The outcome writer: `submit` returns once the outcome's transaction committed."""

    what = "outcome batch"

    def __init__(self, db: Database) -> None:
        super().__init__("relayd-postgres-outcomes")
        self._db = db

    async def submit(self, lease: Lease, outcomes: Sequence[RecipientOutcome], now: float) -> None:
        self._check_open()
        for outcome in outcomes:
            if outcome.recipient not in lease.addresses:
                raise StoreError(
                    f"outcome for {outcome.recipient!r}, which the lease does not cover"
                )
        request = _Outcome(lease, outcomes, now, asyncio.get_running_loop().create_future())
        self._queue.put_nowait(request)
        await request.future

    async def _commit(self, batch: list[_Outcome]) -> list[StoreError | None]:
        """One transaction for the batch; one per outcome only if it must."""
        async with self._db.connection() as conn:
            try:
                async with conn.transaction():
                    errors = await _record_all(conn, batch)
            except asyncpg.PostgresError as exc:
                error = translate(exc)
                conflict = exc.sqlstate in _CONFLICTS
                if len(batch) == 1 or (isinstance(error, StoreUnavailable) and not conflict):
                    raise error from exc
                return await self._commit_one_by_one(conn, batch)
        self._db.commits += 1
        return errors

    async def _commit_one_by_one(
        self, conn: Conn, batch: list[_Outcome]
    ) -> list[StoreError | None]:
        errors: list[StoreError | None] = []
        for request in batch:
            try:
                async with conn.transaction():
                    await ops.record_outcome(conn, request.lease, request.outcomes, request.now)
            except StoreError as exc:  # LeaseLost
                errors.append(exc)
            except asyncpg.PostgresError as exc:
                errors.append(translate(exc))
            else:
                self._db.commits += 1
                errors.append(None)
        return errors


async def _record_all(conn: Conn, batch: list[_Outcome]) -> list[StoreError | None]:
    """The batch's writes, inside its transaction: fence, recipients, leases and bodies."""
    query = Q["lock_leases"]
    ids = sorted({request.lease.queue_id for request in batch})
    tokens = {row["id"]: row["lease_token"] for row in await conn.fetch(query.sql, ids)}
    errors: list[StoreError | None] = []
    fenced: list[_Outcome] = []
    for request in batch:
        token = request.lease.token
        if token is None or tokens.get(request.lease.queue_id) != token:
            errors.append(LeaseLost())
            continue
        tokens.pop(request.lease.queue_id)  # a second outcome for one lease finds it ended
        fenced.append(request)
        errors.append(None)
    if not fenced:
        return errors
    rows = [
        (request.lease.queue_id, outcome, float(request.now))
        for request in fenced
        for outcome in request.outcomes
    ]
    pending = [not outcome.state.is_final for _, outcome, _ in rows]
    query = Q["record_batch_recipients"]
    values = query.args(
        queue_ids=[queue_id for queue_id, _, _ in rows],
        addresses=[outcome.recipient for _, outcome, _ in rows],
        states=[outcome.state.value for _, outcome, _ in rows],
        replies=[outcome.reply for _, outcome, _ in rows],
        next=[
            (now if outcome.next_attempt_at is None else float(outcome.next_attempt_at))
            if waits
            else None
            for (_, outcome, now), waits in zip(rows, pending, strict=True)
        ],
        reasons=[
            outcome.wait_reason if waits else None
            for (_, outcome, _), waits in zip(rows, pending, strict=True)
        ],
        nows=[now for _, _, now in rows],
    )
    await conn.execute(query.sql, *values)
    query = Q["end_leases_and_drop_finished_bodies"]
    await conn.execute(query.sql, [request.lease.queue_id for request in fenced])
    return errors
