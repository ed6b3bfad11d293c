"""PostgreSQL faults between a node and the database cost seconds (issue 14, items 3, 5, 6).

A TcpProxy (tests/support/tcp_proxy.py) sits between one node and the real server, and
freezes (a frozen host: sockets open, nothing moves), cuts or refuses; the other node, or
the test's own session, talks to the server directly.
"""

from __future__ import annotations

import asyncio
import smtplib
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from relayd.errors import StoreUnavailable
from relayd.store.base import SendSlot
from relayd.store.postgres.db import Database
from relayd.store.postgres.store import PostgresStore
from relayd.types import Ceiling, NewMessage, Recipient, RecipientState
from tests.acceptance.process import Launcher, free_port, write_config
from tests.support import postgres
from tests.support.client import message
from tests.support.fake_upstream import FakeUpstream
from tests.support.tcp_proxy import TcpProxy

pytestmark = pytest.mark.postgres

T0 = 1_700_000_000.0
CEILINGS = [Ceiling(1000, 60.0)]
FROZEN_LOCK_BOUND = 10.0  # issue 14: a frozen node's lock is gone within 10 s
INTAKE_BOUND = 10.0  # ... and intake answers 451 within 10 s with the database unreachable
WAKE_BOUND = 2.0  # ... and a lost NOTIFY costs at most 2 s


@pytest.fixture
async def proxy() -> AsyncIterator[TcpProxy]:
    host, _, port = postgres.DSN.partition("@")[2].partition("/")[0].partition(":")
    async with TcpProxy(host, int(port or 5432)) as tcp_proxy:
        yield tcp_proxy


def new(at: float) -> NewMessage:
    return NewMessage("a@example.org", (Recipient("b@example.net"),), b"x", "main", "<m@t>", at)


async def reserve_within(store: PostgresStore, at: float, bound: float) -> float:
    """Seconds until `store` reserved a send, retrying while it is unavailable (a lock
    timeout); fails after `bound` seconds."""
    started = time.monotonic()
    while True:
        try:
            slot: SendSlot = await asyncio.wait_for(
                store.reserve_send("main", at, CEILINGS, 0.0, 1, 60.0), bound
            )
        except (StoreUnavailable, TimeoutError):
            pass
        else:
            assert slot.reservation is not None
            return time.monotonic() - started
        elapsed = time.monotonic() - started
        assert elapsed < bound, f"no reservation within {elapsed:.1f}s: a lock is still held"


async def test_a_node_frozen_mid_reservation_does_not_stop_another(
    dsn: str, proxy: TcpProxy
) -> None:
    frozen, other = PostgresStore(proxy.dsn(dsn), pool_size=2), PostgresStore(dsn, pool_size=2)
    await asyncio.gather(frozen.open(), other.open())
    await other.reserve_send("main", T0, CEILINGS, 0.0, 1, 60.0)  # the upstream's row exists
    proxy.freeze_after(b"send_locks")  # the server runs that statement; no answer returns
    stuck = asyncio.create_task(frozen.reserve_send("main", T0 + 1, CEILINGS, 0.0, 1, 60.0))
    try:
        await asyncio.wait_for(proxy.frozen.wait(), 5)
        await asyncio.sleep(0.2)  # the statement reached the server
        waited = await reserve_within(other, T0 + 2, FROZEN_LOCK_BOUND)
        print(f"\nreserved {waited:.2f}s after the other node froze mid-reservation")
    finally:
        proxy.cut()
        proxy.thaw()
        stuck.cancel()
        await asyncio.gather(stuck, return_exceptions=True)
        await asyncio.gather(frozen.close(), other.close())


async def test_the_server_ends_a_frozen_sessions_transaction_and_its_locks(
    dsn: str, proxy: TcpProxy
) -> None:
    """Whatever a relayd session holds in a transaction, the server takes back once the
    session has been idle in it for idle_in_transaction_session_timeout."""
    other = PostgresStore(dsn, pool_size=2)
    await other.open()
    await other.reserve_send("main", T0, CEILINGS, 0.0, 1, 60.0)
    conn = await Database(proxy.dsn(dsn)).connect()
    try:
        await conn.execute("BEGIN")
        await conn.execute("SELECT * FROM send_locks WHERE upstream = 'main' FOR UPDATE")
        await conn.execute("SELECT * FROM upstream_holds FOR UPDATE")
        proxy.freeze()
        started = time.monotonic()
        postgres.execute(dsn, "SET lock_timeout = '12s'; DELETE FROM send_locks")
        waited = time.monotonic() - started
        assert waited < FROZEN_LOCK_BOUND
        print(f"\nthe frozen session's locks were gone after {waited:.2f}s")
    finally:
        proxy.cut()
        proxy.thaw()
        conn.terminate()
        await other.close()


