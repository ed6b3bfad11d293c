"""Upstreams that break the protocol, and messages nothing foresaw: the daemon over loopback
with scripted upstreams. Only a 2xx to the final dot is a delivery; one bad message or
connection touches that message only."""

from __future__ import annotations

import time

import pytest

from relayd.config.model import Config
from relayd.daemon.relayd import Relayd
from relayd.store import open_store
from relayd.types import NewMessage, Recipient, RecipientState, RecipientView
from tests.conftest import ConfigFactory, running
from tests.support.client import message
from tests.support.fake_upstream import FakeUpstream
from tests.support.raw_upstream import RawUpstream
from tests.support.waits import until

from .test_delivery import generic
from .test_dsn import BOUNCES

ODD = "odd@example.net"  # the recipient whose transaction the upstream gets wrong
GOOD = "good@example.net"


def _new_message(
    subject: str, *recipients: str, options: tuple[str, ...] = (), age: float = 0.0
) -> NewMessage:
    """A message received `age` seconds ago (the older is leased first)."""
    return NewMessage(
        mail_from="app@example.org",
        recipients=tuple(Recipient(address) for address in recipients),
        body=message(subject=subject),
        upstream="main",
        message_id=f"<{subject}@example.org>",
        received_at=time.time() - age,
        mail_options=options,
    )


async def _enqueue(config: Config, *messages: NewMessage) -> None:
    """Queued before the daemon starts, so one worker leases them in one batch."""
    store = open_store(config.queue.backend, config.queue.path)
    await store.open()
    for new in messages:
        await store.enqueue(new)
    await store.close()


async def _recipients(daemon: Relayd) -> dict[str, RecipientView]:
    assert daemon.store is not None
    return {r.address: r for v in await daemon.store.list_messages() for r in v.recipients}


def _out_of_step(raw: RawUpstream, trigger: str, reply: str) -> None:
    """The upstream answers `trigger` with `reply` while ODD's transaction is open, and
    follows its usual script otherwise."""
    open_for_odd: set[int] = set()

    def script(connection: int, command: str) -> str | None:
        if command.upper().startswith("MAIL"):
            open_for_odd.discard(connection)
        if command == f"RCPT TO:<{ODD}>":
            open_for_odd.add(connection)
        if connection in open_for_odd and command.upper().startswith(trigger):
            return reply
        return None

    raw.script = script


@pytest.mark.parametrize(
    ("trigger", "reply", "reason"),
    [
        ("DATA", "250 2.0.0 Ok\r\n", "protocol error: 250 to DATA"),
        # the RCPT reply sent twice: the second is read as DATA's
        ("RCPT", "250 2.1.5 Ok\r\n250 2.1.5 Ok\r\n", "protocol error: 250 to DATA"),
        (".", "354 go on\r\n", "protocol error: 354 to the end of DATA"),
    ],
)
async def test_a_reply_out_of_step_defers_and_closes_the_connection(
    make_config: ConfigFactory, raw: RawUpstream, trigger: str, reply: str, reason: str
) -> None:
    _out_of_step(raw, trigger, reply)
    config = make_config(generic(raw.port))
    await _enqueue(
        config,
        _new_message("odd", ODD, "other@example.net", age=1),
        _new_message("good", GOOD),
    )
    async with running(config) as daemon:
        await until(lambda: _states_are(daemon, RecipientState.DEFERRED, RecipientState.DELIVERED))
        views = await _recipients(daemon)
    for address in (ODD, "other@example.net"):  # the other RCPT's reply is suspect too
        assert views[address].state is RecipientState.DEFERRED
        assert views[address].last_reply == reason
        assert views[address].attempts >= 1
    # The broken connection carried nothing after the bad reply: the good message went on a
    # fresh connection, and was delivered there.
    bad = next(c for c, line in raw.commands if line == f"RCPT TO:<{ODD}>")
    good = next(c for c, line in raw.commands if line == f"RCPT TO:<{GOOD}>")
    assert good != bad
    assert sum(line.startswith("MAIL") for c, line in raw.commands if c == bad) == 1
    subjects = [b.split(b"Subject: ", 1)[1].split(b"\r\n", 1)[0] for b in raw.bodies]
    assert b"good" in subjects
    if trigger != ".":
        assert b"odd" not in subjects  # no body was sent, whatever the upstream said


async def _states_are(daemon: Relayd, odd: RecipientState, good: RecipientState) -> bool:
    views = await _recipients(daemon)
    return ODD in views and views[ODD].state is odd and views[GOOD].state is good


async def test_a_message_that_raises_touches_only_itself(
    make_config: ConfigFactory, upstream: FakeUpstream
) -> None:
    """A recipient aiosmtplib will not send (U+2028; it slipped past intake, here straight
    into the store) raises ValueError mid-transaction. That message is deferred with the
    reason, its attempt counted, and fails at max_lifetime; the next message in the batch is
    sent at once on a reset connection, and delivered."""
    poison = "a\u2028b@example.net"
    config = make_config(
        generic(upstream.port), extra=BOUNCES, queue='max_lifetime = "3s"\nlease_time = "5m"'
    )
    await _enqueue(
        config,
        _new_message("poison", poison, options=("SMTPUTF8",), age=0.1),
        _new_message("good", GOOD),
    )
    async with running(config) as daemon:
        (got,) = await upstream.wait_for(1, timeout=5)  # well within the 5-minute lease
        assert got.recipients == [GOOD]
        await until(lambda: _deferred_by(daemon, poison, "unexpected error: ValueError"))
        await until(lambda: _failed(daemon, poison), timeout=10)
        views = await _recipients(daemon)
        _, report = await upstream.wait_for(2, timeout=10)
    assert views[GOOD].state is RecipientState.DELIVERED
    assert views[poison].attempts > 1  # retried with backoff, not stuck in its lease
    # The last attempt either raised again or found the message past max_lifetime.
    assert any(why in (views[poison].last_reply or "") for why in ("ValueError", "4.4.7 expired"))
    assert (report.mail_from, report.recipients) == ("<>", ["bounces@practice.example"])


async def _deferred_by(daemon: Relayd, address: str, reason: str) -> bool:
    view = (await _recipients(daemon))[address]
    return view.state is RecipientState.DEFERRED and reason in (view.last_reply or "")


async def _failed(daemon: Relayd, address: str) -> bool:
    return (await _recipients(daemon))[address].state is RecipientState.FAILED
