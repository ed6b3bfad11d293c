"""InstrumentedStore: the Store contract with metrics recorded at the verbs that mean something.

Every fact /metrics reports about mail passes through one store verb: a message is accepted
when `enqueue` commits, a recipient is delivered, deferred or failed when `record_outcome`
commits, the rate ledger turns a send away when `reserve_send` refuses, and an upstream is
throttled or its account fails when `hold_upstream` pauses it. Counting there, once, keeps the
services free of metric calls and counts only what was durably recorded (a lost lease's
outcome is not counted). Everything else is passed through unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence

from relayd import metrics
from relayd.dsn.parse import ParsedDsn
from relayd.store.base import Leadership, ReportInfo, SendSlot, Store
from relayd.types import (
    Ceiling,
    Lease,
    MessageView,
    NewMessage,
    QueueId,
    RecipientOutcome,
    RecipientState,
    UpstreamHold,
)


class InstrumentedStore:
    """Wraps `inner` (any Store); the daemon hands this to intake and the dispatcher."""

    def __init__(self, inner: Store) -> None:
        self.inner = inner

    # -- observed ---------------------------------------------------------------------

    async def enqueue(self, message: NewMessage) -> QueueId:
        queue_id = await self.inner.enqueue(message)
        metrics.accepted(message.upstream)
        return queue_id

    async def record_outcome(
        self, lease: Lease, outcomes: Sequence[RecipientOutcome], now: float
    ) -> None:
        await self.inner.record_outcome(lease, outcomes, now)
        metrics.outcomes(lease.upstream, outcomes, now, lease.received_at)

    async def reserve_send(
        self,
        upstream: str,
        now: float,
        ceilings: Sequence[Ceiling],
        min_interval: float,
        weight: int,
    ) -> SendSlot:
        slot = await self.inner.reserve_send(upstream, now, ceilings, min_interval, weight)
        if slot.reservation is None:
            metrics.rate_limit_wait(upstream)
        return slot

    async def hold_upstream(self, hold: UpstreamHold) -> None:
        await self.inner.hold_upstream(hold)
        # dispatch pauses an account problem until released, a throttle until a time.
        metrics.upstream_held(hold.upstream, auth=hold.until is None)

    # -- passed through ---------------------------------------------------------------

    async def open(self) -> None:
        await self.inner.open()

    async def close(self) -> None:
        await self.inner.close()

    async def lease_due(
        self, upstream: str, now: float, limit: int, lease_for: float, worker: str
    ) -> list[Lease]:
        return await self.inner.lease_due(upstream, now, limit, lease_for, worker)

    async def load_body(self, queue_id: QueueId) -> bytes:
        return await self.inner.load_body(queue_id)

    async def release(self, lease: Lease, not_before: float, reason: str) -> None:
        await self.inner.release(lease, not_before, reason)

    async def next_due(self, upstream: str, now: float) -> float | None:
        return await self.inner.next_due(upstream, now)

    async def cancel_send(self, reservation_id: int) -> None:
        await self.inner.cancel_send(reservation_id)

    async def release_upstream(self, upstream: str) -> None:
        await self.inner.release_upstream(upstream)

    async def upstream_hold(self, upstream: str) -> UpstreamHold | None:
        return await self.inner.upstream_hold(upstream)

    async def set_upstream_wait(
        self, upstream: str, reason: str | None, until: float | None
    ) -> None:
        await self.inner.set_upstream_wait(upstream, reason, until)

    async def wait_for_work(self, timeout: float) -> None:
        await self.inner.wait_for_work(timeout)

    async def list_messages(
        self, state: RecipientState | None = None, upstream: str | None = None, limit: int = 1000
    ) -> list[MessageView]:
        return await self.inner.list_messages(state, upstream, limit)

    async def show(self, queue_id: QueueId) -> MessageView | None:
        return await self.inner.show(queue_id)

    async def counts(self) -> dict[RecipientState, int]:
        return await self.inner.counts()

    async def retry_now(self, queue_id: QueueId | None, now: float) -> int:
        return await self.inner.retry_now(queue_id, now)

    async def hold_message(self, queue_id: QueueId) -> int:
        return await self.inner.hold_message(queue_id)

    async def release_message(self, queue_id: QueueId, now: float) -> int:
        return await self.inner.release_message(queue_id, now)

    async def delete_message(self, queue_id: QueueId) -> bool:
        return await self.inner.delete_message(queue_id)

    async def purge_finished(self, before: float) -> int:
        return await self.inner.purge_finished(before)

    async def report_info(self, queue_id: QueueId) -> ReportInfo | None:
        return await self.inner.report_info(queue_id)

    async def mark_delay_warned(self, queue_id: QueueId) -> bool:
        return await self.inner.mark_delay_warned(queue_id)

    async def match_bounce(self, parsed: ParsedDsn, now: float) -> QueueId | None:
        return await self.inner.match_bounce(parsed, now)

    async def imap_state(self, account: str) -> tuple[int, int] | None:
        return await self.inner.imap_state(account)

    async def save_imap_state(self, account: str, uidvalidity: int, last_uid: int) -> None:
        await self.inner.save_imap_state(account, uidvalidity, last_uid)


class InstrumentedLeadingStore(InstrumentedStore):
    """The same, for a store that also offers Leadership (isinstance checks see it)."""

    def __init__(self, inner: Store, leadership: Leadership) -> None:
        super().__init__(inner)
        self.leadership = leadership

    async def try_lead(self, name: str) -> bool:
        return await self.leadership.try_lead(name)

    async def resign(self, name: str) -> None:
        await self.leadership.resign(name)


def instrument(store: Store) -> InstrumentedStore:
    """`store` with metrics; it offers Leadership exactly when `store` does."""
    if isinstance(store, Leadership):
        return InstrumentedLeadingStore(store, store)
    return InstrumentedStore(store)

    async def purge_finished(self, before: float) -> int:
        return await self.inner.purge_finished(before)
