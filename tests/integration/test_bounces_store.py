"""The late-bounce poller with the REAL store (SQLite) against Dovecot: a bounce about a
message the upstream had accepted marks its recipient `bounced`, the report is forwarded
through the queue to the bounce mailbox (and arrives at the upstream), the IMAP message is
moved out of the inbox."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from relayd.bounces.poller import BouncePoller
from relayd.bounces.store import QueueBounceStore
from relayd.clock import SystemClock
from relayd.store.sqlite.store import SqliteStore
from relayd.types import NewMessage, QueueId, Recipient, RecipientOutcome, RecipientState
from tests.conftest import ConfigFactory, running
from tests.support.dovecot import Dovecot, private_dovecot
from tests.support.fake_upstream import FakeUpstream

from .test_bounces import MOVE_TO, sample
from .test_delivery import generic

pytestmark = pytest.mark.imap
QUEUE_ID = QueueId("238HJPJKCKJLFMR2K")  # the original in gmail_failure.eml


@pytest.fixture
def dovecot() -> Iterator[Dovecot]:
    with private_dovecot() as server:
        yield server


async def test_late_bounce_with_the_real_store(
    dovecot: Dovecot, make_config: ConfigFactory, upstream: FakeUpstream
) -> None:
    config = make_config(
        generic(upstream.port), extra='[bounces]\nmailbox = "bounces@practice.example"\n'
    )
    clock = SystemClock()
    now = clock.now()  # the forwarded report is delivered by a daemon on the real clock
    settings = dovecot.settings(lookback=10**9)
    dovecot.append(sample("gmail_failure.eml"))
    dovecot.append(sample("reply.eml"))
    original = NewMessage(
        mail_from="billing@practice.example",
        recipients=(Recipient("no-such-user@example.com"),),
        body=b"Subject: invoice\r\n\r\nhello\r\n",
        upstream="main",
        message_id=f"<relayd.{QUEUE_ID}@relay.test>",
        received_at=now - 600,
        queue_id=QUEUE_ID,
    )
    async with SqliteStore(config.queue.path) as store:
        await store.enqueue(original)
        (lease,) = await store.lease_due("main", now - 590, 1, 60, "w")
        delivered = RecipientOutcome(lease.addresses[0], RecipientState.DELIVERED, "250 ok")
        await store.record_outcome(lease, [delivered], now - 590)
        poller = BouncePoller(settings, QueueBounceStore(config, store), clock)
        result = await poller.poll_once(now)
        assert (result.bounces, result.matched) == (1, 1)
        view = await store.show(QUEUE_ID)
        assert view is not None
        assert view.recipients[0].state is RecipientState.BOUNCED
        assert "5.1.1" in (view.recipients[0].last_reply or "")
        again = await BouncePoller(settings, QueueBounceStore(config, store), clock).poll_once(
            now + 60
        )
        assert again.seen == 0  # the place was saved in the store
    assert [m.message_id for m in dovecot.messages(MOVE_TO)]
    assert len(dovecot.messages()) == 1  # the ordinary reply stays
    async with running(config):  # the daemon delivers the forwarded report
        (forwarded,) = await upstream.wait_for(1)
    assert forwarded.mail_from == "<>"
    assert forwarded.recipients == ["bounces@practice.example"]
    assert forwarded.data.replace(b"\r\n", b"\n").endswith(
        sample("gmail_failure.eml").split(b"\n\n", 1)[1]
    )
