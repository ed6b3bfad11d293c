"""SIGKILL under load loses nothing that was answered 250 (at-least-once; duplicates allowed).

Several smtplib clients in threads send to a `relayd run` child while a slow upstream keeps a
backlog queued; the daemon is killed with SIGKILL mid-run, restarted on the same config and
queue file, and every message a client saw accepted must reach the upstream. With
`server.workers = 2` every process of the daemon is killed at once, as systemd does to the
whole control group (or the OOM killer to a container).
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import re
import signal
import smtplib
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.acceptance.process import Launcher, arun_cli, write_config
from tests.support.client import message
from tests.support.fake_upstream import FakeUpstream

pytestmark = pytest.mark.slow

SENDERS = 6
PER_SENDER = 50  # 300 messages offered in all
KILL_AFTER = 100  # the SIGKILL comes once this many were accepted ...
KILL_DELIVERED = 30  # ... and this many delivered: intake and delivery both mid-stream
PER_CONNECTION = 10  # each client reconnects after this many messages
PACE = 0.03  # seconds a client waits between messages, so the load outlasts the kill
MARKER = re.compile(rb"^X-Test-Marker: (\S+)\r?$", re.MULTILINE)


@dataclass
class Load:
    """What the clients saw: markers answered 250, and every error with when it happened."""

    port: int
    accepted: list[str] = field(default_factory=list)
    errors: list[tuple[float, str, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def sender(self, index: int) -> None:
        """Send PER_SENDER messages; stop at the first error (the daemon is gone)."""
        sent = 0
        while sent < PER_SENDER:
            try:
                with smtplib.SMTP("127.0.0.1", self.port, timeout=20) as client:
                    for _ in range(PER_CONNECTION):
                        if sent >= PER_SENDER:
                            break
                        marker = f"s{index}-{sent}"
                        sent += 1
                        data = message(subject=marker, extra=f"X-Test-Marker: {marker}\r\n")
                        client.sendmail("app@example.org", ["someone@example.net"], data)
                        with self.lock:  # sendmail returned: the DATA reply was 250
                            self.accepted.append(marker)
                        time.sleep(PACE)
            except (smtplib.SMTPException, OSError) as exc:
                with self.lock:
                    self.errors.append((time.monotonic(), f"s{index}-{sent - 1}", repr(exc)))
                return


def markers(upstream: FakeUpstream) -> collections.Counter[str]:
    found: collections.Counter[str] = collections.Counter()
    for received in upstream.received:
        match = MARKER.search(received.data)
        assert match is not None, received.data[:500]
        found[match.group(1).decode()] += 1
    return found


@pytest.mark.parametrize("workers", [1, 2])
async def test_sigkill_under_load_loses_no_accepted_message(
    tmp_path: Path, launch: Launcher, upstream: FakeUpstream, port: int, workers: int
) -> None:
    upstream.script.stall = 0.02  # a slow upstream: a backlog builds up in the queue
    config = write_config(
        tmp_path,
        port=port,
        upstream_port=upstream.port,
        queue={"lease_time": '"2s"'},  # leases of the killed daemon expire quickly
        upstream={"max_connections": "2"},
    )
    config.write_text(
        config.read_text().replace(
            'hostname = "relay.test"', f'hostname = "relay.test"\nworkers = {workers}'
        )
    )
    daemon = await launch.start_ready(config, port)
    children = []
    if workers > 1:
        (started,) = await daemon.wait_event("intake_workers_started")
        children = started["pids"]
    load = Load(port)
    senders = [asyncio.create_task(asyncio.to_thread(load.sender, i)) for i in range(SENDERS)]

    await daemon.until(
        lambda: len(load.accepted) >= KILL_AFTER and len(upstream.received) >= KILL_DELIVERED,
        30.0,
        "accepted and delivered messages",
    )
    killed_at = time.monotonic()
    for child in children:  # the intake workers and the main process, all at once
        os.kill(child, signal.SIGKILL)
    await daemon.kill()
    await asyncio.gather(*senders)
    accepted = set(load.accepted)
    before_restart = markers(upstream)

    assert len(accepted) == len(load.accepted) >= KILL_AFTER
    assert all(at >= killed_at for at, _, _ in load.errors), load.errors  # none before the kill
    assert len(accepted) < SENDERS * PER_SENDER, "the load ended before the kill"
    backlog = accepted - set(before_restart)
    assert backlog, "the upstream kept up: the kill caught nothing queued"

    again = await launch.start_ready(config, port)
    await again.until(
        lambda: accepted <= set(markers(upstream)),
        30.0,
        "every accepted message at the upstream",
    )
    code, _ = await again.terminate()
    assert code == 0

    delivered = markers(upstream)
    missing = accepted - set(delivered)
    assert not missing, f"lost {len(missing)} accepted messages: {sorted(missing)[:20]}"
    duplicates = sum(delivered.values()) - len(delivered)
    unacknowledged = set(delivered) - accepted  # committed, but the 250 never reached the app
    offered = {f"s{i}-{n}" for i in range(SENDERS) for n in range(PER_SENDER)}
    assert set(delivered) <= offered
    # Nothing is left pending or failed in the store.
    result = await arun_cli("queue", "list", "--json", "-c", str(config))
    assert result.returncode == 0, result.stderr
    states = collections.Counter(
        r["state"] for v in json.loads(result.stdout) for r in v["recipients"]
    )
    assert set(states) == {"delivered"}, states
    assert states["delivered"] == len(delivered)
    print(
        f"\ncrash: accepted={len(accepted)} delivered_before_kill={len(before_restart)} "
        f"backlog_at_kill={len(backlog)} delivered_unique={len(delivered)} "
        f"delivered_total={sum(delivered.values())} duplicates={duplicates} "
        f"unacknowledged_but_delivered={len(unacknowledged)} client_errors={len(load.errors)}"
    )
