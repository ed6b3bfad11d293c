"""LaneSet: the dispatcher's lanes, supervised so that a reload can replace some of them.

The daemon runs one Lane (delivery/lane.py) per upstream, `max_connections` workers each,
and `apply(config)`, which a SIGHUP reload calls. An upstream whose settings changed gets a
new lane once the old one has finished its in-flight send (its leased but unsent mail goes
back to the queue, in its place); a new upstream gets a lane; a removed one loses its lane
(its mail stays queued); every other lane keeps running and only sees the new global
settings (retry schedule, lifetimes).

A worker that ends while its lane was not told to stop, or with an exception, is a failure:
run() cancels the rest and raises, and the daemon stops with a non-zero exit code.
"""

from __future__ import annotations

import asyncio

from relayd.clock import Clock
from relayd.config.model import Config, UpstreamConfig
from relayd.delivery.lane import Lane, LaneStore, SessionFactory
from relayd.delivery.notices import UpstreamNotices
from relayd.logs import get_logger

log = get_logger("lanes")


class LaneSet:
    """Every upstream's lane: run, stop, in_flight, and apply(config) on reload."""

    def __init__(
        self,
        config: Config,
        store: LaneStore,
        clock: Clock,
        worker: str,
        session_factory: SessionFactory,
        notices: UpstreamNotices | None = None,
    ) -> None:
        self.config = config
        self.notices = notices
        self.store = store
        self.clock = clock
        self.worker = worker
        self.session_factory = session_factory
        self.lanes: dict[str, Lane] = {}
        self._tasks: dict[asyncio.Task[None], Lane] = {}
        self._changed = asyncio.Event()
        self.stopping = False

    @property
    def in_flight(self) -> int:
        return sum(lane.in_flight for lane in set(self._tasks.values()))

    async def run(self) -> None:
        for upstream in self.config.upstreams.values():
            await self._start(upstream)
        try:
            await self._supervise()
        finally:
            for task in self._tasks:
                task.cancel()
            if self._tasks:
                await asyncio.wait(self._tasks)

    def stop(self) -> None:
        """Stop leasing everywhere; run() returns when the in-flight sends are done."""
        self.stopping = True
        for lane in self.lanes.values():
            lane.stop()
        self._changed.set()

    async def apply(self, config: Config, grace: float) -> list[str]:
        """Swap in a new configuration; returns the upstreams whose lanes were (re)started."""
        old, self.config = self.config, config
        restarted: list[str] = []
        for name, lane in list(self.lanes.items()):
            new = config.upstreams.get(name)
            if new is None or new != old.upstreams.get(name):
                await self._retire(lane, grace, "removed" if new is None else "changed")
            else:
                lane.config = config  # the retry schedule, lifetimes, hostname
        for name, upstream in config.upstreams.items():
            if name not in self.lanes and not self.stopping:
                await self._start(upstream)
                restarted.append(name)
        return restarted

    async def _start(self, upstream: UpstreamConfig) -> None:
        lane = Lane(
            self.config,
            upstream,
            self.store,
            self.clock,
            self.worker,
            self.session_factory,
            self.notices,
        )
        await lane.start()
        if self.stopping:  # stop() came while lane.start() read the store: it missed this lane
            return
        self.lanes[upstream.name] = lane
        for index in range(upstream.max_connections):
            task = asyncio.create_task(lane.run_worker(index), name=f"lane-{lane.name}-{index}")
            self._tasks[task] = lane
        self._changed.set()

    async def _retire(self, lane: Lane, grace: float, why: str) -> None:
        """Stop a lane and wait (up to `grace`) for its in-flight send to finish."""
        del self.lanes[lane.name]
        lane.stop()
        tasks = [task for task, owner in self._tasks.items() if owner is lane]
        pending: set[asyncio.Task[None]] = set()
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=grace)
            for task in pending:
                task.cancel()  # it releases its leases (lane.py): tried again at once
        log.info("lane_stopped", upstream=lane.name, reason=why, cancelled=len(pending))

    async def _supervise(self) -> None:
        while self._tasks or not self.stopping:
            self._changed.clear()
            changed = asyncio.ensure_future(self._changed.wait())
            done, _ = await asyncio.wait(
                {changed, *self._tasks}, return_when=asyncio.FIRST_COMPLETED
            )
            changed.cancel()
            for task in self._tasks.keys() & done:
                self._check_ended(task, self._tasks.pop(task))

    @staticmethod
    def _check_ended(task: asyncio.Task[None], lane: Lane) -> None:
        if task.cancelled():
            if lane.stopping:
                return
            raise RuntimeError(f"dispatcher lane {lane.name} was cancelled")
        error = task.exception()
        if error is not None:
            raise error
        if not lane.stopping:
            raise RuntimeError(f"dispatcher lane {lane.name} stopped")
