"""Delivery to a real SMTP upstream on loopback, programmed reply by reply."""

from __future__ import annotations

import asyncio

import pytest
from structlog.testing import capture_logs

from relayd.daemon.relayd import Relayd
from relayd.store import open_store
from relayd.types import MessageView, NewMessage, Recipient, RecipientState
from tests.conftest import ConfigFactory, running
from tests.support.client import message, send
from tests.support.fake_upstream import FakeUpstream
from tests.support.waits import until


def generic(port: int, extra: str = "") -> str:
    return "\n".join(
        [
            'provider = "generic"',
            'host = "127.0.0.1"',
            f"port = {port}",
            'security = "none"',
            'auth = "none"',
            'timeout = "2s"',
            'connect_timeout = "2s"',
            extra,
        ]
    )


def port_of(daemon: Relayd) -> int:
    return daemon.addresses[0][1]


async def only_message(daemon: Relayd) -> MessageView:
    assert daemon.store is not None
    views = await daemon.store.list_messages()
    assert len(views) == 1
    return views[0]


async def states(daemon: Relayd) -> dict[str, RecipientState]:
    view = await only_message(daemon)
    return {r.address: r.state for r in view.recipients}


async def test_accepting_upstream_gets_the_message(
    make_config: ConfigFactory, upstream: FakeUpstream
) -> None:
    config = make_config(generic(upstream.port))
    data = message(extra="Message-ID: <m1@example.org>\r\n")
    async with running(config) as daemon:
        await send(port_of(daemon), data, rcpts=["a@example.net", "b@example.net"])
        (got,) = await upstream.wait_for(1)
        await until(lambda: states(daemon))
        await until(lambda: _all_in(daemon, RecipientState.DELIVERED))
    assert got.mail_from == "app@example.org"
    assert got.recipients == ["a@example.net", "b@example.net"]
    assert got.data.endswith(data)
    assert got.data.startswith(b"Received: from ")


async def _all_in(daemon: Relayd, state: RecipientState) -> bool:
    return all(s is state for s in (await states(daemon)).values())


async def test_connection_is_reused_for_consecutive_messages(
    make_config: ConfigFactory, upstream: FakeUpstream
) -> None:
    config = make_config(generic(upstream.port))
    async with running(config) as daemon:
        for index in range(5):
            await send(port_of(daemon), message(subject=f"n{index}"))
        await upstream.wait_for(5)
    assert upstream.connections == 1


async def test_4xx_then_accept_is_retried(
    make_config: ConfigFactory, upstream: FakeUpstream
) -> None:
    upstream.script.data_replies.append("451 4.3.0 Temporary failure, come back later")
    config = make_config(generic(upstream.port))
    with capture_logs() as logs:
        async with running(config) as daemon:
            await send(port_of(daemon), message(extra="Message-ID: <retry@example.org>\r\n"))
            (got,) = await upstream.wait_for(1)
            await until(lambda: _all_in(daemon, RecipientState.DELIVERED))
            view = await only_message(daemon)
    assert view.recipients[0].attempts == 2
    assert b"Message-ID: <retry@example.org>" in got.data
    deferred = [e for e in logs if e["event"] == "deferred"]
    assert deferred and deferred[0]["smtp_response"].startswith("451 4.3.0")


async def test_5xx_fails_without_delivery(
    make_config: ConfigFactory, upstream: FakeUpstream
) -> None:
    upstream.script.data_replies.append("554 5.6.0 Message rejected as spam")
    config = make_config(generic(upstream.port))
    with capture_logs() as logs:
        async with running(config) as daemon:
            await send(port_of(daemon))
            await until(lambda: _all_in(daemon, RecipientState.FAILED))
            view = await only_message(daemon)
    assert upstream.received == []
    assert view.recipients[0].last_reply == "554 5.6.0 Message rejected as spam"
    assert any(e["event"] == "failed" for e in logs)


