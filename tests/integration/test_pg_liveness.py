"""A node that dies, freezes or is cut off costs seconds, not lease_time (issue 14, 2 and 4).

Real `relayd run` children on one PostgreSQL schema, a fake upstream, SIGKILL, SIGSTOP and
SIGCONT, and a TcpProxy (tests/support/tcp_proxy.py) between one node and the database.
queue.lease_time is 300 s here, as by default: what moves a gone node's mail is its lapsed
heartbeat (queue.node_timeout), not its leases' expiry. The tests that are about something
else than the default's bound run with a short node_timeout to stay short.
"""

from __future__ import annotations

import asyncio
import signal
import smtplib
import time
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path

import pytest

from tests.acceptance.process import DaemonProcess, Launcher, free_port, write_config
from tests.support import postgres
from tests.support.client import message
from tests.support.fake_upstream import FakeUpstream
from tests.support.tcp_proxy import TcpProxy

pytestmark = pytest.mark.postgres

TAKEOVER_BOUND = 15.0  # issue 14: a gone node's leases and leadership move within 15 s
DEFAULT_NODE_TIMEOUT = 10.0  # queue.node_timeout's default (config/relayd.example.toml)
SHORT_NODE_TIMEOUT = 2.0


def node(
    launch: Launcher,
    directory: Path,
    name: str,
    dsn: str,
    upstream: FakeUpstream,
    *,
    node_timeout: float | None = None,
    node_id: str | None = None,
    lease_time: str = "300s",
    extra: str = "",
    **upstream_keys: str,
) -> DaemonProcess:
    """Start `relayd run` as node `name` (its own config file and intake port)."""
    queue = {"backend": '"postgres"', "dsn": f'"{dsn}"', "lease_time": f'"{lease_time}"'}
    if node_timeout is not None:
        queue["node_timeout"] = f'"{node_timeout:g}s"'
    if node_id is not None:
        queue["node_id"] = f'"{node_id}"'
    port = free_port()
    config = write_config(
        directory,
        port=port,
        upstream_port=upstream.port,
        queue=queue,
        upstream=upstream_keys,
        name=f"{name}.toml",
    )
    config.write_text(config.read_text() + extra)
    return launch.start(config, port)


def restart(launch: Launcher, daemon: DaemonProcess) -> DaemonProcess:
    """The same node (same config, same node id) started again."""
    config = Path(str(daemon.proc.args[-1]))  # type: ignore[index]
    return launch.start(config, daemon.port)


def send(port: int, marker: str) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=20) as client:
        extra = f"Message-ID: <{marker}@liveness.test>\r\n"
        client.sendmail("app@example.org", ["someone@example.net"], message(marker, extra=extra))


async def asend(daemon: DaemonProcess, *markers: str) -> None:
    for marker in markers:
        await asyncio.to_thread(send, daemon.port, marker)


def markers_received(upstream: FakeUpstream) -> list[str]:
    out = []
    for received in upstream.received:
        for line in received.data.split(b"\r\n"):
            if line.lower().startswith(b"message-id: <"):
                out.append(line.split(b"<")[1].split(b"@")[0].decode())
    return out


async def wait_received(upstream: FakeUpstream, markers: set[str], timeout: float) -> float:
    """Seconds until every marker arrived upstream; fails after `timeout`."""
    started = time.monotonic()
    while not markers <= set(markers_received(upstream)):
        missing = markers - set(markers_received(upstream))
        assert time.monotonic() - started < timeout, f"not delivered in {timeout}s: {missing}"
        await asyncio.sleep(0.05)
    return time.monotonic() - started


def log_time(event: dict[str, object]) -> float:
    return datetime.fromisoformat(str(event["timestamp"])).timestamp()


def attempted(daemon: DaemonProcess) -> set[str]:
    return {str(e["message_id"]).strip("<>").split("@")[0] for e in daemon.find("delivery_attempt")}


# --- issue 14, item 2: a gone node's leases ------------------------------------------------


