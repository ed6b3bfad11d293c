"""Ceilings are exact at the provider: no window of the period holds more than N arrivals.

The provider counts what arrives. These tests count the same way: the fake upstream's time
of each message's end of DATA, every trailing window checked, no allowance for jitter. The
upstream makes the first message on each new connection arrive late (its first MAIL is
answered after a stall, as a connection slow with TLS or AUTH would be), so a ledger that
counted a send from its reservation would let the next period's sends, on warm connections,
land inside the window of those late ones. Real daemons: one in-process on SQLite, and two
or three `relayd run` processes on one PostgreSQL schema; `max_connections` 1 and 3.
"""

from __future__ import annotations

import asyncio
import smtplib
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest

from tests.acceptance.process import Launcher, free_port, write_config
from tests.conftest import ConfigFactory, running
from tests.support import postgres
from tests.support.client import message, send
from tests.support.fake_upstream import FakeUpstream, Received

pytestmark = pytest.mark.slow

FIRST_MAIL_STALL = 0.4  # seconds a new connection's first message arrives late


def windows_over(arrivals: Sequence[float], count: int, period: float) -> list[list[float]]:
    """Every trailing window (t - period, t] ending at an arrival that holds more than
    `count` arrivals: the windows ending at an arrival are the fullest ones."""
    times = sorted(arrivals)
    return [
        [s for s in times if t - period < s <= t]
        for t in times
        if sum(1 for s in times if t - period < s <= t) > count
    ]


def described(arrivals: Sequence[float], count: int, period: float) -> str:
    over = windows_over(arrivals, count, period)
    if not over:
        return "none"
    worst = max(over, key=len)
    return f"{len(over)} windows, worst {len(worst)} in {worst[-1] - worst[0]:.3f}s"


# --- SQLite: one in-process daemon --------------------------------------------------------


@pytest.mark.parametrize("connections", [1, 3])
async def test_sqlite_arrivals_never_exceed_the_ceiling_in_any_window(
    make_config: ConfigFactory, upstream: FakeUpstream, connections: int
) -> None:
    upstream.script.first_mail_stall = FIRST_MAIL_STALL
    config = make_config(
        'provider = "generic"\nhost = "127.0.0.1"\n'
        f'port = {upstream.port}\nsecurity = "none"\nauth = "none"\ntimeout = "2s"\n'
        f'connect_timeout = "2s"\nrate_limits = ["5/2s"]\nmax_connections = {connections}\n'
    )
    total = 16
    async with running(config) as daemon:
        port = daemon.addresses[0][1]
        await asyncio.gather(*(send(port, message(subject=f"n{i}")) for i in range(total)))
        got = await upstream.wait_for(total, timeout=30)
    arrivals = [r.at for r in got]
    assert windows_over(arrivals, 5, 2.0) == [], described(arrivals, 5, 2.0)
    # The allowance is still used: 16 sends are 3 full periods after the first 5.
    span = max(arrivals) - min(arrivals)
    assert span < 3 * (2.0 + FIRST_MAIL_STALL) + 1.0, span
    print(f"\nSQLite x {connections} connections, 5/2s: {total} arrivals in {span:.2f}s (ideal 6s)")


# --- PostgreSQL: two or three `relayd run` nodes on one schema ---------------------------

HOLD = """
INSERT INTO upstream_holds (upstream, until, reason, level)
VALUES ('main', extract(epoch FROM now()) + 3600, 'test: loading', 0);
"""
RELEASE = """
DELETE FROM upstream_holds WHERE upstream = 'main';
SELECT pg_notify('relayd_work', 'SCHEMA test');
"""


@pytest.fixture
async def pg_upstream() -> AsyncIterator[FakeUpstream]:
    async with FakeUpstream() as fake:
        yield fake


def _send_all(port: int, subjects: list[str]) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=20) as client:
        for subject in subjects:
            client.sendmail("app@example.org", ["someone@example.net"], message(subject))


def subject_of(received: Received) -> str:
    for line in received.data.decode().splitlines():
        if line.startswith("Subject:"):
            return line.split(":", 1)[1].strip()
    raise AssertionError(received.data[:300])


@pytest.mark.postgres
@pytest.mark.parametrize(
    ("nodes", "count", "period", "connections"),
    [(2, 6, 2.0, 1), (3, 10, 5.0, 1), (3, 10, 5.0, 3)],
    ids=["2-nodes-6/2s-1-connection", "3-nodes-10/5s-1-connection", "3-nodes-10/5s-3-connections"],
)
async def test_postgres_nodes_never_exceed_the_shared_ceiling_in_any_window(
    tmp_path: Path,
    launch: Launcher,
    pg_upstream: FakeUpstream,
    dsn: str,
    nodes: int,
    count: int,
    period: float,
    connections: int,
) -> None:
    pg_upstream.script.first_mail_stall = FIRST_MAIL_STALL
    daemons = []
    for index in range(nodes):
        port = free_port()
        config = write_config(
            tmp_path,
            port=port,
            upstream_port=pg_upstream.port,
            queue={"backend": '"postgres"', "dsn": f'"{dsn}"'},
            upstream={
                "rate_limits": f'["{count}/{period:g}s"]',
                "max_connections": str(connections),
            },
            name=f"node{index}.toml",
        )
        daemons.append(launch.start(config, port))
    for daemon in daemons:
        await daemon.wait_started()
    # Paused while the nodes take the load, then released at once (NOTIFY wakes them all).
    postgres.execute(dsn, HOLD)
    per_node = 3 * count // nodes
    batches = [[f"n{i}-{k}" for k in range(per_node)] for i in range(nodes)]
    await asyncio.gather(
        *(
            asyncio.to_thread(_send_all, d.port, batch)
            for d, batch in zip(daemons, batches, strict=True)
        )
    )
    assert not pg_upstream.received
    schema = dsn.rpartition("search_path=")[2]
    postgres.execute(dsn, RELEASE.replace("SCHEMA", schema))
    total = nodes * per_node
    got = await pg_upstream.wait_for(total, timeout=60)
    await asyncio.sleep(0.5)  # a duplicate would arrive now
    for daemon in daemons:
        code, _ = await daemon.terminate()
        assert code == 0

    assert sorted(subject_of(r) for r in pg_upstream.received) == sorted(
        s for batch in batches for s in batch
    )
    arrivals = [r.at for r in got]
    assert windows_over(arrivals, count, period) == [], described(arrivals, count, period)
    span = max(arrivals) - min(arrivals)
    periods = total // count - 1  # full periods after the first N
    assert span < periods * (period + FIRST_MAIL_STALL) + 2.0, span
    print(
        f"\n{nodes} nodes x {connections} connections, {count}/{period:g}s: {total} arrivals "
        f"in {span:.2f}s (ideal {periods * period:g}s), windows over the limit: 0"
    )
