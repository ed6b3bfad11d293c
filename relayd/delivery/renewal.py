"""Keeping a lease while its message is sent, and not sending the message without it.

A send can outlast queue.lease_time (a large message, a slow upstream): while it is in
progress the lease is extended every lease_time / 3, so no other worker or node takes the
message meanwhile. And right before the message goes (`before_data`, called by the session
before DATA, or before the body when DATA went pipelined with the envelope) the lease is
renewed once more, which confirms it is still this worker's: a node that was frozen
(SIGSTOP) or cut off long enough for another node to take its lease over finds that out
there and sends no message (after a pipelined DATA's 354 it drops the connection, which
ends the transaction without one), instead of delivering it a second time. Once the body
has started the message may still arrive twice (at-least-once), never because it began
after the lease was gone.

Nobody can take a lease over sooner than queue.node_timeout (its node silent that long;
leasing counts as a heartbeat) or queue.lease_time (expired) after it was taken, so a
send that reaches DATA within half the shorter of the two skips the check: the common
case costs no store write.

The check travels in a context variable, so the session needs no store of its own.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Protocol

from relayd.clock import Clock
from relayd.errors import LeaseLost, StoreError, StoreUnavailable
from relayd.logs import get_logger
from relayd.types import Lease

log = get_logger("dispatch")

_confirm: contextvars.ContextVar[Callable[[], Awaitable[None]] | None] = contextvars.ContextVar(
    "relayd_lease_confirm", default=None
)


class QueueTimes(Protocol):
    """The [queue] keys that bound a lease (config.QueueConfig has them)."""

    @property
    def lease_time(self) -> float: ...

    @property
    def node_timeout(self) -> float: ...


class LeaseStore(Protocol):
    async def renew_lease(self, lease: Lease, now: float, lease_for: float) -> None: ...


class Closable(Protocol):
    async def close(self) -> None: ...


@asynccontextmanager
async def kept(
    store: LeaseStore, lease: Lease, clock: Clock, queue: QueueTimes, session: Closable
) -> AsyncIterator[None]:
    """While the block runs, the lease is renewed every lease_time / 3 seconds and
    before_data() confirms it. When it finds the lease gone, the block ends there: logged
    (`lease_lost`), the upstream transaction ended (the session closes: QUIT), nothing
    recorded (the message is the new owner's). The rate slot stays counted as a send: one
    too many for a while, never one too few."""
    lease_for = queue.lease_time
    leased_at = lease.lease_until - lease_for  # the `now` lease_due was given
    safe_for = min(queue.node_timeout, lease_for) / 2

    async def renew() -> None:
        await store.renew_lease(lease, clock.now(), lease_for)

    async def confirm() -> None:
        if clock.now() - leased_at < safe_for:
            return
        # A store that does not answer soon (a partition) cannot vouch for the lease, and
        # the upstream transaction must not idle meanwhile. The renewal is abandoned, not
        # awaited: a cancelled query on a frozen connection takes asyncpg seconds to unwind.
        renewal = asyncio.ensure_future(renew())
        renewal.add_done_callback(_retrieve)
        done, _ = await asyncio.wait({renewal}, timeout=safe_for)
        if not done:
            renewal.cancel()
            raise TimeoutError(f"no answer from the store within {safe_for:g}s")
        renewal.result()

    async def keep() -> None:
        while True:  # the send's own time passes on the wire: real seconds, not the clock's
            await asyncio.sleep(lease_for / 3)
            try:
                await renew()
            except LeaseLost:
                return  # before_data, or the outcome's fenced write, says so
            except StoreError as exc:  # the next renewal, or the lease's expiry, decides
                log.warning("lease_renewal_failed", queue_id=lease.queue_id, error=str(exc))

    renewing = asyncio.create_task(keep(), name=f"lease-{lease.queue_id}")
    token = _confirm.set(confirm)
    try:
        yield
    except LeaseLost:
        log.warning("lease_lost", queue_id=lease.queue_id, upstream=lease.upstream, before="DATA")
        await session.close()
    finally:
        _confirm.reset(token)
        renewing.cancel()
        await asyncio.gather(renewing, return_exceptions=True)


def _retrieve(task: asyncio.Future[None]) -> None:
    """An abandoned renewal's end is of no interest (its caller already gave up)."""
    if not task.cancelled():
        task.exception()


async def before_data() -> None:
    """Raise LeaseLost unless the lease of the message being sent is still this worker's
    (renewing it); a store that cannot say counts as lost: DATA waits for the next lease."""
    confirm = _confirm.get()
    if confirm is None:
        return
    try:
        await confirm()
    except (StoreUnavailable, TimeoutError) as exc:
        raise LeaseLost(f"the lease could not be confirmed: {exc}") from exc
