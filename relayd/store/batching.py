"""Group commit's batch bound, and the PostgreSQL writers' loop (GroupWriter).

A PostgreSQL writer (postgres/batch.py for enqueues, postgres/outcomes.py for outcomes)
queues its requests in an asyncio.Queue closed by a None sentinel; one task takes every
request waiting, commits them together and answers each caller. SQLite's write thread
drains its own queue once it holds the write lock (sqlite/db.py).
"""

from __future__ import annotations

import asyncio
from typing import Any, Generic, Protocol, TypeVar

from relayd.errors import StoreError

MAX_BATCH = 500  # bounds one transaction's size and the latency of its first caller


class Request(Protocol):
    @property
    def future(self) -> asyncio.Future[Any]: ...


R = TypeVar("R", bound=Request)


class GroupWriter(Generic[R]):
    """One writer task: `_commit` a batch, then answer each caller with `_result` or its error.

    Subclasses say what a batch is (`_commit`, one error or None per request, in order) and
    what a caller gets back (`_result`); `what` names the batch in an unforeseen error."""

    what = "batch"

    def __init__(self, task_name: str) -> None:
        self._task_name = task_name
        self._queue: asyncio.Queue[R | None] = asyncio.Queue()
        self._writer: asyncio.Task[None] | None = None
        self._closed = False

    def start(self) -> None:
        self._writer = asyncio.create_task(self._write_loop(), name=self._task_name)

    async def close(self) -> None:
        """Refuse new work and commit what was already submitted."""
        if self._closed:
            return
        self._closed = True
        if self._writer is not None:
            self._queue.put_nowait(None)
            await self._writer

    def _check_open(self) -> None:
        if self._closed or self._writer is None:
            raise StoreError("the store is closed" if self._closed else "the store is not open")

    async def _commit(self, batch: list[R]) -> list[StoreError | None]:
        raise NotImplementedError

    def _result(self, request: R) -> object:
        return None

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
                errors = [StoreError(f"{self.what} failed: {exc!r}") for _ in batch]
            for request, error in zip(batch, errors, strict=True):
                if request.future.done():  # the caller was cancelled
                    continue
                if error is None:
                    request.future.set_result(self._result(request))
                else:
                    request.future.set_exception(error)


async def next_batch(queue: asyncio.Queue[R | None]) -> tuple[list[R], bool]:
    """Every request waiting now (at least one); True once close()'s sentinel is seen."""
    first = await queue.get()
    if first is None:
        return [], True
    batch = [first]
    while len(batch) < MAX_BATCH and not queue.empty():
        request = queue.get_nowait()
        if request is None:
            return batch, True
        batch.append(request)
    return batch, False


def _copy(error: StoreError) -> StoreError:
    """One exception object per caller: each raise gets its own traceback."""
    copy = type(error)(str(error))
    copy.__cause__ = error.__cause__
    return copy
