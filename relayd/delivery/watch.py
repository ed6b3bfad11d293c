"""How a lane's idle workers wait, and which of them wake when mail arrives: one, not all.

Every commit of new work (an enqueue, a retry, a release) sets the store's new-work signal.
When all of a lane's `max_connections` idle workers waited on it, one message woke them
all, and each asked the store for due mail (a hold, the due check, the next due time: each
a hop to the store's thread and back) only to find that one of them had taken it: one
message at a time cost the delivering process about 37 context switches per message with
four workers. Now the idle workers take turns: one (the watcher) waits on the signal, the
others queue behind it, so a signal wakes one worker and the next in line watches. A worker
that leased a full batch found a backlog: it wakes every idle worker (`wake_all`), since
each may find work of its own.

Nothing is lost by waking fewer: the signal stays set until a waiter takes it, a busy worker
asks the store again as soon as its batch is done, and every wait has its own timeout.
"""

from __future__ import annotations

import asyncio

from relayd.clock import Clock
from relayd.store.base import DeliveryQueue


class Watch:
    """The idle workers of one lane: their turns at the store's new-work signal."""

    def __init__(self, store: DeliveryQueue, clock: Clock) -> None:
        self._store = store
        self._clock = clock
        self._turn = asyncio.Lock()  # held by the worker that watches
        self._everyone = asyncio.Event()  # set and cleared at once: wakes who waits now
        self._stopped = asyncio.Event()

    async def idle(self, seconds: float, *, watch: bool = True) -> bool:
        """Sleep up to `seconds`; True when new work (in this worker's turn to watch for
        it), a backlog or stop() cut it short. A worker the upstream does not want now
        (delivery/slots.py) does not watch: it would take a turn and leave the mail waiting."""
        started = self._clock.monotonic()
        waiters = [self._clock.sleep(seconds), self._stopped.wait(), self._everyone.wait()]
        if watch:
            waiters.append(self._new_work(seconds))
        tasks = {asyncio.ensure_future(w) for w in waiters}
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
        return self._clock.monotonic() - started < seconds * 0.99

    async def _new_work(self, timeout: float) -> None:
        async with self._turn:
            await self._store.wait_for_work(timeout)

    def wake_all(self) -> None:
        """Wake every worker waiting now, watcher or not."""
        self._everyone.set()
        self._everyone.clear()

    def stop(self) -> None:
        """Wake every worker for good: the lane stops."""
        self._stopped.set()