async def test_a_lost_notify_costs_at_most_two_seconds_after_an_outage(
    dsn: str, proxy: TcpProxy
) -> None:
    """The database unreachable for 10 s (connections cut, new ones refused), then back:
    the other node's next enqueue wakes this node within 2 s."""
    waiter, writer = PostgresStore(proxy.dsn(dsn), pool_size=2), PostgresStore(dsn, pool_size=2)
    await asyncio.gather(waiter.open(), writer.open())
    try:
        await proxy.refuse()
        await asyncio.sleep(10.0)
        await proxy.restore()
        await asyncio.sleep(1.5)  # the database answers again...
        await waiter.wait_for_work(0)  # ... and whatever woke the waiter meanwhile is gone
        task = asyncio.create_task(waiter.wait_for_work(30.0))
        started = time.monotonic()
        await writer.enqueue(new(T0))
        await asyncio.wait_for(task, 5.0)
        woken = time.monotonic() - started
        assert woken < WAKE_BOUND, f"woken {woken:.2f}s after the NOTIFY"
    finally:
        await asyncio.gather(waiter.close(), writer.close())


async def test_work_that_came_without_a_notify_is_found_by_the_poll(dsn: str) -> None:
    waiter, writer = PostgresStore(dsn, pool_size=2), PostgresStore(dsn, pool_size=2)
    await asyncio.gather(waiter.open(), writer.open())
    try:
        await writer.enqueue(new(T0))
        await asyncio.wait_for(waiter.wait_for_work(5.0), 5.0)
        await asyncio.sleep(2.5)  # the poll has seen the queue as it is now
        task = asyncio.create_task(waiter.wait_for_work(30.0))
        started = time.monotonic()
        # A retry whose NOTIFY was lost: due again now, no notification.
        postgres.execute(dsn, "UPDATE messages SET next_attempt_at = extract(epoch FROM now())")
        await asyncio.wait_for(task, 10.0)
        woken = time.monotonic() - started
        assert woken < WAKE_BOUND + 0.5, f"woken {woken:.2f}s after the work came"
        assert (await waiter.counts())[RecipientState.QUEUED] == 1
    finally:
        await asyncio.gather(waiter.close(), writer.close())


# --- a real node ------------------------------------------------------------------------


def _send(port: int, marker: str) -> tuple[float, str]:
    """Seconds to the reply to DATA, and the reply."""
    started = time.monotonic()
    with smtplib.SMTP("127.0.0.1", port, timeout=60) as client:
        try:
            client.sendmail("app@example.org", ["someone@example.net"], message(marker))
        except smtplib.SMTPDataError as exc:
            text = exc.smtp_error
            reply = text.decode() if isinstance(text, bytes) else text
            return time.monotonic() - started, f"{exc.smtp_code} {reply}"
    return time.monotonic() - started, "250"


@pytest.mark.slow
async def test_intake_answers_451_within_10s_while_the_database_is_frozen(
    tmp_path: Path, launch: Launcher, proxy: TcpProxy, dsn: str
) -> None:
    async with FakeUpstream() as upstream:
        port = free_port()
        config = write_config(
            tmp_path,
            port=port,
            upstream_port=upstream.port,
            queue={"backend": '"postgres"', "dsn": f'"{proxy.dsn(dsn)}"'},
        )
        node = await launch.start_ready(config, port)
        assert (await asyncio.to_thread(_send, port, "before"))[1] == "250"
        proxy.freeze()
        took, reply = await asyncio.to_thread(_send, port, "frozen")
        assert reply.startswith("451 4.3.0"), reply
        assert took < INTAKE_BOUND, f"451 after {took:.1f}s"
        proxy.thaw()
        proxy.cut()  # the partition heals as a cut: the pool reconnects
        deadline = time.monotonic() + 20
        while (await asyncio.to_thread(_send, port, "after"))[1] != "250":
            assert time.monotonic() < deadline, "intake did not recover"
        await node.until(lambda: len(upstream.received) >= 2, 20, "the acknowledged delivered")
        subjects = [r.data.split(b"Subject: ")[1].split(b"\r\n")[0] for r in upstream.received]
        assert {b"before", b"after"} <= set(subjects), subjects
        print(f"\n451 after {took:.2f}s with the database frozen; delivered {subjects}")
        code, _ = await node.terminate()
        assert code == 0


@pytest.mark.slow
async def test_a_node_delivers_new_mail_within_2s_of_the_database_coming_back(
    tmp_path: Path, launch: Launcher, proxy: TcpProxy, dsn: str
) -> None:
    """The node reaches the database through the proxy, which refuses for 10 s; then
    another node's enqueue (its NOTIFY) reaches the upstream within 2 s and a little."""
    async with FakeUpstream() as upstream:
        port = free_port()
        config = write_config(
            tmp_path,
            port=port,
            upstream_port=upstream.port,
            queue={"backend": '"postgres"', "dsn": f'"{proxy.dsn(dsn)}"'},
        )
        node = await launch.start_ready(config, port)
        other = PostgresStore(dsn, pool_size=1)
        await other.open()
        try:
            await proxy.refuse()
            await asyncio.sleep(10.0)
            await proxy.restore()
            await asyncio.sleep(1.5)  # the database answers again
            started = time.time()
            await other.enqueue(new(started))
            await node.until(lambda: upstream.received, 10, "the new mail delivered")
            took = upstream.received[0].at - started
            assert took < WAKE_BOUND + 0.5, f"delivered {took:.2f}s after the enqueue"
            print(f"\ndelivered {took:.2f}s after an enqueue that followed a 10 s outage")
        finally:
            await other.close()
        code, _ = await node.terminate()
        assert code == 0
