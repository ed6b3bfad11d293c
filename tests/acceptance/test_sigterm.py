"""SIGTERM: `relayd run` stops cleanly, exits 0 in time, and keeps what it has not delivered."""

from __future__ import annotations

import json
import signal
import socket
from pathlib import Path
from typing import Any

import pytest

from tests.acceptance.process import Launcher, arun_cli, write_config
from tests.support.client import RawClient, message, send
from tests.support.fake_upstream import FakeUpstream

pytestmark = pytest.mark.slow

SHUTDOWN_TIMEOUT = 5.0  # write_config's queue.shutdown_timeout


async def queue_list(config: Path) -> list[dict[str, Any]]:
    result = await arun_cli("queue", "list", "--json", "-c", str(config))
    assert result.returncode == 0, result.stderr
    views: list[dict[str, Any]] = json.loads(result.stdout)
    return views


async def test_sigterm_exits_0_and_undelivered_mail_is_delivered_after_restart(
    tmp_path: Path, launch: Launcher, upstream: FakeUpstream, port: int
) -> None:
    upstream.script.data_replies.append("451 4.3.0 Temporary failure, come back later")
    # One retry step far enough out that the message is still deferred when we stop.
    config = write_config(
        tmp_path, port=port, upstream_port=upstream.port, queue={"retry": '["2s"]'}
    )
    daemon = await launch.start_ready(config, port)
    await send(port, message(subject="kept", extra="X-Marker: kept-1\r\n"))
    (deferred,) = await daemon.wait_event("deferred")
    assert deferred["smtp_response"].startswith("451 4.3.0")

    code, took = await daemon.terminate()

    assert code == 0
    assert took < SHUTDOWN_TIMEOUT
    names = daemon.event_names()
    assert names.index("started") < names.index("stopping") < names.index("stopped")
    assert names[-1] == "stopped"
    assert upstream.received == []
    (view,) = await queue_list(config)
    assert view["queue_id"] == deferred["queue_id"]
    assert [r["state"] for r in view["recipients"]] == ["deferred"]

    again = await launch.start_ready(config, port)
    (got,) = await upstream.wait_for(1)
    await again.wait_event("delivered", queue_id=deferred["queue_id"])
    assert b"X-Marker: kept-1" in got.data
    code, _ = await again.terminate()
    assert code == 0
    (view,) = await queue_list(config)
    assert [r["state"] for r in view["recipients"]] == ["delivered"]
    assert view["recipients"][0]["attempts"] == 2


async def test_sigterm_lets_an_in_flight_delivery_finish(
    tmp_path: Path, launch: Launcher, upstream: FakeUpstream, port: int
) -> None:
    upstream.script.stall = 1.0  # the upstream is slow to answer DATA
    config = write_config(tmp_path, port=port, upstream_port=upstream.port)
    daemon = await launch.start_ready(config, port)
    await send(port, message(subject="in flight"))
    await daemon.wait_event("delivery_attempt")

    code, took = await daemon.terminate()

    assert code == 0
    assert took < SHUTDOWN_TIMEOUT
    assert len(upstream.received) == 1
    names = daemon.event_names()
    assert names.index("stopping") < names.index("delivered") < names.index("stopped")
    assert "shutdown_cancelled" not in names
    (view,) = await queue_list(config)
    assert [r["state"] for r in view["recipients"]] == ["delivered"]