@pytest.mark.slow
async def test_a_killed_nodes_mail_moves_to_another_node_within_the_default_node_timeout(
    tmp_path: Path, launch: Launcher, upstream: FakeUpstream, dsn: str
) -> None:
    """Default node_timeout, lease_time 300 s: before issue 14 the survivor waited 300 s."""
    upstream.script.stall = 2.0  # the victim is mid-DATA when it dies
    victim = node(launch, tmp_path, "victim", dsn, upstream)
    await victim.wait_started()
    survivor = node(launch, tmp_path, "survivor", dsn, upstream)
    await survivor.wait_started()
    # The survivor has nothing to do: every message is the victim's (its lane is faster
    # to lease what its own intake committed, but either may lease any of them).
    await asend(victim, *(f"m{k}" for k in range(6)))
    await victim.wait_event("delivery_attempt", timeout=10)
    await asyncio.sleep(0.3)
    await victim.kill()
    killed_at = time.time()
    orphans = attempted(victim) - set(markers_received(upstream))
    assert orphans, "the victim held no lease when it was killed"

    await wait_received(upstream, {f"m{k}" for k in range(6)}, timeout=TAKEOVER_BOUND + 10)
    rescued = orphans & attempted(survivor)
    assert rescued == orphans
    took_over = min(
        log_time(e) - killed_at
        for e in survivor.find("delivery_attempt")
        if str(e["message_id"]).strip("<>").split("@")[0] in orphans
    )
    assert took_over < TAKEOVER_BOUND, f"the survivor took the leases after {took_over:.1f}s"
    print(
        f"\nliveness: a killed node's {len(orphans)} leases were taken over {took_over:.1f}s "
        f"after SIGKILL (node_timeout {DEFAULT_NODE_TIMEOUT:g}s default, lease_time 300s)"
    )
    code, _ = await survivor.terminate()
    assert code == 0


async def test_a_restarted_node_takes_back_its_own_leases_at_once(
    tmp_path: Path, launch: Launcher, upstream: FakeUpstream, dsn: str
) -> None:
    """Same node id across restarts (host name and listen address): the earlier run's
    leases are released at start, not left to lapse (node_timeout) or expire (lease_time)."""
    upstream.script.stall = 2.0
    first = node(launch, tmp_path, "only", dsn, upstream, node_timeout=60.0)
    await first.wait_started()
    await asend(first, "r1")
    await first.wait_event("delivery_attempt", timeout=10)
    await first.kill()
    upstream.script.stall = 0.0
    second = restart(launch, first)
    await second.wait_started()
    (released,) = second.find("leases_released")
    assert released["count"] == 1
    waited = await wait_received(upstream, {"r1"}, timeout=10)
    print(f"\nliveness: restarted, the killed run's lease delivered after {waited:.1f}s")
    code, _ = await second.terminate()
    assert code == 0


@pytest.mark.slow
async def test_a_second_daemon_with_the_same_node_id_is_refused(
    tmp_path: Path, launch: Launcher, upstream: FakeUpstream, dsn: str
) -> None:
    """It would release the first one's leases as its own earlier run's: it waits for the
    id's session to end (a dead run's does, within the server's keepalives), then gives up."""
    first = node(launch, tmp_path, "one", dsn, upstream, node_id="twin")
    await first.wait_started()
    second = node(launch, tmp_path, "two", dsn, upstream, node_id="twin")
    code = await second.wait_exit(30)
    assert code != 0
    assert "another relayd runs as node 'twin'" in second.log_text()
    assert "queue.node_id" in second.log_text()
    code, _ = await first.terminate()
    assert code == 0


async def test_a_long_send_keeps_its_lease(
    tmp_path: Path, launch: Launcher, upstream: FakeUpstream, dsn: str
) -> None:
    """A send longer than lease_time renews its lease: the other node never sends it too."""
    upstream.script.stall = 4.0  # DATA takes longer than lease_time
    nodes = [
        node(launch, tmp_path, name, dsn, upstream, lease_time="2s", timeout='"10s"')
        for name in ("a", "b")
    ]
    for daemon in nodes:
        await daemon.wait_started()
    await asend(nodes[0], "long")
    await wait_received(upstream, {"long"}, timeout=15)
    await asyncio.sleep(2.5)  # a second copy would arrive now
    assert markers_received(upstream) == ["long"]
    assert upstream.data_seen == 1
    assert sum(len(d.find("delivery_attempt")) for d in nodes) == 1
    for daemon in nodes:
        code, _ = await daemon.terminate()
        assert code == 0


