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
from relayd.store.batching import next_batch
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


class OutcomeBatch:
    """The outcome writer: `submit` returns once the outcome's transaction committed."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._queue: asyncio.Queue[_Outcome | None] = asyncio.Queue()
        self._writer: asyncio.Task[None] | None = None
        self._closed = False

    def start(self) -> None:
        self._writer = asyncio.create_task(self._write_loop(), name="relayd-postgres-outcomes")

    async def close(self) -> None:
        """Refuse new work and write what was already submitted."""
        if self._closed:
            return
        self._closed = True
        if self._writer is not None:
            self._queue.put_nowait(None)
            await self._writer

    async def submit(self, lease: Lease, outcomes: Sequence[RecipientOutcome], now: float) -> None:
        if self._closed or self._writer is None:
            raise StoreError("the store is closed" if self._closed else "the store is not open")
        for outcome in outcomes:
            if outcome.recipient not in lease.addresses:
                raise StoreError(
                    f"outcome for {outcome.recipient!r}, which the lease does not cover"
                )
        request = _Outcome(lease, outcomes, now, asyncio.get_running_loop().create_future())
        self._queue.put_nowait(request)
        await request.future

    async def _write_loop(self) -> None:
        stopping = False
        while not stopping:
            batch, stopping = await next_batch(self._queue)
            batch = [request for request in batch if not request.future.done()]
            if not batch:
                continue
            try:
                errors = await self._commit(batch)
            except StoreError as exc:
                errors = [_copy(exc) for _ in batch]
            except Exception as exc:  # the writer must outlive any one batch
                errors = [StoreError(f"outcome batch failed: {exc!r}") for _ in batch]
            for request, error in zip(batch, errors, strict=True):
                if request.future.done():  # the caller was cancelled
                    continue
                if error is None:
                    request.future.set_result(None)
                else:
                    request.future.set_exception(error)

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


def _copy(error: StoreError) -> StoreError:
    """One exception object per caller: each raise gets its own traceback."""
    copy = type(error)(str(error))
    copy.__cause__ = error.__cause__
    return copy
