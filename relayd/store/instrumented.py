"""InstrumentedStore: the Store contract with metrics recorded at the verbs that mean something.

Every fact /metrics reports about mail passes through one store verb: a message is accepted
when `enqueue` commits, a recipient is delivered, deferred or failed when `record_outcome`
commits, the rate ledger turns a send away when `reserve_send` refuses, and an upstream is
throttled or its account fails when `hold_upstream` pauses it. Counting there, once, keeps the
services free of metric calls and counts only what was durably recorded (a lost lease's
outcome is not counted). Every other verb is the inner store's own, looked up by __getattr__.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from relayd import metrics
from relayd.store.base import Leadership, SendSlot, Store
from relayd.types import Ceiling, Lease, NewMessage, QueueId, RecipientOutcome, UpstreamHold


class InstrumentedStore:
    """Wraps `inner` (any Store); the daemon hands this to intake and the dispatcher.

    Only the four observed verbs are written out; any other attribute is `inner`'s.
    `instrument()` returns it as a Store, so callers are type-checked against the contract
    rather than against __getattr__'s Any.
    """

    def __init__(self, inner: Store) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> Any:
        # Called only for names this class lacks: the pass-through verbs (and open/close).
        return getattr(self.inner, name)

    async def enqueue(self, message: NewMessage, *, alone: bool = False) -> QueueId:
        queue_id = await self.inner.enqueue(message, alone=alone)
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
        open_for: float,
    ) -> SendSlot:
        slot = await self.inner.reserve_send(
            upstream, now, ceilings, min_interval, weight, open_for
        )
        if slot.reservation is None:
            metrics.rate_limit_wait(upstream)
        return slot

    async def hold_upstream(self, hold: UpstreamHold) -> None:
        await self.inner.hold_upstream(hold)
        # dispatch pauses an account problem until released, a throttle until a time.
        metrics.upstream_held(hold.upstream, auth=hold.until is None)


class InstrumentedLeadingStore(InstrumentedStore):
    """The same, for a store that also offers Leadership.

    The two verbs are spelled out rather than left to __getattr__: isinstance() against a
    runtime-checkable protocol looks at the class (inspect.getattr_static) from Python 3.12,
    and __getattr__ is invisible there.
    """

    def __init__(self, inner: Store, leadership: Leadership) -> None:
        super().__init__(inner)
        self.leadership = leadership

    async def try_lead(self, name: str) -> bool:
        return await self.leadership.try_lead(name)

    async def resign(self, name: str) -> None:
        await self.leadership.resign(name)


def instrument(store: Store) -> Store:
    """`store` with metrics; it offers Leadership exactly when `store` does."""
    if isinstance(store, Leadership):
        return InstrumentedLeadingStore(store, store)
    return InstrumentedStore(store)