async def test_partial_recipient_rejection(
    make_config: ConfigFactory, upstream: FakeUpstream
) -> None:
    upstream.script.rcpt_replies["nobody@example.net"] = "550 5.1.1 No such user"
    upstream.script.rcpt_replies["busy@example.net"] = "452 4.2.2 Mailbox full"
    config = make_config(generic(upstream.port))
    rcpts = ["ok@example.net", "nobody@example.net", "busy@example.net"]
    async with running(config) as daemon:
        await send(port_of(daemon), rcpts=rcpts)
        await until(
            lambda: _states_are(
                daemon,
                {
                    "ok@example.net": RecipientState.DELIVERED,
                    "nobody@example.net": RecipientState.FAILED,
                },
            )
        )
        upstream.script.rcpt_replies.pop("busy@example.net")
        await until(lambda: _all_final(daemon))
        final = await states(daemon)
    assert final == {
        "ok@example.net": RecipientState.DELIVERED,
        "nobody@example.net": RecipientState.FAILED,
        "busy@example.net": RecipientState.DELIVERED,
    }
    # The retry carried only the recipient that was still pending.
    assert [r.recipients for r in upstream.received] == [["ok@example.net"], ["busy@example.net"]]


async def _states_are(daemon: Relayd, expected: dict[str, RecipientState]) -> bool:
    current = await states(daemon)
    return all(current.get(k) is v for k, v in expected.items())


async def _all_final(daemon: Relayd) -> bool:
    return all(s.is_final for s in (await states(daemon)).values())


async def test_refused_connections_then_upstream_comes_back(
    make_config: ConfigFactory, upstream: FakeUpstream
) -> None:
    port = upstream.port
    await upstream.stop()
    config = make_config(generic(port))
    async with running(config) as daemon:
        await send(port_of(daemon))
        await until(lambda: _attempted(daemon))
        view = await only_message(daemon)
        assert view.recipients[0].state is RecipientState.DEFERRED
        assert "refused" in (view.recipients[0].last_reply or "")
        await upstream.start()
        await upstream.wait_for(1)
        await until(lambda: _all_in(daemon, RecipientState.DELIVERED))


async def _attempted(daemon: Relayd) -> bool:
    return (await only_message(daemon)).recipients[0].attempts >= 1


async def test_drop_mid_data_is_retried_with_same_message_id(
    make_config: ConfigFactory, upstream: FakeUpstream
) -> None:
    upstream.script.drop_in_data = 1
    config = make_config(generic(upstream.port))
    async with running(config) as daemon:
        await send(port_of(daemon), message(subject="no id"))
        (got,) = await upstream.wait_for(1)
        await until(lambda: _all_in(daemon, RecipientState.DELIVERED))
        view = await only_message(daemon)
    assert upstream.data_seen == 2
    assert f"Message-ID: {view.message_id}".encode() in got.data
    assert view.recipients[0].attempts == 2


async def test_a_final_dot_reply_slower_than_the_lease_is_a_delivery(
    make_config: ConfigFactory, upstream: FakeUpstream
) -> None:
    """The final dot's reply may take 10 minutes (RFC 5321 4.5.3.2.6) and the send renews its
    lease meanwhile (delivery/renewal.py): a reply after 6 s, past a 3 s lease and the 2 s
    general timeout, is a delivery at the first attempt, not a retry and a duplicate."""
    upstream.script.stall = 6.0
    config = make_config(generic(upstream.port), queue='lease_time = "3s"')
    async with running(config) as daemon:
        await send(port_of(daemon))
        await upstream.wait_for(1, timeout=15)
        await until(lambda: _all_in(daemon, RecipientState.DELIVERED))
        view = await only_message(daemon)
    assert view.recipients[0].attempts == 1
    assert upstream.data_seen == 1


async def test_starttls_required_but_not_offered_sends_nothing(
    make_config: ConfigFactory, upstream: FakeUpstream, tmp_path: object
) -> None:
    """security = "starttls" must never fall back to plaintext (aiosmtplib's default would)."""
    secret = tmp_path / "secret"  # type: ignore[operator]
    secret.write_text("hunter2-very-secret\n")
    config = make_config(
        f'provider = "generic"\nhost = "127.0.0.1"\nport = {upstream.port}\nsecurity = "starttls"\n'
        f'username = "u"\npassword_file = "{secret}"\ntimeout = "2s"\n'
    )
    with capture_logs() as logs:
        async with running(config) as daemon:
            await send(port_of(daemon))
            await until(lambda: _attempted(daemon))
            view = await only_message(daemon)
    assert view.recipients[0].state is RecipientState.DEFERRED
    assert "STARTTLS" in (view.recipients[0].last_reply or "").upper()
    assert upstream.received == [] and upstream.mail_options == []
    assert "hunter2" not in repr(logs)