async def test_a_frozen_node_whose_lease_moved_sends_no_data_when_it_resumes(
    tmp_path: Path, launch: Launcher, upstream: FakeUpstream, dsn: str
) -> None:
    """SIGSTOP between RCPT and DATA, the lease taken over meanwhile, SIGCONT: the old
    owner checks its lease before DATA, finds it gone and QUITs (issue 14: it sent DATA)."""
    upstream.script.rcpt_stall = 1.0
    # A reply timeout longer than the freeze: the RCPT reply, not a timeout, comes first.
    frozen = node(
        launch, tmp_path, "frozen", dsn, upstream, node_timeout=SHORT_NODE_TIMEOUT, timeout='"30s"'
    )
    await frozen.wait_started()
    await asend(frozen, "f1")
    await frozen.wait_event("delivery_attempt", timeout=10)
    await asyncio.sleep(0.3)  # waiting for the RCPT reply
    frozen.send_signal(signal.SIGSTOP)
    stopped = time.monotonic()
    try:
        other = node(launch, tmp_path, "other", dsn, upstream, node_timeout=SHORT_NODE_TIMEOUT)
        await other.wait_started()
        await wait_received(upstream, {"f1"}, timeout=TAKEOVER_BOUND)
        moved = time.monotonic() - stopped  # the other node's start and a 1 s RCPT included
        print(f"\nliveness: a frozen node's lease delivered by another {moved:.1f}s after SIGSTOP")
    finally:
        frozen.send_signal(signal.SIGCONT)
    await frozen.wait_event("lease_lost", timeout=10, before="DATA")
    await asyncio.sleep(1.0)
    assert markers_received(upstream) == ["f1"]
    assert upstream.data_seen == 1  # the resumed node never sent DATA
    assert attempted(other) == {"f1"}
    for daemon in (frozen, other):
        code, _ = await daemon.terminate()
        assert code == 0


async def test_a_partitioned_node_whose_lease_moved_sends_no_data(
    tmp_path: Path, launch: Launcher, upstream: FakeUpstream, dsn: str, proxy: TcpProxy
) -> None:
    """The node's database connections freeze between RCPT and DATA: another node takes its
    lease after node_timeout; the cut-off node cannot confirm its lease before DATA, so it
    sends none (it does not wait for a statement timeout either)."""
    upstream.script.rcpt_stall = 1.5
    cut = node(
        launch,
        tmp_path,
        "cut",
        proxy.dsn(dsn),
        upstream,
        node_timeout=SHORT_NODE_TIMEOUT,
        timeout='"30s"',
    )
    await cut.wait_started()
    await asend(cut, "p1")
    await cut.wait_event("delivery_attempt", timeout=10)
    await asyncio.sleep(0.3)  # waiting for the RCPT reply
    proxy.freeze()
    frozen = time.monotonic()
    try:
        other = node(launch, tmp_path, "other", dsn, upstream, node_timeout=SHORT_NODE_TIMEOUT)
        await other.wait_started()
        await wait_received(upstream, {"p1"}, timeout=TAKEOVER_BOUND)
        moved = time.monotonic() - frozen  # the other node's start and a 1.5 s RCPT included
        await cut.wait_event("lease_lost", timeout=10, before="DATA")
        print(f"\nliveness: a partitioned node's lease delivered by another {moved:.1f}s later")
    finally:
        proxy.thaw()
    await asyncio.sleep(1.0)
    assert markers_received(upstream) == ["p1"]
    assert upstream.data_seen == 1  # the cut-off node never sent DATA
    assert len(other.find("delivered")) == 1  # the other node did
    for daemon in (cut, other):
        code, _ = await daemon.terminate()
        assert code == 0


# --- issue 14, item 4: leadership ------------------------------------------------------------

# A backlog from the start: one recipient waiting is over backlog_depth, and the upstream
# is held (a throttle, so a lane's start does not lift it) so that it stays.
NOTIFICATIONS = """
[notifications]
mailbox = "ops@example.org"
digest_interval = "1s"
backlog_depth = 1
"""
HOLD = """
INSERT INTO upstream_holds (upstream, until, reason, level)
VALUES ('main', extract(epoch FROM now()) + 3600, 'test: backlog', 0);
"""
NOTICE_ROUND = 5.0  # daemon/schedule.py's NOTICES_EVERY
BACKLOG = "The queue is backing up"


def backlog_digests(daemon: DaemonProcess, after: float = 0.0) -> list[dict[str, object]]:
    return [
        e
        for e in daemon.find("notice_digest")
        if BACKLOG in str(e["subject"]) and log_time(e) >= after
    ]


def resolved_after(daemon: DaemonProcess, after: float) -> list[dict[str, object]]:
    events = daemon.find("notice_resolved") + [
        e for e in daemon.find("notice_digest") if e.get("resolved")
    ]
    return [e for e in events if log_time(e) >= after]


