"""Group commit for the PostgreSQL store: concurrent enqueues share one transaction.

Intake answers 250 only after the commit, and with synchronous_commit on a commit waits
for the WAL flush, so one transaction per message would cap acceptance at the disk's
flush rate. One writer task takes every enqueue waiting, inserts them all and NOTIFYs in
one statement of parallel arrays (its own transaction: one round trip, no BEGIN/COMMIT),
and only then resolves each caller's future. If the batch fails for a reason that belongs
to one message (a duplicate queue id, bad bytes), it is redone with one SAVEPOINT per
message so only that caller fails; if the server is unavailable, every caller gets
StoreUnavailable and the SMTP client retries. A caller waits at most COMMIT_TIMEOUT for
its commit (intake answers 451 within it when the database does not); a message whose
caller gave up before its batch began is not written.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import asyncpg

from relayd.errors import StoreError, StoreUnavailable
from relayd.store.batching import GroupWriter
from relayd.store.postgres import ops
from relayd.store.postgres.db import Database, translate
from relayd.store.postgres.sql import Conn, Q
from relayd.types import NewMessage, QueueId

Signal = Callable[[], tuple[str, str]]  # the NOTIFY channel and payload of a commit
COMMIT_TIMEOUT = 8.0  # seconds an enqueue waits for its commit: below SMTP clients' patience


@dataclass
class _Request:
    message: NewMessage
    future: asyncio.Future[QueueId]


class _OneFailed(Exception):
    """The batch statement failed for a reason that may belong to one message only."""


class GroupCommit(GroupWriter[_Request]):
    """The enqueue writer: `submit` returns once the message's transaction committed."""

    what = "enqueue batch"

    def __init__(self, db: Database, signal: Signal) -> None:
        super().__init__("relayd-postgres-writer")
        self._db = db
        self._signal = signal

    async def submit(self, message: NewMessage) -> QueueId:
        self._check_open()
        request = _Request(ops.with_queue_id(message), asyncio.get_running_loop().create_future())
        self._queue.put_nowait(request)
        try:
            async with asyncio.timeout(COMMIT_TIMEOUT):
                return await request.future  # cancelled on timeout: the writer skips it
        except TimeoutError:
            raise StoreUnavailable(
                f"postgres: no commit within {COMMIT_TIMEOUT:g}s; "
                "is the database server reachable and answering?"
            ) from None

    def _result(self, request: _Request) -> QueueId:
        assert request.message.queue_id is not None
        return request.message.queue_id

    async def _commit(self, batch: list[_Request]) -> list[StoreError | None]:
        """One statement for the batch; per-message savepoints only if it must."""
        messages = [request.message for request in batch]
        async with self._db.connection() as conn:
            try:
                await self._insert_all(conn, messages)
            except _OneFailed:
                errors = await self._commit_one_by_one(conn, messages)
            else:
                errors = [None] * len(batch)
        self._db.commits += 1
        return errors

    async def _insert_all(self, conn: Conn, messages: list[NewMessage]) -> None:
        try:
            await insert_and_notify(conn, messages, *self._signal())
        except asyncpg.PostgresError as exc:
            if len(messages) > 1 and not isinstance(translate(exc), StoreUnavailable):
                raise _OneFailed() from exc
            raise

    async def _commit_one_by_one(
        self, conn: Conn, messages: list[NewMessage]
    ) -> list[StoreError | None]:
        errors: list[StoreError | None] = []
        async with conn.transaction():
            for message in messages:
                try:
                    async with conn.transaction():  # a SAVEPOINT inside the batch
                        # PostgreSQL sends a transaction's identical NOTIFYs once, at COMMIT.
                        await insert_and_notify(conn, [message], *self._signal())
                except asyncpg.PostgresError as exc:
                    error = translate(exc)
                    if isinstance(error, StoreUnavailable):
                        raise
                    errors.append(error)
                else:
                    errors.append(None)
        return errors


async def insert_and_notify(
    conn: Conn, messages: Sequence[NewMessage], channel: str, payload: str
) -> None:
    """Insert messages (queue ids decided) with their bodies and recipients, and NOTIFY:
    one statement whatever the batch size."""
    rows = [
        (m.queue_id, i, rcpt.address, float(m.received_at), rcpt.dsn.notify, rcpt.dsn.orcpt)
        for m in messages
        for i, rcpt in enumerate(m.recipients)
    ]
    query = Q["insert_batch_and_notify"]
    values = query.args(
        ids=[m.queue_id for m in messages],
        upstreams=[m.upstream for m in messages],
        mail_froms=[m.mail_from for m in messages],
        message_ids=[m.message_id for m in messages],
        received=[float(m.received_at) for m in messages],
        sizes=[len(m.body) for m in messages],
        options=[json.dumps(list(m.mail_options)) for m in messages],
        auth_users=[m.auth_user for m in messages],
        clients=[m.client for m in messages],
        bodies=[m.body for m in messages],
        queue_ids=[row[0] for row in rows],
        idxs=[row[1] for row in rows],
        addresses=[row[2] for row in rows],
        dues=[row[3] for row in rows],
        notifies=[row[4] for row in rows],
        orcpts=[row[5] for row in rows],
        channel=channel,
        payload=payload,
    )
    await conn.execute(query.sql, *values)
