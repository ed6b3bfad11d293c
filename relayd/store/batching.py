"""Group commit's batch bound, and the PostgreSQL writer's step: take every request waiting.

The PostgreSQL writer queues its requests in an asyncio.Queue closed by a None sentinel;
SQLite's write thread drains its own queue once it holds the write lock (sqlite/db.py).
"""

from __future__ import annotations

import asyncio
from typing import TypeVar

R = TypeVar("R")

MAX_BATCH = 500  # bounds one transaction's size and the latency of its first caller


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