@pytest.mark.parametrize(
    "reply",
    [
        "421 4.7.0 Try again later, closing connection",
        "550 5.4.5 Daily user sending quota exceeded",
    ],
)
async def test_throttle_reply_pauses_the_upstream_then_resumes(
    make_config: ConfigFactory, upstream: FakeUpstream, reply: str
) -> None:
    upstream.script.data_replies.append(reply)
    config = make_config(generic(upstream.port, 'throttle_backoff = ["1s"]'))
    with capture_logs() as logs:
        async with running(config) as daemon:
            await send(port_of(daemon))
            await until(lambda: _attempted(daemon))
            assert daemon.store is not None
            hold = await daemon.store.upstream_hold("main")
            assert hold is not None and hold.until is not None
            await send(port_of(daemon), message(subject="second"))
            await upstream.wait_for(2, timeout=10)
            first_resumed = min(r.at for r in upstream.received)
    throttled = [e for e in logs if e["event"] == "upstream_throttled"]
    assert len(throttled) == 1 and throttled[0]["upstream"] == "main"
    assert not any(e["event"] == "failed" for e in logs)
    assert first_resumed >= hold.until - 0.05


async def test_utf8_address_to_upstream_without_smtputf8_fails_cleanly(
    make_config: ConfigFactory, upstream: FakeUpstream
) -> None:
    """RFC 6531: the message cannot be relayed; it fails (5.6.7), the daemon keeps going."""
    upstream.smtputf8 = False
    config = make_config(generic(upstream.port))
    async with running(config) as daemon:
        await send_utf8(port_of(daemon), "j\u00f6rg@example.net")
        await until(lambda: _all_in(daemon, RecipientState.FAILED))
        view = await only_message(daemon)
        assert (view.recipients[0].last_reply or "").startswith("553 5.6.7")
        await send(port_of(daemon), message(subject="ascii still flows"))
        await upstream.wait_for(1)


async def send_utf8(port: int, rcpt: str) -> None:
    from tests.support.client import RawClient

    client = RawClient(port)
    await client.connect()
    await client.cmd("EHLO app.test")
    assert (await client.cmd("MAIL FROM:<app@example.org> SMTPUTF8")).startswith("250")
    assert (await client.cmd(f"RCPT TO:<{rcpt}>")).startswith("250")
    await client.cmd("DATA")
    assert (await client.cmd(b"Subject: x\r\n\r\nhi\r\n.\r\n")).startswith("250")
    await client.close()


async def test_a_lease_about_to_expire_is_put_back_not_sent_twice(
    make_config: ConfigFactory, upstream: FakeUpstream
) -> None:
    """Fencing: with two workers, a batch outliving its lease must not be sent by both."""
    upstream.script.stall = 0.5
    config = make_config(generic(upstream.port, "max_connections = 2"), queue='lease_time = "2s"')
    store = open_store(config.queue.backend, config.queue.path)
    await store.open()
    for index in range(6):  # all queued before the daemon starts: one worker leases them all
        await store.enqueue(_new_message(index))
    await store.close()
    async with running(config):
        got = await upstream.wait_for(6, timeout=20)
        await asyncio.sleep(1.5)  # time for a duplicate to show up, if one were coming
    subjects = [r.data.split(b"Subject: ", 1)[1].split(b"\r\n", 1)[0] for r in got]
    assert sorted(subjects) == sorted(set(subjects))
    assert len(upstream.received) == 6


def _new_message(index: int) -> NewMessage:
    import time

    body = message(subject=f"fence{index}")
    return NewMessage(
        mail_from="app@example.org",
        recipients=(Recipient("someone@example.net"),),
        body=body,
        upstream="main",
        message_id=f"<fence{index}@example.org>",
        received_at=time.time(),
    )