async def test_sigterm_cancels_a_delivery_that_outlasts_shutdown_timeout(
    tmp_path: Path, launch: Launcher, upstream: FakeUpstream, port: int
) -> None:
    upstream.script.stall = 30.0  # far longer than the shutdown timeout
    config = write_config(
        tmp_path,
        port=port,
        upstream_port=upstream.port,
        queue={"shutdown_timeout": '"1s"'},
        upstream={"timeout": '"60s"'},
    )
    daemon = await launch.start_ready(config, port)
    await send(port, message(subject="stuck", extra="X-Marker: stuck-1\r\n"))
    (attempt,) = await daemon.wait_event("delivery_attempt")

    code, took = await daemon.terminate()

    assert code == 0
    assert 1.0 <= took < 1.0 + 3.0  # shutdown_timeout plus the bounded cancel grace
    (cancelled,) = daemon.find("shutdown_cancelled")
    assert cancelled["in_flight"] == 1
    assert daemon.event_names()[-1] == "stopped"
    (view,) = await queue_list(config)
    assert [r["state"] for r in view["recipients"]] == ["queued"]

    # Its lease was put back at the stop, and the restarted daemon delivers it.
    upstream.script.stall = 0.0
    received_before = len(upstream.received)
    again = await launch.start_ready(config, port)
    await again.wait_event("delivered", timeout=15.0, queue_id=attempt["queue_id"])
    assert any(b"X-Marker: stuck-1" in r.data for r in upstream.received[received_before:])
    code, _ = await again.terminate()
    assert code == 0


def refuses_connections(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


async def test_sigterm_closes_the_listener_but_finishes_a_transaction_in_data(
    tmp_path: Path, launch: Launcher, upstream: FakeUpstream, port: int
) -> None:
    config = write_config(tmp_path, port=port, upstream_port=upstream.port)
    daemon = await launch.start_ready(config, port)
    client = RawClient(port)
    try:
        assert (await client.connect()).startswith("220 ")
        assert (await client.cmd("EHLO app.test")).startswith("250")
        assert (await client.cmd("MAIL FROM:<app@example.org>")).startswith("250")
        assert (await client.cmd("RCPT TO:<someone@example.net>")).startswith("250")
        assert (await client.cmd("DATA")).startswith("354")

        daemon.send_signal(signal.SIGTERM)
        await daemon.wait_event("stopping")
        await daemon.until(lambda: refuses_connections(port), 5.0, "the listener to close")
        reply = await client.cmd(message(subject="mid-shutdown") + b"\r\n.")
        assert reply.startswith("250 "), reply
        after = await client.reply()  # then the session is told the daemon is going away
        assert after.startswith("421 ") or after == "<closed>", after
    finally:
        await client.close()
    assert await daemon.wait_exit(SHUTDOWN_TIMEOUT + 1) == 0
    # It was committed: delivered before the lanes stopped, or still queued for the next run.
    (view,) = await queue_list(config)
    assert view["queue_id"] in reply
    assert [r["state"] for r in view["recipients"]] in (["queued"], ["delivered"])
    assert len(upstream.received) == (view["recipients"][0]["state"] == "delivered")


async def test_shutdown_with_a_stuck_delivery_is_bounded_by_shutdown_timeout(
    tmp_path: Path, launch: Launcher, upstream: FakeUpstream, port: int
) -> None:
    upstream.script.stall = 30.0
    config = write_config(
        tmp_path,
        port=port,
        upstream_port=upstream.port,
        queue={"shutdown_timeout": '"1s"'},
        upstream={"timeout": '"60s"'},
    )
    daemon = await launch.start_ready(config, port)
    await send(port, message(subject="stuck"))
    await daemon.wait_event("delivery_attempt")
    code, took = await daemon.terminate(timeout=15.0)
    assert code == 0
    assert took < 1.0 + 2.0, f"shutdown took {took:.1f}s with shutdown_timeout = 1s"


async def test_sigint_also_stops_gracefully(
    tmp_path: Path, launch: Launcher, upstream: FakeUpstream, port: int
) -> None:
    config = write_config(tmp_path, port=port, upstream_port=upstream.port)
    daemon = await launch.start_ready(config, port)
    daemon.send_signal(signal.SIGINT)
    assert await daemon.wait_exit(SHUTDOWN_TIMEOUT) == 0
    assert daemon.event_names()[-2:] == ["stopping", "stopped"]
