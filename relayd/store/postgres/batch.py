"""Group commit for the PostgreSQL store: concurrent enqueues share one transaction.

Intake answers 250 only after the commit, and with synchronous_commit on a commit waits
for the WAL flush, so one transaction per message would cap acceptance at the disk's
flush rate. One writer task takes every enqueue waiting, inserts them all with three
array statements (messages, bodies, recipients) and one NOTIFY, commits once, and only
then resolves each caller's future. If the batch fails for a reason that belongs to one
message (a duplicate queue id, bad bytes), it is redone with one SAVEPOINT per message
so only that caller fails; if the server is unavailable, every caller gets
StoreUnavailable and the SMTP client retries. A caller waits at most COMMIT_TIMEOUT for
its commit (intake answers 451 within it when the database does not); a message whose
caller gave up before its batch began is not written.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import asyncpg

from relayd.errors import StoreError, StoreUnavailable
from relayd.store.batching import next_batch
from relayd.store.postgres import ops
from relayd.store.postgres.db import Database, translate
from relayd.store.postgres.sql import Conn
from relayd.types import NewMessage, QueueId

Notify = Callable[[Conn], Awaitable[None]]
COMMIT_TIMEOUT = 8.0  # seconds an enqueue waits for its commit: below SMTP clients' patience


@dataclass
class _Request:
    message: NewMessage
    future: asyncio.Future[QueueId]


class _OneFailed(Exception):
    """The batch statement failed for a reason that may belong to one message only."""


class GroupCommit:
    """The enqueue writer: `submit` returns once the message's transaction committed."""

    def __init__(self, db: Database, notify: Notify) -> None:
        self._db = db
        self._notify = notify
        self._queue: asyncio.Queue[_Request | None] = asyncio.Queue()
        self._writer: asyncio.Task[None] | None = None
        self._closed = False

    def start(self) -> None:
        self._writer = asyncio.create_task(self._write_loop(), name="relayd-postgres-writer")

    async def close(self) -> None:
        """Refuse new work and commit what was already submitted."""
        if self._closed:
            return
        self._closed = True
        if self._writer is not None:
            self._queue.put_nowait(None)
            await self._writer

    async def submit(self, message: NewMessage) -> QueueId:
        if self._closed or self._writer is None:
            raise StoreError("the store is closed" if self._closed else "the store is not open")
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
                errors = [StoreError(f"enqueue batch failed: {exc!r}") for _ in batch]
            for request, error in zip(batch, errors, strict=True):
                if request.future.done():  # the caller was cancelled
                    continue
                if error is None:
                    assert request.message.queue_id is not None
                    request.future.set_result(request.message.queue_id)
                else:
                    request.future.set_exception(error)

    async def _commit(self, batch: list[_Request]) -> list[StoreError | None]:
        """One transaction for the batch; per-message savepoints only if it must."""
        messages = [request.message for request in batch]
        async with self._db.connection() as conn:
            try:
                async with conn.transaction():
                    await self._insert_all(conn, messages)
            except _OneFailed:
                errors = await self._commit_one_by_one(conn, messages)
            else:
                errors = [None] * len(batch)
        self._db.commits += 1
        return errors

    async def _insert_all(self, conn: Conn, messages: list[NewMessage]) -> None:
        try:
            await ops.insert_messages(conn, messages)
        except asyncpg.PostgresError as exc:
            if len(messages) > 1 and not isinstance(translate(exc), StoreUnavailable):
                raise _OneFailed() from exc
            raise
        await self._notify(conn)

    async def _commit_one_by_one(
        self, conn: Conn, messages: list[NewMessage]
    ) -> list[StoreError | None]:
        errors: list[StoreError | None] = []
        async with conn.transaction():
            for message in messages:
                try:
                    async with conn.transaction():  # a SAVEPOINT inside the batch
                        await ops.insert_messages(conn, [message])
                except asyncpg.PostgresError as exc:
                    error = translate(exc)
                    if isinstance(error, StoreUnavailable):
                        raise
                    errors.append(error)
                else:
                    errors.append(None)
            if any(error is None for error in errors):
                await self._notify(conn)
        return errors


def _copy(error: StoreError) -> StoreError:
    """One exception object per caller: each raise gets its own traceback."""
    copy = type(error)(str(error))
    copy.__cause__ = error.__cause__
    return copy
