"""The store's status-page verbs, for every backend: the per-minute history (added up across
writers, kept over a reopen, pruned), the rate ledger's recent sends, the latest failures."""

from __future__ import annotations

from relayd.store.base import MinuteSample
from relayd.types import Ceiling, RecipientState

from .conftest import StoreFactory
from .test_store import T0, lease_one, message, outcome

MINUTE = int(T0) // 60 * 60


async def test_history_adds_counts_keeps_the_last_depth_and_survives_reopen(
    store_factory: StoreFactory,
) -> None:
    first = await store_factory.open()
    await first.add_minute(MinuteSample(MINUTE, accepted=3, delivered=2, pending=5), 0)
    # A second writer (another node, or the next sample of the same minute) adds its counts.
    await first.add_minute(MinuteSample(MINUTE, accepted=1, failed=1, pending=4, held=1), 0)
    await first.add_minute(MinuteSample(MINUTE + 60, deferred=7, pending=9), 0)
    await first.close()

    second = await store_factory.open()
    assert await second.minutes(MINUTE) == [
        MinuteSample(MINUTE, accepted=4, delivered=2, failed=1, pending=4, held=1),
        MinuteSample(MINUTE + 60, deferred=7, pending=9),
    ]
    assert await second.minutes(MINUTE + 60) == [MinuteSample(MINUTE + 60, deferred=7, pending=9)]
    await second.add_minute(MinuteSample(MINUTE + 120), keep_since=MINUTE + 60)
    assert [s.minute for s in await second.minutes(0)] == [MINUTE + 60, MINUTE + 120]


async def test_ledger_sends_lists_one_upstreams_recent_reservations(
    store_factory: StoreFactory,
) -> None:
    store = await store_factory.open()
    ceilings = [Ceiling(100, 3600.0)]
    slots = []
    for offset, weight in ((0, 1), (10, 3), (20, 1)):
        slot = await store.reserve_send("practice", T0 + offset, ceilings, 0.0, weight, 60.0)
        assert slot.reservation is not None
        slots.append(slot)
    await store.reserve_send("other", T0 + 5, ceilings, 0.0, 1, 60.0)
    # Under way (not stamped yet): every one may still count.
    assert await store.ledger_sends("practice", T0 + 5) == [
        (T0, None, 1),
        (T0 + 10, None, 3),
        (T0 + 20, None, 1),
    ]
    assert slots[0].reservation is not None and slots[1].reservation is not None
    await store.finish_send(slots[0].reservation, T0 + 2, reached_data=True)
    await store.finish_send(slots[1].reservation, T0 + 12, reached_data=True)
    # Ended before `since`: it counts no more; ended after, or under way: it may.
    assert await store.ledger_sends("practice", T0 + 5) == [
        (T0 + 10, T0 + 12, 3),
        (T0 + 20, None, 1),
    ]


async def test_recent_problems_are_the_latest_failures_newest_first(
    store_factory: StoreFactory,
) -> None:
    store = await store_factory.open()
    delivered = await store.enqueue(message("ok@example.com"))
    await store.record_outcome(
        await lease_one(store, T0), [outcome("ok@example.com", RecipientState.DELIVERED)], T0
    )
    older = await store.enqueue(message("old@example.com", at=T0 + 1))
    await store.record_outcome(
        await lease_one(store, T0 + 1),
        [outcome("old@example.com", RecipientState.FAILED, reply="550 5.1.1 no such user")],
        T0 + 2,
    )
    newer = await store.enqueue(message("new@example.com", at=T0 + 3))
    await store.record_outcome(
        await lease_one(store, T0 + 3), [outcome("new@example.com", RecipientState.FAILED)], T0 + 4
    )
    problems = await store.recent_problems(10)
    assert [(at, view.queue_id) for at, view in problems] == [(T0 + 4, newer), (T0 + 2, older)]
    assert problems[1][1].recipients[0].last_reply == "550 5.1.1 no such user"
    assert delivered not in {view.queue_id for _, view in problems}
    assert [view.queue_id for _, view in await store.recent_problems(1)] == [newer]


async def test_counts_by_upstream(store_factory: StoreFactory) -> None:
    store = await store_factory.open()
    assert await store.counts_by_upstream() == {}
    await store.enqueue(message("a@example.com", "b@example.com"))
    await store.enqueue(message("c@example.com", upstream="other"))
    await store.record_outcome(
        await lease_one(store, T0, "other"),
        [outcome("c@example.com", RecipientState.DELIVERED)],
        T0,
    )
    assert await store.counts_by_upstream() == {
        "practice": {RecipientState.QUEUED: 2},
        "other": {RecipientState.DELIVERED: 1},
    }
