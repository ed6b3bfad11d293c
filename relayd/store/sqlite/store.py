"""The default store backend: one SQLite file, WAL, synchronous=FULL, group commit.

SqliteStore is the `Store` contract (store/base.py) in async domain verbs. It owns no
SQL and no threads itself: the transaction bodies are in sqlite/ops.py (over the named
queries of sqlite.sql) and the connection, its thread and the group-committing writer are
in sqlite/db.py. What lives here is which verbs are writes (batched, one fsync per batch)
and which are reads, and the in-process "new work" event for wait_for_work().
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

from relayd.dsn.parse import ParsedDsn
from relayd.errors import LeaseLost, StoreError, StoreUnavailable
from relayd.policy.limits import Reservation
from relayd.store.base import MinuteSample, ReportInfo, SendSlot
from relayd.store.sqlite import history, ledger, ops, reports
from relayd.store.sqlite.db import DEFAULT_LOCK_TIMEOUT, Database
from relayd.store.sqlite.instance import InstanceLock
from relayd.store.wakeup import Wakeup
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
from relayd.units import format_size

EXTERNAL_POLL = 1.0  # seconds between checks for commits made by other processes
# check_writable's floor: below this much free space the next enqueue, or the checkpoint
# after it, is likely to fail even when a one-page probe still fits in the WAL's old space.
READY_FREE_MIN = 1024 * 1024


class SqliteStore:
    """The queue, the rate ledger and upstream holds in one SQLite database at `path`.

    `lock_timeout` (queue.lock_timeout) is how long a write waits for another process's
    lock (the queue tool, a backup): the queue's write lock, then SQLite's own; then it fails
    with StoreUnavailable. Use as `async with SqliteStore(p)`, or call open() and close().
    """

    def __init__(self, path: Path, *, lock_timeout: float = DEFAULT_LOCK_TIMEOUT) -> None:
        self._db = Database(path, busy_timeout=lock_timeout, lock_timeout=lock_timeout)
        self._work = asyncio.Event()
        self._wakeup = Wakeup(path)
        self._external_poll: asyncio.Task[None] | None = None
        self._instance = InstanceLock(path)

    @property
    def path(self) -> Path:
        return self._db.path

    @property
    def commits(self) -> int:
        """Write transactions committed so far (fewer than writes: group commit)."""
        return self._db.commits

    async def open(self) -> None:
        """Create the parent directory and the schema (or check it); then usable."""
        await self._db.open()

    async def close(self) -> None:
        """Commit every write already submitted, then close the connection on its thread."""
        self._wakeup.close()
        if self._external_poll is not None:
            self._external_poll.cancel()
            await asyncio.gather(self._external_poll, return_exceptions=True)
        await self._db.close()
        self._instance.release()

    async def claim_queue(self) -> int:
        """Become the one daemon delivering from this queue until close() (the instance
        lock, sqlite/instance.py), then release every lease an earlier run left."""
        self._instance.acquire()
        released = await self._db.write(ops.release_all_leases)
        if released:
            self._new_work()
        return released

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def _new_work(self) -> None:
        """Wake a waiter in this process and, through the wake-up socket, in any other."""
        self._work.set()
        self._wakeup.poke()

    # --- the queue ------------------------------------------------------------------

    async def enqueue(self, message: NewMessage, *, alone: bool = False) -> QueueId:
        queue_id = await self._db.write(lambda conn: ops.enqueue(conn, message), alone=alone)
        self._new_work()
        return queue_id

    async def lease_due(
        self, upstream: str, now: float, limit: int, lease_for: float, worker: str
    ) -> list[Lease]:
        """Read first: many calls find nothing (a worker looks again after every batch, and
        each lane's next idle worker on every new message), and a write transaction would
        take the queue's write lock that intake's commits wait for."""
        if not await self._db.read_now(lambda conn: ops.any_due(conn, upstream, now)):
            return []
        return await self._db.write(
            lambda conn: ops.lease_due(conn, upstream, now, limit, lease_for, worker), durable=False
        )

    async def load_body(self, queue_id: QueueId) -> bytes:
        return await self._db.read_now(lambda conn: ops.load_body(conn, queue_id))

    async def record_outcome(
        self, lease: Lease, outcomes: Sequence[RecipientOutcome], now: float
    ) -> None:
        await self._db.write(
            lambda conn: ops.record_outcome(conn, lease, outcomes, now), durable=False
        )

    async def renew_lease(self, lease: Lease, now: float, lease_for: float) -> None:
        """Only this daemon leases (the instance lock), so the lease is lost only when it
        ran out and another of its workers took the message."""
        values = {"queue_id": lease.queue_id, "token": lease.token, "lease_until": now + lease_for}
        renewed = await self._db.write(
            lambda conn: conn.execute(ops.Q["renew_lease"], values).rowcount, durable=False
        )
        if not renewed:
            raise LeaseLost()

    async def release(self, lease: Lease, not_before: float, reason: str) -> None:
        await self._db.write(
            lambda conn: ops.release(conn, lease, not_before, reason), durable=False
        )

    async def next_due(self, upstream: str, now: float) -> float | None:
        return await self._db.read_now(lambda conn: ops.next_due(conn, upstream, now))

    async def wait_for_work(self, timeout: float) -> None:
        """Return at once if work arrived since the last waiter returned, else wait for it
        (enqueue, retry_now, release_message, release_upstream) or `timeout` seconds.

        Another process's commit (`relayd queue retry`, a sendmail fallback, intake in
        another process) wakes the waiter too: at once through the wake-up socket, or
        within EXTERNAL_POLL seconds by SQLite's data_version, which tells commits of other
        processes from this one's (Database.others_committed). One poll per store,
        not one per waiter: the daemon's every lane worker waits here after every message.
        """
        self._wakeup.listen(self._work)
        if self._external_poll is None:
            self._external_poll = asyncio.create_task(self._poll_external_commits())
        try:
            async with asyncio.timeout(timeout):
                await self._work.wait()
        except TimeoutError:
            return
        self._work.clear()

    async def _poll_external_commits(self) -> None:
        """Every EXTERNAL_POLL seconds: another connection committed? Then there may be work
        (the fallback where the wake-up socket does not reach)."""
        version: tuple[int, int] | None = None
        while True:
            current = version
            with contextlib.suppress(StoreError):  # closing, or briefly unavailable
                current = await self._db.data_version()
            if version and current and self._db.others_committed(version, current):
                self._work.set()
            version = current
            await asyncio.sleep(EXTERNAL_POLL)

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
        return await self._db.write(
            lambda conn: ledger.reserve_send(
                conn, upstream, now, ceilings, min_interval, weight, open_for
            ),
            durable=False,
        )

    async def finish_send(self, reservation_id: int, at: float, reached_data: bool) -> None:
        await self._db.write(
            lambda conn: ledger.finish_send(conn, reservation_id, at, reached_data), durable=False
        )

    # --- readiness ------------------------------------------------------------------

    async def check_writable(self) -> None:
        """Room to grow on the queue's file system, then a durable write (fsynced).

        The free space counts: the WAL reuses its file after a checkpoint, so a small
        write can still commit on a full disk while every message gets 451."""
        directory = self.path.parent
        try:
            _total, _used, free = await asyncio.to_thread(shutil.disk_usage, directory)
        except OSError as exc:
            raise StoreUnavailable(f"cannot measure the free space of {directory}: {exc}") from exc
        if free < READY_FREE_MIN:
            raise StoreUnavailable(
                f"disk full: {format_size(free)} free on the file system holding {directory}, "
                f"intake needs at least {format_size(READY_FREE_MIN)} to commit mail; "
                "free space there"
            )
        await self._db.write(ops.probe_write)

    # --- upstream holds -------------------------------------------------------------

    async def hold_upstream(self, hold: UpstreamHold) -> None:
        await self._db.write(lambda conn: ops.hold_upstream(conn, hold))

    async def release_upstream(self, upstream: str) -> None:
        await self._db.write(lambda conn: ops.release_upstream(conn, upstream))
        self._new_work()

    async def upstream_hold(self, upstream: str) -> UpstreamHold | None:
        """The stored hold, even if `until` has passed: the caller compares it with now."""
        return await self._db.read_now(lambda conn: ops.upstream_hold(conn, upstream))

    async def set_upstream_wait(
        self, upstream: str, reason: str | None, until: float | None
    ) -> None:
        await self._db.write(
            lambda conn: ops.set_upstream_wait(conn, upstream, reason, until), durable=False
        )

    # --- the queue tool -------------------------------------------------------------

    async def list_messages(
        self, state: RecipientState | None = None, upstream: str | None = None, limit: int = 1000
    ) -> list[MessageView]:
        return await self._db.read(lambda conn: ops.list_messages(conn, state, upstream, limit))

    async def show(self, queue_id: QueueId) -> MessageView | None:
        return await self._db.read(lambda conn: ops.show(conn, queue_id))

    async def counts(self) -> dict[RecipientState, int]:
        """Recipients per state; every state is present, 0 when none."""
        return await self._db.read(ops.counts)

    async def depth(self) -> QueueDepth:
        return await self._db.read(ops.depth)

    async def retry_now(self, queue_id: QueueId | None, now: float) -> int:
        changed = await self._db.write(lambda conn: ops.retry_now(conn, queue_id, now))
        self._new_work()
        return changed

    async def hold_message(self, queue_id: QueueId) -> int:
        return await self._db.write(lambda conn: ops.hold_message(conn, queue_id))

    async def release_message(self, queue_id: QueueId, now: float) -> int:
        changed = await self._db.write(lambda conn: ops.release_message(conn, queue_id, now))
        self._new_work()
        return changed

    async def delete_message(self, queue_id: QueueId) -> bool:
        return await self._db.write(lambda conn: ops.delete_message(conn, queue_id))

    async def purge_finished(self, before: float) -> int:
        """Delete messages whose recipients were all final before `before`; returns how many."""
        return await self._db.write(lambda conn: ops.purge_finished(conn, before))

    # --- delivery reports -------------------------------------------------------------

    async def report_info(self, queue_id: QueueId) -> ReportInfo | None:
        return await self._db.read(lambda conn: reports.report_info(conn, queue_id))

    async def mark_delay_warned(self, queue_id: QueueId) -> bool:
        return await self._db.write(lambda conn: reports.mark_delay_warned(conn, queue_id))

    async def match_bounce(self, parsed: ParsedDsn, now: float) -> QueueId | None:
        return await self._db.write(lambda conn: reports.match_bounce(conn, parsed, now))

    async def imap_state(self, account: str) -> tuple[int, int] | None:
        return await self._db.read(lambda conn: reports.imap_state(conn, account))

    async def save_imap_state(self, account: str, uidvalidity: int, last_uid: int) -> None:
        await self._db.write(
            lambda conn: reports.save_imap_state(conn, account, uidvalidity, last_uid)
        )

    # --- the status page --------------------------------------------------------------

    async def add_minute(self, sample: MinuteSample, keep_since: int) -> None:
        await self._db.write(
            lambda conn: history.add_minute(conn, sample, keep_since), durable=False
        )

    async def minutes(self, since: int) -> list[MinuteSample]:
        return await self._db.read(lambda conn: history.minutes(conn, since))

    async def ledger_sends(self, upstream: str, since: float) -> list[Reservation]:
        return await self._db.read(lambda conn: history.ledger_sends(conn, upstream, since))

    async def recent_problems(self, limit: int) -> list[tuple[float, MessageView]]:
        return await self._db.read(lambda conn: history.recent_problems(conn, limit))

    async def counts_by_upstream(self) -> dict[str, dict[RecipientState, int]]:
        return await self._db.read(history.counts_by_upstream)
