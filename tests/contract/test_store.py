"""The store contract, specified once and run against every backend (huey's StorageTests).

Every test takes the `store` (or `store_factory` + `backend`) fixture from conftest.py,
which is parametrised over the backends; a backend that fails here is not used. Times
are passed in, as the contract requires: T0 is an arbitrary fixed epoch second.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from relayd.errors import LeaseLost, StoreError, StoreUnavailable
from relayd.store import open_store
from relayd.store.base import SendLedger, SendSlot
from relayd.store.sqlite.store import SqliteStore
from relayd.types import (
    Ceiling,
    Lease,
    NewMessage,
    QueueDepth,
    QueueId,
    Recipient,
    RecipientOutcome,
    RecipientState,
    UpstreamHold,
)

from .conftest import Backend, ContractStore, StoreFactory

T0 = 1_700_000_000.0
LEASE = 60.0
State = RecipientState


def message(
    *recipients: str,
    at: float = T0,
    upstream: str = "practice",
    body: bytes = b"Subject: hi\r\n\r\nhello\r\n",
    queue_id: QueueId | None = None,
) -> NewMessage:
    return NewMessage(
        mail_from="billing@example.org",
        recipients=tuple(Recipient(a) for a in recipients or ("alice@example.com",)),
        body=body,
        upstream=upstream,
        message_id=f"<{at}@example.org>",
        received_at=at,
        client="127.0.0.1",
        auth_user="billing-app",
        mail_options=("BODY=8BITMIME",),
        queue_id=queue_id,
    )


async def lease_one(store: ContractStore, now: float, upstream: str = "practice") -> Lease:
    leases = await store.lease_due(upstream, now, 10, LEASE, "worker-1")
    assert len(leases) == 1, leases
    return leases[0]


def outcome(
    address: str, state: RecipientState, at: float | None = None, reply: str = ""
) -> RecipientOutcome:
    return RecipientOutcome(address, state, reply or f"{state} reply", at)


async def recipient_states(store: ContractStore, queue_id: QueueId) -> dict[str, State]:
    view = await store.show(queue_id)
    assert view is not None
    return {r.address: r.state for r in view.recipients}


# --- enqueue and lease ------------------------------------------------------------------


async def test_enqueue_then_lease_returns_the_message_with_its_body(store: ContractStore) -> None:
    new = message("alice@example.com", "bob@example.com", body=b"x" * 10_000)
    queue_id = await store.enqueue(new)

    lease = await lease_one(store, T0)

    assert lease.queue_id == queue_id
    assert lease.upstream == "practice"
    assert lease.mail_from == new.mail_from
    assert lease.addresses == ("alice@example.com", "bob@example.com")
    assert lease.message_id == new.message_id
    assert lease.received_at == T0
    assert lease.size == 10_000
    assert lease.mail_options == ("BODY=8BITMIME",)
    assert lease.attempts == 0
    assert lease.lease_until == T0 + LEASE
    assert await store.load_body(queue_id) == new.body


async def test_queue_ids_are_unique_and_sort_by_arrival(store: ContractStore) -> None:
    ids = [await store.enqueue(message(at=T0 + i)) for i in range(20)]
    assert len(set(ids)) == 20
    assert sorted(ids) == ids
    assert all(len(queue_id) >= 12 for queue_id in ids)


async def test_a_given_queue_id_is_kept(store: ContractStore) -> None:
    queue_id = await store.enqueue(message(queue_id=QueueId("given-id-0001")))
    assert queue_id == "given-id-0001"
    assert (await lease_one(store, T0)).queue_id == queue_id


async def test_nothing_is_leased_before_it_is_due_or_for_another_upstream(
    store: ContractStore,
) -> None:
    await store.enqueue(message(at=T0))
    assert await store.lease_due("practice", T0 - 1, 10, LEASE, "w") == []
    assert await store.lease_due("other", T0, 10, LEASE, "w") == []
    assert len(await store.lease_due("practice", T0, 10, LEASE, "w")) == 1


async def test_enqueued_message_survives_close_and_reopen(store_factory: StoreFactory) -> None:
    first = await store_factory.open()
    queue_id = await first.enqueue(message(body=b"durable"))
    await first.close()

    second = await store_factory.open()
    lease = await lease_one(second, T0)
    assert lease.queue_id == queue_id
    assert await second.load_body(queue_id) == b"durable"


async def test_oldest_due_first(store: ContractStore) -> None:
    late = await store.enqueue(message(at=T0 + 2))
    early = await store.enqueue(message(at=T0))
    middle = await store.enqueue(message(at=T0 + 1))

    first_two = await store.lease_due("practice", T0 + 10, 2, LEASE, "w")
    assert [lease.queue_id for lease in first_two] == [early, middle]
    rest = await store.lease_due("practice", T0 + 10, 2, LEASE, "w")
    assert [lease.queue_id for lease in rest] == [late]


async def test_a_retry_due_earlier_goes_before_newer_mail(store: ContractStore) -> None:
    retried = await store.enqueue(message(at=T0))
    lease = await lease_one(store, T0)
    await store.record_outcome(lease, [outcome("alice@example.com", State.DEFERRED, T0 + 5)], T0)
    newer = await store.enqueue(message(at=T0 + 8))

    leases = await store.lease_due("practice", T0 + 10, 10, LEASE, "w")
    assert [lease.queue_id for lease in leases] == [retried, newer]


# --- leases and fencing -----------------------------------------------------------------


async def test_a_lease_expires_and_is_leased_again_with_a_new_token(store: ContractStore) -> None:
    await store.enqueue(message())
    first = await lease_one(store, T0)

    assert await store.lease_due("practice", T0 + LEASE - 1, 10, LEASE, "w2") == []
    second = await lease_one(store, T0 + LEASE)
    assert second.queue_id == first.queue_id
    assert second.token != first.token
    assert second.lease_until == T0 + 2 * LEASE


async def test_a_stale_lease_raises_lease_lost_and_writes_nothing(store: ContractStore) -> None:
    queue_id = await store.enqueue(message("alice@example.com"))
    stale = await lease_one(store, T0)
    current = await lease_one(store, T0 + LEASE)

    with pytest.raises(LeaseLost):
        await store.record_outcome(stale, [outcome("alice@example.com", State.DELIVERED)], T0 + 61)
    with pytest.raises(LeaseLost):
        await store.release(stale, T0 + 999, "stale")
    view = await store.show(queue_id)
    assert view is not None
    (alice,) = view.recipients
    assert (alice.state, alice.attempts, alice.wait_reason) == (State.QUEUED, 0, None)

    await store.record_outcome(current, [outcome("alice@example.com", State.DELIVERED)], T0 + 62)
    assert await recipient_states(store, queue_id) == {"alice@example.com": State.DELIVERED}


async def test_a_renewed_lease_is_not_leased_again_and_a_lost_one_cannot_renew(
    store: ContractStore,
) -> None:
    """A long send renews its lease (delivery/renewal.py): nobody takes the message while
    it lasts; once another worker holds it, renewing raises LeaseLost (no DATA then)."""
    await store.enqueue(message())
    first = await lease_one(store, T0)
    await store.renew_lease(first, T0 + LEASE - 1, LEASE)
    assert await store.lease_due("practice", T0 + LEASE + 1, 10, LEASE, "other") == []
    assert await store.next_due("practice", T0 + LEASE + 1) == T0 + 2 * LEASE - 1
    second = await lease_one(store, T0 + 2 * LEASE)
    with pytest.raises(LeaseLost):
        await store.renew_lease(first, T0 + 2 * LEASE, LEASE)
    await store.renew_lease(second, T0 + 2 * LEASE + 1, LEASE)


async def test_a_lease_ends_with_its_outcome(store: ContractStore) -> None:
    await store.enqueue(message("alice@example.com", "bob@example.com"))
    lease = await lease_one(store, T0)
    await store.record_outcome(lease, [outcome("alice@example.com", State.DELIVERED)], T0 + 1)

    # Recorded once; the same lease cannot record again.
    with pytest.raises(LeaseLost):
        await store.record_outcome(lease, [outcome("bob@example.com", State.DELIVERED)], T0 + 2)
    # bob had no outcome: he is still due, and the message is free to lease at once.
    again = await lease_one(store, T0 + 2)
    assert again.addresses == ("bob@example.com",)


async def test_an_expired_lease_nobody_took_may_still_record(store: ContractStore) -> None:
    queue_id = await store.enqueue(message())
    lease = await lease_one(store, T0)
    # Fencing is by token, not by clock: nobody else leased it, so the result counts.
    await store.record_outcome(lease, [outcome("alice@example.com", State.DELIVERED)], T0 + 600)
    assert await recipient_states(store, queue_id) == {"alice@example.com": State.DELIVERED}


async def test_an_outcome_outside_the_lease_is_refused_and_writes_nothing(
    store: ContractStore,
) -> None:
    queue_id = await store.enqueue(message("alice@example.com"))
    lease = await lease_one(store, T0)
    outcomes = [
        outcome("alice@example.com", State.DELIVERED),
        outcome("mallory@example.com", State.DELIVERED),
    ]
    with pytest.raises(StoreError):
        await store.record_outcome(lease, outcomes, T0 + 1)
    assert await recipient_states(store, queue_id) == {"alice@example.com": State.QUEUED}
    # The lease is intact: it can still record.
    await store.record_outcome(lease, outcomes[:1], T0 + 1)


# --- per-recipient outcomes -------------------------------------------------------------


async def test_partial_delivery_brings_back_only_the_deferred_recipient_at_its_time(
    store: ContractStore,
) -> None:
    queue_id = await store.enqueue(message("alice@example.com", "bob@example.com"))
    lease = await lease_one(store, T0)
    await store.record_outcome(
        lease,
        [
            outcome("alice@example.com", State.DELIVERED, reply="250 2.0.0 OK"),
            outcome("bob@example.com", State.DEFERRED, T0 + 300, "451 4.7.1 try later"),
        ],
        T0 + 1,
    )

    view = await store.show(queue_id)
    assert view is not None
    alice, bob = view.recipients
    assert (alice.state, alice.attempts, alice.last_reply) == (State.DELIVERED, 1, "250 2.0.0 OK")
    assert (bob.state, bob.attempts, bob.next_attempt_at) == (State.DEFERRED, 1, T0 + 300)
    assert bob.last_reply == "451 4.7.1 try later"

    assert await store.next_due("practice", T0 + 1) == T0 + 300
    assert await store.lease_due("practice", T0 + 299, 10, LEASE, "w") == []
    retry = await lease_one(store, T0 + 300)
    assert retry.addresses == ("bob@example.com",)
    assert retry.attempts == 1
    assert await store.load_body(queue_id) == message().body


async def test_final_recipients_are_never_leased_again(store: ContractStore) -> None:
    queue_id = await store.enqueue(message("alice@example.com", "bob@example.com"))
    lease = await lease_one(store, T0)
    await store.record_outcome(
        lease,
        [
            outcome("alice@example.com", State.DELIVERED),
            outcome("bob@example.com", State.FAILED, reply="550 5.1.1 no such user"),
        ],
        T0 + 1,
    )

    assert await store.lease_due("practice", T0 + 10**6, 10, LEASE, "w") == []
    assert await store.next_due("practice", T0 + 1) is None
    assert await store.retry_now(queue_id, T0 + 2) == 0
    # History stays for the queue tool; the body is dropped so the database does not grow.
    assert await recipient_states(store, queue_id) == {
        "alice@example.com": State.DELIVERED,
        "bob@example.com": State.FAILED,
    }
    with pytest.raises(StoreError):
        await store.load_body(queue_id)


async def test_release_delays_without_counting_an_attempt(store: ContractStore) -> None:
    queue_id = await store.enqueue(message())
    lease = await lease_one(store, T0)
    await store.release(lease, T0 + 120, "rate limit 3/minute")

    view = await store.show(queue_id)
    assert view is not None
    (alice,) = view.recipients
    assert alice.state == State.QUEUED
    assert alice.attempts == 0
    assert alice.next_attempt_at == T0 + 120
    assert alice.wait_reason == "rate limit 3/minute"

    assert await store.next_due("practice", T0 + 1) == T0 + 120
    assert await store.lease_due("practice", T0 + 119, 10, LEASE, "w") == []
    again = await lease_one(store, T0 + 120)
    assert again.attempts == 0
    # The next attempt's outcome clears the reason.
    await store.record_outcome(
        again, [outcome("alice@example.com", State.DEFERRED, T0 + 500)], T0 + 121
    )
    view = await store.show(queue_id)
    assert view is not None
    assert view.recipients[0].wait_reason is None


async def test_next_due_counts_an_unexpired_lease_from_its_expiry(store: ContractStore) -> None:
    assert await store.next_due("practice", T0) is None
    await store.enqueue(message(at=T0))
    assert await store.next_due("practice", T0) == T0

    await lease_one(store, T0)
    assert await store.next_due("practice", T0 + 1) == T0 + LEASE
    await store.enqueue(message(at=T0 + 5))
    assert await store.next_due("practice", T0 + 1) == T0 + 5
    assert await store.next_due("other", T0 + 1) is None
    # Once the lease has expired, the message is due at its own time again.
    assert await store.next_due("practice", T0 + LEASE + 1) == T0


# --- group commit and closing -----------------------------------------------------------


async def test_concurrent_enqueues_share_commits(store: ContractStore) -> None:
    before = store.commits
    ids = await asyncio.gather(*(store.enqueue(message(at=T0 + i)) for i in range(200)))

    assert len(set(ids)) == 200
    assert (await store.counts())[State.QUEUED] == 200
    used = store.commits - before
    assert 1 <= used <= 20, f"200 enqueues took {used} commits"


async def test_one_failing_write_fails_only_its_caller(store: ContractStore) -> None:
    taken = await store.enqueue(message(queue_id=QueueId("taken-0000001")))
    before = store.commits
    results = await asyncio.gather(
        store.enqueue(message(at=T0 + 1)),
        store.enqueue(message(at=T0 + 2, queue_id=taken)),  # duplicate id: refused
        store.enqueue(message(at=T0 + 3)),
        return_exceptions=True,
    )

    assert isinstance(results[1], StoreError)
    assert not isinstance(results[1], StoreUnavailable)
    assert all(isinstance(r, str) for r in (results[0], results[2]))
    assert store.commits - before == 1
    assert len(await store.list_messages()) == 3


async def test_close_drains_pending_writes(store_factory: StoreFactory) -> None:
    store = await store_factory.open()
    tasks = [asyncio.create_task(store.enqueue(message(at=T0 + i))) for i in range(50)]
    await asyncio.sleep(0)  # every task has handed its write to the store
    await store.close()

    ids = [task.result() for task in tasks]
    assert len(set(ids)) == 50
    with pytest.raises(StoreError):
        await store.enqueue(message())

    reopened = await store_factory.open()
    assert {view.queue_id for view in await reopened.list_messages()} == set(ids)


async def test_close_is_idempotent_and_async_with_closes(backend: Backend) -> None:
    async with backend.make() as store:
        await store.enqueue(message())
    await store.close()
    with pytest.raises(StoreError):
        await store.counts()


async def test_a_locked_database_raises_store_unavailable_and_recovers(
    store: ContractStore, backend: Backend
) -> None:
    await store.enqueue(message())
    with backend.locked():
        with pytest.raises(StoreUnavailable):
            await store.enqueue(message(at=T0 + 1))
        with pytest.raises(StoreUnavailable):
            await store.lease_due("practice", T0 + 2, 10, LEASE, "w")
    await store.enqueue(message(at=T0 + 3))
    assert (await store.counts())[State.QUEUED] == 2


async def test_check_writable_commits_nothing_visible_and_fails_while_locked(
    store: ContractStore, backend: Backend
) -> None:
    queue_id = await store.enqueue(message())
    before = await store.list_messages()
    await store.check_writable()
    await store.check_writable()
    assert await store.list_messages() == before
    with backend.locked(), pytest.raises(StoreUnavailable):
        await store.check_writable()
    assert (await store.show(queue_id)) is not None


# --- the send ledger --------------------------------------------------------------------

OPEN_FOR = 300.0  # how long a reservation never stamped counts as under way (a lease)


async def sent(
    store: SendLedger,
    upstream: str,
    at: float,
    ceilings: list[Ceiling],
    spacing: float,
    weight: int,
) -> SendSlot:
    """Reserve a send at `at` and, if granted, stamp its final reply at `at` too."""
    slot = await store.reserve_send(upstream, at, ceilings, spacing, weight, OPEN_FOR)
    if slot.reservation is not None:
        await store.finish_send(slot.reservation, at, reached_data=True)
    return slot


async def test_reserve_send_honours_ceilings_across_reopen(store_factory: StoreFactory) -> None:
    ceilings = [Ceiling(3, 60.0)]
    first = await store_factory.open()
    for i in range(3):
        slot = await sent(first, "practice", T0 + i, ceilings, 0.0, 1)
        assert slot.reservation is not None
        assert (slot.at, slot.reason) == (T0 + i, None)
    refused = await sent(first, "practice", T0 + 3, ceilings, 0.0, 1)
    assert refused.reservation is None
    assert refused.at == pytest.approx(T0 + 60)
    assert refused.reason == "rate limit 3/minute"
    await first.close()

    second = await store_factory.open()
    refused = await sent(second, "practice", T0 + 30, ceilings, 0.0, 1)
    assert refused.reservation is None
    assert refused.at == pytest.approx(T0 + 60)
    # Another upstream has its own ledger.
    assert (await sent(second, "other", T0 + 30, ceilings, 0.0, 1)).reservation is not None
    slot = await sent(second, "practice", refused.at, ceilings, 0.0, 1)
    assert slot.reservation is not None
    assert slot.at == refused.at


async def test_reserve_send_counts_weight_and_min_interval(store: ContractStore) -> None:
    ceilings = [Ceiling(5, 60.0)]
    assert (await sent(store, "practice", T0, ceilings, 20.0, 4)).reservation is not None
    spaced = await sent(store, "practice", T0 + 5, ceilings, 20.0, 1)
    assert (spaced.reservation, spaced.at, spaced.reason) == (None, T0 + 20, "min_interval 20s")
    refused = await sent(store, "practice", T0 + 20, ceilings, 20.0, 2)
    assert refused.reservation is None  # 4 + 2 > 5 within the minute
    assert refused.at == pytest.approx(T0 + 60)
    assert refused.reason == "rate limit 5/minute"
    assert (await sent(store, "practice", T0 + 20, ceilings, 20.0, 1)).reservation is not None


async def test_reserve_send_names_the_binding_ceiling(store: ContractStore) -> None:
    ceilings = [Ceiling(3, 60.0), Ceiling(4, 3600.0)]
    for at in (T0, T0 + 1, T0 + 2, T0 + 61):
        assert (await sent(store, "practice", at, ceilings, 0.0, 1)).reservation is not None
    refused = await sent(store, "practice", T0 + 62, ceilings, 0.0, 1)
    assert refused.reservation is None
    assert refused.at == pytest.approx(T0 + 3600)
    assert refused.reason == "rate limit 4/hour"


async def test_a_send_counts_from_its_final_reply(store: ContractStore) -> None:
    """1/10s: reserved at T0, its reply at T0 + 4; the next send may start at T0 + 14."""
    ceilings = [Ceiling(1, 10.0)]
    slot = await store.reserve_send("practice", T0, ceilings, 0.0, 1, OPEN_FOR)
    assert slot.reservation is not None
    under_way = await store.reserve_send("practice", T0 + 11, ceilings, 0.0, 1, OPEN_FOR)
    assert (under_way.reservation, under_way.at) == (None, T0 + 21)  # as if it ended now
    await store.finish_send(slot.reservation, T0 + 4, reached_data=True)
    early = await store.reserve_send("practice", T0 + 12, ceilings, 0.0, 1, OPEN_FOR)
    assert (early.reservation, early.at) == (None, T0 + 14)
    assert (await sent(store, "practice", T0 + 14, ceilings, 0.0, 1)).reservation is not None


async def test_a_reservation_never_stamped_counts_as_ended_after_open_for(
    store: ContractStore,
) -> None:
    """Its node died mid-send: the upstream waits a lease and a period, not for ever."""
    ceilings = [Ceiling(1, 10.0)]
    assert (await store.reserve_send("practice", T0, ceilings, 0.0, 1, 30.0)).reservation
    refused = await store.reserve_send("practice", T0 + 35, ceilings, 0.0, 1, 30.0)
    assert (refused.reservation, refused.at) == (None, T0 + 40)
    assert (await store.reserve_send("practice", T0 + 40, ceilings, 0.0, 1, 30.0)).reservation


async def test_a_send_that_never_reached_data_gives_the_slot_back(store: ContractStore) -> None:
    ceilings = [Ceiling(1, 3600.0)]
    slot = await store.reserve_send("practice", T0, ceilings, 0.0, 1, OPEN_FOR)
    assert slot.reservation is not None
    assert (await sent(store, "practice", T0 + 1, ceilings, 0.0, 1)).reservation is None

    await store.finish_send(slot.reservation, T0 + 1, reached_data=False)
    again = await sent(store, "practice", T0 + 1, ceilings, 0.0, 1)
    assert again.reservation is not None
    assert again.at == T0 + 1


async def test_pruning_keeps_the_ledger_bounded(store: ContractStore, backend: Backend) -> None:
    long_ceiling = [Ceiling(1, 3600.0)]
    assert (await sent(store, "slow", T0, long_ceiling, 0.0, 1)).reservation is not None

    short_ceiling = [Ceiling(1000, 10.0)]
    for i in range(100):
        slot = await sent(store, "fast", T0 + i, short_ceiling, 0.0, 1)
        assert slot.reservation is not None
    assert backend.ledger_rows("fast") <= 11
    # Pruning one upstream never forgets another's sends.
    assert backend.ledger_rows("slow") == 1
    assert (await sent(store, "slow", T0 + 100, long_ceiling, 0.0, 1)).reservation is None


# --- upstream holds ---------------------------------------------------------------------


async def test_holds_set_get_replace_and_release(store: ContractStore) -> None:
    assert await store.upstream_hold("practice") is None
    hold = UpstreamHold("practice", T0 + 60, "421 4.7.0 throttled", 1)
    await store.hold_upstream(hold)
    assert await store.upstream_hold("practice") == hold
    assert await store.upstream_hold("other") is None

    stronger = UpstreamHold("practice", None, "535 5.7.8 bad credentials", 2)
    await store.hold_upstream(stronger)
    assert await store.upstream_hold("practice") == stronger

    await store.release_upstream("practice")
    assert await store.upstream_hold("practice") is None


async def test_an_upstream_wait_is_the_reason_of_its_pending_recipients_due_before_it_ends(
    store: ContractStore,
) -> None:
    waiting = await store.enqueue(message("alice@example.com", "bob@example.com", at=T0))
    lease = await lease_one(store, T0)
    await store.record_outcome(
        lease,
        [
            outcome("alice@example.com", State.DELIVERED),
            outcome("bob@example.com", State.DEFERRED, T0 + 30),
        ],
        T0,
    )
    await store.enqueue(message("carol@example.com", at=T0 + 10))
    lease = await lease_one(store, T0 + 10)
    await store.record_outcome(
        lease,
        [RecipientOutcome("carol@example.com", State.DEFERRED, "451", T0 + 7200, "retry 1 at X")],
        T0 + 10,
    )
    frozen = await store.enqueue(message("dave@example.com", at=T0 + 20))
    await store.hold_message(frozen)
    await store.enqueue(message("erin@example.com", at=T0 + 20, upstream="other"))

    async def reasons() -> dict[str, str | None]:
        views = await store.list_messages()
        return {r.address: r.wait_reason for view in views for r in view.recipients}

    await store.set_upstream_wait("practice", "window closed until 08:00", T0 + 3600)
    assert await reasons() == {
        "alice@example.com": None,  # delivered: not waiting
        "bob@example.com": "window closed until 08:00",
        "carol@example.com": "retry 1 at X",  # due after the window opens
        "dave@example.com": "held by operator",
        "erin@example.com": None,  # another upstream
    }
    view = await store.show(waiting)
    assert view is not None
    assert view.recipients[1].wait_reason == "window closed until 08:00"
    # No due time moved: the wait is the dispatcher's, not the queue's.
    assert await store.next_due("practice", T0 + 10) == T0 + 30

    await store.set_upstream_wait("practice", "upstream paused: 535 5.7.8", None)
    assert (await reasons())["carol@example.com"] == "upstream paused: 535 5.7.8"

    await store.set_upstream_wait("practice", None, None)
    assert (await reasons())["bob@example.com"] is None
    assert (await reasons())["carol@example.com"] == "retry 1 at X"


async def test_release_before_the_due_time_keeps_the_place_in_line(store: ContractStore) -> None:
    first = await store.enqueue(message(at=T0))
    second = await store.enqueue(message(at=T0 + 1))
    leases = await store.lease_due("practice", T0 + 5, 1, LEASE, "w")
    assert [lease.queue_id for lease in leases] == [first]
    await store.release(leases[0], leases[0].received_at, "rate limit 3/minute until X")

    again = await store.lease_due("practice", T0 + 6, 2, LEASE, "w")
    assert [lease.queue_id for lease in again] == [first, second]


# --- wait_for_work ----------------------------------------------------------------------


async def test_wait_for_work_wakes_on_enqueue(store: ContractStore) -> None:
    loop = asyncio.get_running_loop()
    waiter = asyncio.create_task(store.wait_for_work(30.0))
    await asyncio.sleep(0.01)
    assert not waiter.done()

    started = loop.time()
    await store.enqueue(message())
    await asyncio.wait_for(waiter, 5.0)
    assert loop.time() - started < 1.0


async def test_wait_for_work_times_out_without_work(store: ContractStore) -> None:
    loop = asyncio.get_running_loop()
    await store.enqueue(message())
    await store.wait_for_work(5.0)  # consumes the enqueue's wake-up at once

    started = loop.time()
    await store.wait_for_work(0.05)
    assert loop.time() - started >= 0.04


async def test_wait_for_work_wakes_on_retry_and_release(store: ContractStore) -> None:
    queue_id = await store.enqueue(message())
    await store.wait_for_work(1.0)
    for wake in (store.retry_now(queue_id, T0), store.release_message(queue_id, T0)):
        waiter = asyncio.create_task(store.wait_for_work(30.0))
        await asyncio.sleep(0.01)
        await wake
        await asyncio.wait_for(waiter, 5.0)


# --- the queue tool ---------------------------------------------------------------------


async def _mixed_queue(store: ContractStore) -> tuple[QueueId, QueueId, QueueId]:
    """partial: one delivered + one deferred; fresh: queued on `other`; frozen: held."""
    partial = await store.enqueue(message("alice@example.com", "bob@example.com", at=T0))
    lease = await lease_one(store, T0)
    await store.record_outcome(
        lease,
        [
            outcome("alice@example.com", State.DELIVERED),
            outcome("bob@example.com", State.DEFERRED, T0 + 3600),
        ],
        T0,
    )
    fresh = await store.enqueue(message("carol@example.com", at=T0 + 1, upstream="other"))
    frozen = await store.enqueue(message("dave@example.com", at=T0 + 2))
    assert await store.hold_message(frozen) == 1
    return partial, fresh, frozen


async def test_list_filters_by_state_and_upstream_oldest_first(store: ContractStore) -> None:
    partial, fresh, frozen = await _mixed_queue(store)

    async def ids(
        state: State | None = None, upstream: str | None = None, limit: int = 1000
    ) -> list[QueueId]:
        return [view.queue_id for view in await store.list_messages(state, upstream, limit)]

    assert await ids() == [partial, fresh, frozen]
    assert await ids(state=State.DEFERRED) == [partial]
    assert await ids(state=State.DELIVERED) == [partial]
    assert await ids(state=State.HELD) == [frozen]
    assert await ids(state=State.QUEUED) == [fresh]
    assert await ids(state=State.FAILED) == []
    assert await ids(upstream="other") == [fresh]
    assert await ids(upstream="practice", state=State.HELD) == [frozen]
    assert await ids(limit=2) == [partial, fresh]


async def test_show_and_counts(store: ContractStore) -> None:
    partial, _, _ = await _mixed_queue(store)

    view = await store.show(partial)
    assert view is not None
    assert (view.upstream, view.mail_from, view.received_at) == (
        "practice",
        message().mail_from,
        T0,
    )
    assert view.size == len(message().body)
    assert [(r.address, r.state) for r in view.recipients] == [
        ("alice@example.com", State.DELIVERED),
        ("bob@example.com", State.DEFERRED),
    ]
    assert await store.show(QueueId("no-such-id")) is None

    counts = await store.counts()
    assert counts[State.DELIVERED] == counts[State.DEFERRED] == 1
    assert counts[State.QUEUED] == counts[State.HELD] == 1
    assert counts[State.FAILED] == counts[State.BOUNCED] == 0


async def test_depth_is_the_counts_and_the_oldest_pending_arrival(store: ContractStore) -> None:
    assert await store.depth() == QueueDepth(dict.fromkeys(State, 0), None)
    partial, fresh, _ = await _mixed_queue(store)
    assert await store.depth() == QueueDepth(await store.counts(), T0)  # bob, deferred

    assert await store.delete_message(partial)
    assert (await store.depth()).oldest_pending == T0 + 1  # carol, queued
    assert await store.delete_message(fresh)
    depth = await store.depth()  # dave, held: he waits for the operator, not for relayd
    assert (depth.counts[State.HELD], depth.oldest_pending) == (1, None)


async def test_retry_now_makes_pending_recipients_due(store: ContractStore) -> None:
    partial, fresh, frozen = await _mixed_queue(store)
    assert await store.lease_due("practice", T0 + 10, 10, LEASE, "w") == []

    assert await store.retry_now(partial, T0 + 10) == 1  # bob; alice is delivered
    lease = await lease_one(store, T0 + 10)
    assert (lease.queue_id, lease.addresses) == (partial, ("bob@example.com",))
    await store.release(lease, T0 + 5000, "window closed")

    assert await store.retry_now(None, T0 + 20) == 2  # bob and carol, not held dave
    assert (await lease_one(store, T0 + 20)).queue_id == partial
    assert (await lease_one(store, T0 + 20, upstream="other")).queue_id == fresh
    assert await recipient_states(store, frozen) == {"dave@example.com": State.HELD}


async def test_held_recipients_are_not_leased_until_released(store: ContractStore) -> None:
    queue_id = await store.enqueue(message("alice@example.com", "bob@example.com"))
    assert await store.hold_message(queue_id) == 2
    assert await store.lease_due("practice", T0 + 100, 10, LEASE, "w") == []
    assert await store.next_due("practice", T0 + 100) is None

    assert await store.release_message(queue_id, T0 + 200) == 2
    assert await store.release_message(queue_id, T0 + 200) == 0
    assert await store.lease_due("practice", T0 + 199, 10, LEASE, "w") == []
    lease = await lease_one(store, T0 + 200)
    assert lease.addresses == ("alice@example.com", "bob@example.com")


async def test_delete_removes_a_message(store: ContractStore) -> None:
    queue_id = await store.enqueue(message())
    assert await store.delete_message(queue_id) is True
    assert await store.show(queue_id) is None
    assert await store.lease_due("practice", T0, 10, LEASE, "w") == []
    assert sum((await store.counts()).values()) == 0
    assert await store.delete_message(queue_id) is False


async def test_purge_finished_removes_only_old_finished_messages(store: ContractStore) -> None:
    done = await store.enqueue(message(at=T0))
    lease = await lease_one(store, T0)
    await store.record_outcome(lease, [outcome("alice@example.com", State.DELIVERED)], T0 + 10)
    pending = await store.enqueue(message(at=T0 + 1))

    assert await store.purge_finished(T0 + 10) == 0  # finished at T0 + 10, not before
    assert await store.purge_finished(T0 + 11) == 1
    assert await store.show(done) is None
    assert await store.show(pending) is not None


# --- opening (sqlite specifics: paths) --------------------------------------------------


async def test_open_store_builds_an_unopened_sqlite_store(tmp_path: Path) -> None:
    path = tmp_path / "new" / "dir" / "queue.db"
    store = open_store("sqlite", path)
    assert isinstance(store, SqliteStore)
    assert not path.exists()
    async with store:
        assert path.exists()
        assert await store.counts() == dict.fromkeys(RecipientState, 0)
    with pytest.raises(StoreError):
        open_store("mongodb", path)


async def test_open_fails_with_store_unavailable_when_the_path_cannot_be_created(
    tmp_path: Path,
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    store = SqliteStore(blocker / "queue.db")
    with pytest.raises(StoreUnavailable):
        await store.open()
    with pytest.raises(StoreError):
        await store.enqueue(message())


async def test_a_commit_from_another_store_wakes_the_waiter(store_factory: StoreFactory) -> None:
    """`relayd queue retry` or a sendmail fallback in another process must wake the daemon's
    dispatcher promptly, not after its longest sleep."""
    daemon_side = await store_factory.open()
    other_process = await store_factory.open()
    loop = asyncio.get_running_loop()
    started = loop.time()
    waiter = asyncio.create_task(daemon_side.wait_for_work(30))
    await asyncio.sleep(0.1)
    enqueued = loop.time()
    await other_process.enqueue(message())
    await asyncio.wait_for(waiter, 5)
    # Promptly: well under the one-second data_version poll that is only the fallback.
    assert loop.time() - enqueued < 0.5
    assert enqueued - started < 1
