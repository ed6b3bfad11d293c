"""The admin endpoint of an in-process daemon: /healthz, /readyz states, /metrics values."""

from __future__ import annotations

import asyncio
import socket
import sqlite3
import time

import pytest

from relayd.config.model import Config, load
from relayd.daemon.relayd import Relayd
from relayd.store.base import Store
from relayd.types import UpstreamHold
from tests.conftest import ConfigFactory, running
from tests.support.client import message, send
from tests.support.fake_upstream import FakeUpstream
from tests.support.http import get, get_json, sample
from tests.support.waits import until

ADMIN = '[admin]\nlisten = "127.0.0.1:0"\n'


def generic(port: int) -> str:
    return (
        f'provider = "generic"\nhost = "127.0.0.1"\nport = {port}\nsecurity = "none"\n'
        'auth = "none"\ntimeout = "2s"\nconnect_timeout = "2s"\n'
    )


def admin_port(daemon: Relayd) -> int:
    assert daemon.admin is not None and daemon.admin.address is not None
    return daemon.admin.address[1]


def store_of(daemon: Relayd) -> Store:
    assert daemon.store is not None
    return daemon.store


def slow_retries(config: Config) -> Config:
    """The same configuration with a 1h retry step, so a deferral is counted once."""
    assert config.source is not None
    text = config.source.read_text().replace('retry = ["200ms", "400ms"]', 'retry = ["1h"]')
    config.source.write_text(text)
    return load(config.source)


async def test_metrics_count_known_traffic(
    make_config: ConfigFactory, upstream: FakeUpstream
) -> None:
    upstream.script.rcpt_replies["later@example.net"] = "451 4.3.0 try later"
    upstream.script.rcpt_replies["nobody@example.net"] = "550 5.1.1 no such user"
    config = slow_retries(make_config(generic(upstream.port), extra=ADMIN))
    async with running(config) as daemon:
        port = admin_port(daemon)
        _, _, before = await get(port, "/metrics")
        rcpts = ["ok@example.net", "later@example.net", "nobody@example.net"]
        await send(daemon.addresses[0][1], message(), rcpts=rcpts)
        await upstream.wait_for(1)

        async def recorded() -> bool:
            _, _, text = await get(port, "/metrics")
            return sample(
                text, "relayd_recipients_total", upstream="main", outcome="failed"
            ) > sample(before, "relayd_recipients_total", upstream="main", outcome="failed")

        await until(recorded)
        status, content_type, after = await get(port, "/metrics")
    assert status == 200 and content_type.startswith("text/plain")

    def delta(name: str, **labels: str) -> float:
        return sample(after, name, **labels) - sample(before, name, **labels)

    assert delta("relayd_messages_accepted_total", upstream="main") == 1
    for outcome in ("delivered", "deferred", "failed"):
        assert delta("relayd_recipients_total", upstream="main", outcome=outcome) == 1
    assert delta("relayd_delivery_latency_seconds_count", upstream="main") == 1
    assert sample(after, "relayd_queue_recipients", state="deferred") == 1
    assert sample(after, "relayd_queue_recipients", state="delivered") == 1
    assert 0 < sample(after, "relayd_queue_oldest_pending_age_seconds") < 60
    assert sample(after, "relayd_info", version="0.1.0") == 1
    assert "relayd_upstream_throttles_total" in after and "relayd_rate_limit_waits_total" in after


async def test_readyz_names_a_paused_upstream_and_stays_ready(
    make_config: ConfigFactory, upstream: FakeUpstream
) -> None:
    config = make_config(generic(upstream.port), extra=ADMIN)
    async with running(config) as daemon:
        port, store = admin_port(daemon), store_of(daemon)
        assert await get_json(port, "/healthz") == (200, {"status": "ok"})
        status, ready = await get_json(port, "/readyz")
        assert status == 200 and ready["ready"] is True and ready["problems"] == []
        assert ready["warnings"] == []
        assert ready["intake"]["listening"] == [f"127.0.0.1:{daemon.addresses[0][1]}"]
        assert ready["upstreams"]["main"]["state"] == "ok"

        await store.hold_upstream(UpstreamHold("main", None, "535 5.7.8 bad credentials"))
        status, ready = await get_json(port, "/readyz")
        # Mail is still accepted and queued: ready, with the pause named.
        assert status == 200 and ready["ready"] is True and ready["problems"] == []
        assert ready["warnings"] == ["upstream main: auth_failing"]
        assert ready["upstreams"]["main"]["reason"] == "535 5.7.8 bad credentials"

        until = time.time() + 300
        await store.hold_upstream(UpstreamHold("main", until, "421 4.7.0 slow down", 1))
        status, ready = await get_json(port, "/readyz")
        assert status == 200 and ready["upstreams"]["main"]["state"] == "throttled"
        assert ready["warnings"] == ["upstream main: throttled"]
        assert ready["upstreams"]["main"]["until"] is not None

        await store.hold_upstream(UpstreamHold("main", time.time() - 1, "421 4.7.0 old", 1))
        status, ready = await get_json(port, "/readyz")
        assert status == 200 and ready["warnings"] == []  # a throttle that has ended

        await store.release_upstream("main")
        for server in daemon.servers:
            server.close()
        status, ready = await get_json(port, "/readyz")
        assert status == 503 and ready["problems"] == ["intake: not listening"]


async def test_http_edges(make_config: ConfigFactory, upstream: FakeUpstream) -> None:
    config = make_config(generic(upstream.port), extra=ADMIN)
    async with running(config) as daemon:
        port = admin_port(daemon)
        assert (await get(port, "/nothing"))[0] == 404
        assert (await get(port, "/healthz?verbose=1"))[0] == 200

        def raw(request: bytes) -> bytes:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
                conn.sendall(request)
                chunks = []
                while chunk := conn.recv(65536):
                    chunks.append(chunk)
                return b"".join(chunks)

        post = await asyncio.to_thread(raw, b"POST /readyz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert post.startswith(b"HTTP/1.1 405 ") and b"Allow: GET, HEAD" in post
        head = await asyncio.to_thread(raw, b"HEAD /healthz HTTP/1.1\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 ") and head.endswith(b"\r\n\r\n")
        junk = await asyncio.to_thread(raw, b"hello\r\n\r\n")
        assert junk.startswith(b"HTTP/1.1 400 ")


@pytest.mark.slow
async def test_readyz_fails_while_the_store_cannot_take_a_write(
    make_config: ConfigFactory, upstream: FakeUpstream
) -> None:
    config = make_config(generic(upstream.port), extra=ADMIN)
    async with running(config) as daemon:
        port = admin_port(daemon)
        blocker = sqlite3.connect(config.queue.path, isolation_level=None)
        try:
            blocker.execute("BEGIN IMMEDIATE")  # another process holding the write lock
            status, ready = await get_json(port, "/readyz")
            blocker.execute("ROLLBACK")
        finally:
            blocker.close()
        assert status == 503 and ready["store"]["ok"] is False
        assert ready["problems"][0].startswith("store: ")
        assert (await get_json(port, "/readyz"))[0] == 200
