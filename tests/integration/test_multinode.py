"""Several relayd nodes on one PostgreSQL store behave as one relay (issue 7).

The subprocess tests start three `relayd run` children on different ports, sharing one
database schema and one fake upstream limited to 20 messages in any 10 s, and load all
three. The upstream's own timestamps must show the ceiling held globally and every message
delivered exactly once; then one node is killed with SIGKILL while it holds leases, and its
leased mail must be delivered by the others once the (short) lease has expired.

The store-level tests at the end check the primitives those rest on with several stores
(as several nodes would) on one schema: concurrent migration, disjoint SKIP LOCKED claims,
the ledger's row lock under concurrent reservations, fencing, leadership.
"""

from __future__ import annotations

import asyncio
import collections
import re
import secrets
import smtplib
import time
from datetime import datetime
from pathlib import Path

import pytest

from relayd.errors import LeaseLost, StoreUnavailable
from relayd.store.postgres.sql import SCHEMA_VERSION
from relayd.store.postgres.store import PostgresStore
from relayd.types import Ceiling, NewMessage, Recipient, RecipientOutcome, RecipientState
from tests.acceptance.process import (
    DaemonProcess,
    Launcher,
    arun_cli,
    free_port,
    write_config,
)
from tests.support import postgres
from tests.support.client import message
from tests.support.fake_upstream import FakeUpstream

pytestmark = pytest.mark.postgres

NODES = 3
CEILING, PERIOD = 20, 10.0
# The ledger's time is taken when a lane reserves a send; the upstream stamps the message
# when its DATA ends, a little later (connection set-up, a busy CPU). The upstream's
# windows are judged with exactly that delay, measured per message from the node's
# `delivery_attempt` log event (plus the body read before it), and the delay must stay
# small: a broken lock would let a whole burst of 60 through within a second.
RESERVE_TO_ATTEMPT = 0.05  # reserve_send -> load_body -> the delivery_attempt event
MAX_JITTER = 0.5  # the exact check is the ledger audit; this one must agree with it
LEASE_TIME = 3.0
# The victim's delivery_attempt event comes a little after it took the lease (reserve,
# body read): a survivor's attempt must come at least this close to the lease's expiry,
# far later than the kill itself (0.3 s after that event).
LEASE_SLACK = 1.0
MARKER = re.compile(rb"^X-Test-Marker: (\S+)\r?$", re.MULTILINE)


def node_config(
    directory: Path, index: int, dsn: str, upstream: FakeUpstream, **upstream_keys: str
) -> tuple[Path, int]:
    port = free_port()
    config = write_config(
        directory,
        port=port,
        upstream_port=upstream.port,
        queue={"backend": '"postgres"', "dsn": f'"{dsn}"', "lease_time": f'"{LEASE_TIME:g}s"'},
        upstream={"rate_limits": f'["{CEILING}/{PERIOD:g}s"]', **upstream_keys},
        name=f"node{index}.toml",
    )
    return config, port


async def start_nodes(
    launch: Launcher, tmp_path: Path, dsn: str, upstream: FakeUpstream, **upstream_keys: str
) -> list[DaemonProcess]:
    nodes = []
    for index in range(NODES):
        config, port = node_config(tmp_path, index, dsn, upstream, **upstream_keys)
        nodes.append(launch.start(config, port))
    for node in nodes:  # they start (and migrate) concurrently
        await node.wait_started()
    return nodes


def _send_all(port: int, markers: list[str]) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=20) as client:
        for marker in markers:
            extra = f"X-Test-Marker: {marker}\r\nMessage-ID: <{marker}@multinode.test>\r\n"
            client.sendmail(
                "app@example.org", ["someone@example.net"], message(marker, extra=extra)
            )


async def load(nodes: list[DaemonProcess], per_node: int) -> set[str]:
    """`per_node` messages into each node's intake at once; the markers all were accepted."""
    batches = [[f"n{i}-{k}" for k in range(per_node)] for i in range(len(nodes))]
    await asyncio.gather(
        *(
            asyncio.to_thread(_send_all, node.port, batch)
            for node, batch in zip(nodes, batches, strict=True)
        )
    )
    return {marker for batch in batches for marker in batch}


def marker_of_data(data: bytes) -> str:
    match = MARKER.search(data)
    assert match is not None, data[:300]
    return match.group(1).decode()