@pytest.fixture
async def proxy() -> AsyncIterator[TcpProxy]:
    host, _, port = postgres.DSN.partition("@")[2].partition("/")[0].partition(":")
    async with TcpProxy(host, int(port or 5432)) as tcp_proxy:
        yield tcp_proxy


async def leader_then_follower(
    launch: Launcher, tmp_path: Path, leader_dsn: str, dsn: str, upstream: FakeUpstream
) -> tuple[DaemonProcess, DaemonProcess]:
    """A leader that has mailed the backlog notice, and a follower that has asked to lead."""
    leader = node(
        launch, tmp_path, "leader", leader_dsn, upstream, node_timeout=3.0, extra=NOTIFICATIONS
    )
    await leader.wait_started()
    postgres.execute(dsn, HOLD)
    await asend(leader, "b1", "b2")
    await leader.until(lambda: backlog_digests(leader), NOTICE_ROUND + 5, "the backlog digest")
    follower = node(
        launch, tmp_path, "follower", dsn, upstream, node_timeout=3.0, extra=NOTIFICATIONS
    )
    await follower.wait_started()
    await asyncio.sleep(NOTICE_ROUND + 1)  # its first notice round asked, and did not lead
    assert not backlog_digests(follower)
    return leader, follower


async def test_leadership_moves_off_a_frozen_leader_which_then_says_nothing(
    tmp_path: Path, launch: Launcher, upstream: FakeUpstream, dsn: str
) -> None:
    """SIGSTOP the leader: the follower leads (and reports the backlog) within 15 s; after
    SIGCONT the old leader logs leadership_lost and mails nothing about the queue."""
    leader, follower = await leader_then_follower(launch, tmp_path, dsn, dsn, upstream)
    leader.send_signal(signal.SIGSTOP)
    stopped_at = time.time()
    try:
        await follower.until(
            lambda: backlog_digests(follower), TAKEOVER_BOUND, "the new leader's digest"
        )
        (taken,) = follower.find("leadership_taken", job="notices")
        took_over = log_time(taken) - stopped_at
        await asyncio.sleep(max(0.0, stopped_at + 8.0 - time.time()))  # frozen 8 s in all
    finally:
        leader.send_signal(signal.SIGCONT)
    resumed_at = time.time()
    await leader.wait_event("leadership_lost", timeout=10, job="notices")
    await asyncio.sleep(NOTICE_ROUND + 1.5)  # a round and a digest after the loss
    assert took_over < TAKEOVER_BOUND
    assert resolved_after(leader, resumed_at) == []  # no false "resolved"
    assert backlog_digests(leader, resumed_at) == []
    assert backlog_digests(follower)  # the backlog is still reported, by the new leader
    print(f"\nleadership: taken over {took_over:.1f}s after SIGSTOP (node_timeout 3s)")
    for daemon in (leader, follower):
        code, _ = await daemon.terminate()
        assert code == 0


async def test_leadership_moves_off_a_partitioned_leader_which_then_says_nothing(
    tmp_path: Path, launch: Launcher, upstream: FakeUpstream, dsn: str, proxy: TcpProxy
) -> None:
    """The leader's database connections freeze (a partition the kernel does not notice):
    the follower leads within 15 s; when the network heals the old leader logs
    leadership_lost and mails no "resolved" (issue 14: it mailed "1 resolved")."""
    leader, follower = await leader_then_follower(launch, tmp_path, proxy.dsn(dsn), dsn, upstream)
    proxy.freeze()
    cut_at = time.time()
    try:
        await follower.until(
            lambda: backlog_digests(follower), TAKEOVER_BOUND, "the new leader's digest"
        )
        (taken,) = follower.find("leadership_taken", job="notices")
        took_over = log_time(taken) - cut_at
        await asyncio.sleep(max(0.0, cut_at + 10.0 - time.time()))  # cut off 10 s in all
    finally:
        proxy.thaw()
    healed_at = time.time()
    await leader.wait_event("leadership_lost", timeout=15, job="notices")
    await asyncio.sleep(NOTICE_ROUND + 1.5)
    assert took_over < TAKEOVER_BOUND
    assert resolved_after(leader, healed_at) == []
    assert backlog_digests(leader, healed_at) == []
    print(f"\nleadership: taken over {took_over:.1f}s after the partition (node_timeout 3s)")
    for daemon in (leader, follower):
        code, _ = await daemon.terminate()
        assert code == 0
