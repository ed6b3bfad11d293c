"""delivery/renewal.py: a lease renewed during a send, confirmed before DATA when a
takeover could have happened by then, and a lost lease ending the send without DATA."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from structlog.testing import capture_logs

from relayd.delivery import renewal
from relayd.errors import LeaseLost, StoreUnavailable
from relayd.types import Lease, QueueId, Recipient
from tests.support.fakes import T0, FakeClock


@dataclass(frozen=True)
class Queue:
    lease_time: float = 300.0
    node_timeout: float = 10.0


@dataclass
class Store:
    """renew_lease as the store's: a renewal, or LeaseLost / StoreUnavailable when told."""

    renewals: list[float] = field(default_factory=list)
    error: Exception | None = None

    async def renew_lease(self, lease: Lease, now: float, lease_for: float) -> None:
        if self.error is not None:
            raise self.error
        self.renewals.append(now + lease_for)


@dataclass
class Session:
    closed: int = 0

    async def close(self) -> None:
        self.closed += 1


def leased(at: float, lease_for: float) -> Lease:
    rcpts = (Recipient("b@example.net"),)
    return Lease(
        QueueId("Q1"), "main", "a@example.org", rcpts, 0, "<m@t>", T0, 1, "t", at + lease_for
    )


async def test_a_send_that_reaches_data_soon_after_its_lease_costs_no_store_write() -> None:
    clock, store, session = FakeClock(), Store(), Session()
    async with renewal.kept(store, leased(T0, 300.0), clock, Queue(), session):
        clock.at += 4.9  # under half of node_timeout (10 s): nobody can have taken it yet
        await renewal.before_data()
    assert store.renewals == []
    assert session.closed == 0


async def test_a_late_data_confirms_the_lease_and_renews_it() -> None:
    clock, store, session = FakeClock(), Store(), Session()
    async with renewal.kept(store, leased(T0, 300.0), clock, Queue(), session):
        clock.at += 5.0
        await renewal.before_data()
    assert store.renewals == [T0 + 5.0 + 300.0]


async def test_a_lost_lease_ends_the_send_before_data() -> None:
    clock, store, session = FakeClock(), Store(error=LeaseLost()), Session()
    reached_data = False
    with capture_logs() as logs:
        async with renewal.kept(store, leased(T0, 300.0), clock, Queue(), session):
            clock.at += 40.0  # frozen (SIGSTOP) meanwhile
            await renewal.before_data()
            reached_data = True
    assert not reached_data
    assert session.closed == 1
    assert [(e["event"], e["before"]) for e in logs] == [("lease_lost", "DATA")]


async def test_a_store_that_cannot_confirm_the_lease_counts_as_lost() -> None:
    clock, session = FakeClock(), Session()
    store = Store(error=StoreUnavailable("postgres: connection refused"))
    async with renewal.kept(store, leased(T0, 300.0), clock, Queue(), session):
        clock.at += 40.0
        await renewal.before_data()
        raise AssertionError("DATA after an unconfirmed lease")
    assert session.closed == 1


async def test_a_store_that_does_not_answer_counts_as_lost_after_half_the_bound() -> None:
    """A partition: the check gives up after min(node_timeout, lease_time) / 2 seconds."""

    class Frozen(Store):
        async def renew_lease(self, lease: Lease, now: float, lease_for: float) -> None:
            await asyncio.sleep(3600)

    clock, session = FakeClock(), Session()
    queue = Queue(node_timeout=0.2)
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with renewal.kept(Frozen(), leased(T0, 300.0), clock, queue, session):
        clock.at += 40.0
        await renewal.before_data()
        raise AssertionError("DATA after an unconfirmed lease")
    assert loop.time() - started < 1.0
    assert session.closed == 1


async def test_a_long_send_renews_its_lease_every_third_of_lease_time() -> None:
    clock, store, session = FakeClock(), Store(), Session()
    async with renewal.kept(store, leased(T0, 0.3), clock, Queue(lease_time=0.3), session):
        await asyncio.sleep(0.35)  # the send's own time, on the wire
    assert len(store.renewals) >= 2
    await asyncio.sleep(0.15)  # and none once the send is over
    count = len(store.renewals)
    await asyncio.sleep(0.15)
    assert len(store.renewals) == count


async def test_outside_a_send_there_is_nothing_to_confirm() -> None:
    await renewal.before_data()  # a session used without a lease (send-test, probes)