def delivered(upstream: FakeUpstream) -> collections.Counter[str]:
    return collections.Counter(marker_of_data(received.data) for received in upstream.received)


async def wait_delivered(upstream: FakeUpstream, markers: set[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not markers <= set(delivered(upstream)):
        missing = markers - set(delivered(upstream))
        assert time.monotonic() < deadline, f"{len(missing)} not delivered: {sorted(missing)}"
        await asyncio.sleep(0.05)


def tightest_window(times: list[float], count: int) -> float:
    """The shortest span holding `count` + 1 consecutive sends (inf if there are fewer)."""
    times = sorted(times)
    spans = [times[i + count] - times[i] for i in range(len(times) - count)]
    return min(spans, default=float("inf"))


# Test instrumentation: every reservation any node inserts into the send ledger is copied
# into ledger_audit (the ledger itself is pruned to the last period).
LEDGER_AUDIT = """
CREATE TABLE ledger_audit (upstream text, sent_at float8, weight int);
CREATE FUNCTION ledger_audit() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO ledger_audit VALUES (NEW.upstream, NEW.sent_at, NEW.weight);
    RETURN NEW;
END $$;
CREATE TRIGGER ledger_audit AFTER INSERT ON send_ledger
    FOR EACH ROW EXECUTE FUNCTION ledger_audit();
"""


HOLD = """
INSERT INTO upstream_holds (upstream, until, reason, level)
VALUES ('main', extract(epoch FROM now()) + 3600, 'test: loading', 0);
"""

RELEASE = """
DELETE FROM upstream_holds WHERE upstream = 'main';
SELECT pg_notify('relayd_work', 'SCHEMA test');
"""


def marker_of(message_id: object) -> str:
    return str(message_id).strip("<>").split("@")[0]


def log_time(event: dict[str, object]) -> float:
    return datetime.fromisoformat(str(event["timestamp"])).timestamp()


def delivered_by(node: DaemonProcess) -> set[str]:
    return {marker_of(e["message_id"]) for e in node.find("delivered")}


# --- three `relayd run` nodes -----------------------------------------------------------


@pytest.mark.slow
async def test_three_nodes_share_one_ceiling_and_deliver_each_message_once(
    tmp_path: Path, launch: Launcher, upstream: FakeUpstream, dsn: str
) -> None:
    config, _ = node_config(tmp_path, 99, dsn, upstream)
    migrated = await arun_cli("migrate", "-c", str(config))
    assert migrated.returncode == 0, migrated.stderr
    assert f"migrated from version 0 to {SCHEMA_VERSION}" in migrated.stdout
    postgres.execute(dsn, LEDGER_AUDIT)
    # Paused while the nodes start and take the load, so the upstream's timestamps are not
    # blurred by intake work; the release NOTIFYs, as `relayd queue retry --all` does, and
    # wakes every node at once.
    postgres.execute(dsn, HOLD)
    nodes = await start_nodes(launch, tmp_path, dsn, upstream)
    markers = await load(nodes, per_node=20)
    assert not upstream.received
    started = time.monotonic()
    schema = dsn.rpartition("search_path=")[2]
    postgres.execute(dsn, RELEASE.replace("SCHEMA", schema))

    await wait_delivered(upstream, markers, timeout=45)
    await asyncio.sleep(1.0)  # a duplicate would arrive now
    elapsed = time.monotonic() - started

    counts = delivered(upstream)
    assert set(counts) == markers
    assert set(counts.values()) == {1}, {m: n for m, n in counts.items() if n > 1}
    # The shared ledger, exactly: no 21 reservations by any nodes within any 10 s.
    audit = postgres.fetch(dsn, "SELECT sent_at FROM ledger_audit WHERE upstream = 'main'")
    assert len(audit) == len(markers)
    ledger_span = tightest_window([row["sent_at"] for row in audit], CEILING)
    assert ledger_span >= PERIOD - 1e-6  # the float rounding of one subtraction
    # The upstream's clock agrees, within the measured reserve-to-arrival delay.
    attempted = {
        marker_of(e["message_id"]): log_time(e) for n in nodes for e in n.find("delivery_attempt")
    }
    times = [received.at for received in upstream.received]
    delay = max(r.at - attempted[marker_of_data(r.data)] for r in upstream.received)
    jitter = delay + RESERVE_TO_ATTEMPT
    slow = sorted((r.at - attempted[marker_of_data(r.data)], r.at) for r in upstream.received)
    assert jitter < MAX_JITTER, f"deliveries took up to {delay:.3f}s: too noisy ({slow[-5:]})"
    span = tightest_window(times, CEILING)
    assert span >= PERIOD - jitter, f"{CEILING + 1} sends within {span:.3f}s"
    assert max(times) - min(times) >= 2 * PERIOD - jitter  # 60 messages: two full periods
    per_node = [len(delivered_by(node)) for node in nodes]
    assert sum(per_node) == len(markers)
    assert sum(1 for n in per_node if n) >= 2, per_node  # the work really was shared
    for node in nodes:
        code, _ = await node.terminate()
        assert code == 0
    print(
        f"\nmultinode: {len(markers)} messages in {elapsed:.1f}s, delivered per node {per_node}; "
        f"tightest {CEILING + 1} reservations {ledger_span:.3f}s, {CEILING + 1} arrivals "
        f"{span:.3f}s (ceiling {CEILING}/{PERIOD:g}s, max delay {delay * 1000:.0f} ms); "
        f"first-to-last {max(times) - min(times):.2f}s"
    )


@pytest.mark.slow
async def test_a_killed_nodes_leases_expire_and_the_others_deliver_its_mail(
    tmp_path: Path, launch: Launcher, upstream: FakeUpstream, dsn: str
) -> None:
    upstream.script.stall = 1.5  # slow deliveries: every node holds leases most of the time
    nodes = await start_nodes(launch, tmp_path, dsn, upstream, max_connections="2")
    markers = await load(nodes, per_node=8)
    victim, survivors = nodes[0], nodes[1:]

    await victim.wait_event("delivery_attempt", timeout=15)
    await asyncio.sleep(0.3)  # mid-DATA: the upstream is stalling its reply
    await victim.kill()
    killed_at = time.time()
    # What it was sending when it died: attempts its log shows no outcome for.
    attempts = {e["message_id"]: e for e in victim.find("delivery_attempt")}
    outcomes = ("delivered", "deferred", "failed", "expired")
    done = {e["message_id"] for e in victim.events() if e.get("event") in outcomes}
    in_flight = {m: e for m, e in attempts.items() if m not in done}
    assert in_flight, "the victim held no lease when it was killed"

    await wait_delivered(upstream, markers, timeout=50)
    await asyncio.sleep(1.0)
    counts = delivered(upstream)
    assert set(counts) == markers  # nothing lost
    orphans = {marker_of(m) for m in in_flight}
    duplicates = {m for m, n in counts.items() if n > 1}
    # At-least-once: only what the victim was sending when it died may arrive twice.
    assert duplicates <= orphans, duplicates - orphans
    # Its leased messages were taken over by the others, after its lease had expired.
    rescued = set().union(*(delivered_by(node) for node in survivors))
    assert orphans <= rescued, orphans - rescued
    for node in survivors:
        for event in node.find("delivery_attempt"):
            if event["message_id"] in in_flight:
                leased_at = log_time(in_flight[event["message_id"]])
                assert log_time(event) >= leased_at + LEASE_TIME - LEASE_SLACK
    for node in survivors:
        code, _ = await node.terminate()
        assert code == 0
    print(
        f"\nmultinode kill: {len(markers)} messages, victim in flight {len(orphans)}, "
        f"duplicates {len(duplicates)}, rescued after {time.time() - killed_at:.1f}s"
    )


# --- the primitives, with several stores on one schema ----------------------------------

T0 = 1_700_000_000.0


def new(at: float, upstream: str = "main") -> NewMessage:
    rcpts = (Recipient("b@example.net"),)
    return NewMessage("a@example.org", rcpts, b"x", upstream, f"<{at}@t>", at)


async def open_stores(dsn: str, count: int) -> list[PostgresStore]:
    stores = [PostgresStore(dsn, pool_size=4) for _ in range(count)]
    await asyncio.gather(*(store.open() for store in stores))  # migrate concurrently
    return stores


async def test_nodes_migrate_concurrently_and_claim_disjoint_work(dsn: str) -> None:
    stores = await open_stores(dsn, 4)
    try:
        v = SCHEMA_VERSION
        assert sorted(store.migrated for store in stores) == [(0, v), (v, v), (v, v), (v, v)]
        await asyncio.gather(*(stores[0].enqueue(new(T0 + i)) for i in range(200)))
        claims = await asyncio.gather(
            *(
                store.lease_due("main", T0 + 500, 10, 60, f"node{n}-{k}")
                for k in range(10)
                for n, store in enumerate(stores)
            )
        )
        ids = [lease.queue_id for leases in claims for lease in leases]
        assert len(ids) == len(set(ids)) == 200
    finally:
        await asyncio.gather(*(store.close() for store in stores))


async def test_concurrent_reservations_on_several_nodes_never_exceed_a_ceiling(dsn: str) -> None:
    stores = await open_stores(dsn, 3)
    ceilings = [Ceiling(20, 10.0)]
    try:
        slots = await asyncio.gather(
            *(
                store.reserve_send("main", T0 + k * 0.001, ceilings, 0.0, 1, 60.0)
                for k in range(30)
                for store in stores
            )
        )
        assert sum(slot.reservation is not None for slot in slots) == 20
        spaced = await asyncio.gather(
            *(store.reserve_send("spaced", T0, [], 2.0, 1, 60.0) for store in stores)
        )
        granted = [slot for slot in spaced if slot.reservation is not None]
        assert len(granted) == 1  # min_interval holds across nodes too
        assert {slot.reason for slot in spaced if slot.reservation is None} == {"min_interval 2s"}
    finally:
        await asyncio.gather(*(store.close() for store in stores))


async def test_a_node_that_lost_its_lease_cannot_record(dsn: str) -> None:
    first, second = await open_stores(dsn, 2)
    try:
        queue_id = await first.enqueue(new(T0))
        (stale,) = await first.lease_due("main", T0, 1, 3.0, "node-a")
        (current,) = await second.lease_due("main", T0 + 3.0, 1, 3.0, "node-b")
        done = [RecipientOutcome("b@example.net", RecipientState.DELIVERED, "250 ok")]
        with pytest.raises(LeaseLost):
            await first.record_outcome(stale, done, T0 + 4)
        await second.record_outcome(current, done, T0 + 4)
        view = await first.show(queue_id)
        assert view is not None
        assert [(r.state, r.attempts) for r in view.recipients] == [(RecipientState.DELIVERED, 1)]
    finally:
        await asyncio.gather(first.close(), second.close())


async def test_one_leader_at_a_time_and_failover_when_it_goes(dsn: str) -> None:
    stores = await open_stores(dsn, 3)
    try:
        answers = [await store.try_lead("bounces") for store in stores]
        assert answers.count(True) == 1
        leader = answers.index(True)
        assert await stores[leader].try_lead("bounces") is True  # still leading
        assert await stores[(leader + 1) % 3].try_lead("digest") is True  # another job
        await stores[leader].close()  # the leader's session ends (a crash does the same)
        others = [store for n, store in enumerate(stores) if n != leader]
        assert [await store.try_lead("bounces") for store in others].count(True) == 1
    finally:
        await asyncio.gather(*(store.close() for store in stores))


async def test_a_store_recovers_when_the_server_drops_its_sessions(dsn: str) -> None:
    """A PostgreSQL restart or failover cuts every session: the next calls may fail with
    StoreUnavailable (intake answers 451), then the pool reconnects and the listener is back."""
    name = f"relayd_{secrets.token_hex(4)}"
    named = f"{dsn}&application_name={name}"
    waiter, writer = PostgresStore(named, pool_size=2), PostgresStore(dsn, pool_size=2)
    await asyncio.gather(waiter.open(), writer.open())
    try:
        killed = postgres.fetchval(
            dsn,
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE application_name = $1",
            name,
        )
        assert killed >= 2  # the pool's connection and the listener's
        failures: list[StoreUnavailable] = []
        while len(failures) < 20:
            try:
                await waiter.counts()
            except StoreUnavailable as exc:  # a connection the pool had not noticed was cut
                failures.append(exc)
                await asyncio.sleep(0.1)
            else:
                break
        assert len(failures) <= 2, failures
        # The listener reconnected (it wakes the waiter once when it does) ...
        await asyncio.wait_for(waiter.wait_for_work(5.0), 5.0)
        # ... and hears the other node again.
        task = asyncio.create_task(waiter.wait_for_work(30.0))
        await asyncio.sleep(0.1)
        await writer.enqueue(new(T0))
        await asyncio.wait_for(task, 5.0)
        assert (await waiter.counts())[RecipientState.QUEUED] == 1
    finally:
        await asyncio.gather(waiter.close(), writer.close())
