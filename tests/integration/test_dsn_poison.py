"""Poison messages: app data the `email` package refuses in a header (a Message-ID holding
\\x0b or U+2028) must not stop relayd reporting on the message, and a report that cannot be
made at all must not strand it. The real daemon over loopback, upstream refusing with 550
(or the message past max_lifetime); the DSN arrives at the fake upstream."""

from __future__ import annotations

import email
import time
from email import policy

import pytest
from structlog.testing import capture_logs

from relayd.daemon.relayd import Relayd
from relayd.reports import dsn_reports
from relayd.types import NewMessage, QueueId, Recipient, RecipientState, new_queue_id
from tests.conftest import ConfigFactory, running
from tests.support.client import message, send
from tests.support.fake_upstream import FakeUpstream, Received
from tests.support.waits import until

from .test_delivery import generic, port_of

BOUNCES = """
[bounces]
mailbox = "bounces@practice.example"
"""
POISON = ["\x0b", "\u2028"]


async def _state_of(daemon: Relayd, queue_id: QueueId) -> list[RecipientState]:
    assert daemon.store is not None
    views = await daemon.store.list_messages()
    return [r.state for v in views if v.queue_id == queue_id for r in v.recipients]


async def _original_failed(daemon: Relayd, rcpt: str) -> bool:
    assert daemon.store is not None
    states = [
        r.state
        for v in await daemon.store.list_messages()
        for r in v.recipients
        if r.address == rcpt
    ]
    return states == [RecipientState.FAILED]


def _report_about(report: Received, poison: str) -> None:
    assert report.mail_from == "<>"
    assert report.recipients == ["bounces@practice.example"]
    parsed = email.message_from_bytes(report.data, policy=policy.default)
    assert parsed.get_content_type() == "multipart/report"
    # The app's Message-ID, the refused character replaced by a space, links the report.
    assert parsed["In-Reply-To"] == "<poison 1@example.org>"
    # The app's header block is returned as stored, byte for byte.
    assert f"<poison{poison}1@example.org>".encode() in report.data


@pytest.mark.parametrize("poison", POISON, ids=["vt", "u2028"])
async def test_a_refused_message_with_a_poison_message_id_gets_its_dsn(
    make_config: ConfigFactory, upstream: FakeUpstream, poison: str
) -> None:
    upstream.script.rcpt_replies["nobody@example.net"] = "550 5.1.1 No such user"
    config = make_config(generic(upstream.port), extra=BOUNCES)
    original = message(extra=f"Message-ID: <poison{poison}1@example.org>\r\n")
    async with running(config) as daemon:
        await send(port_of(daemon), original, rcpts=["nobody@example.net"])
        (report,) = await upstream.wait_for(1)
        await until(lambda: _original_failed(daemon, "nobody@example.net"))
    _report_about(report, poison)


@pytest.mark.parametrize("poison", POISON, ids=["vt", "u2028"])
async def test_an_expired_message_with_a_poison_message_id_gets_its_dsn(
    make_config: ConfigFactory, upstream: FakeUpstream, poison: str
) -> None:
    """The expiry path (past queue.max_lifetime when leased): failed, reported, never sent."""
    config = make_config(generic(upstream.port), extra=BOUNCES, queue='max_lifetime = "1h"')
    long_ago = time.time() - 7200
    original = message(extra=f"Message-ID: <poison{poison}1@example.org>\r\n")
    async with running(config) as daemon:
        assert daemon.store is not None
        queue_id = await daemon.store.enqueue(
            NewMessage(
                mail_from="app@example.org",
                recipients=(Recipient("late@example.net"),),
                body=original,
                upstream="main",
                message_id=f"<poison{poison}1@example.org>",
                received_at=long_ago,
                client="127.0.0.1",
                queue_id=new_queue_id(long_ago),
            )
        )
        (report,) = await upstream.wait_for(1)
        await until(lambda: _original_failed(daemon, "late@example.net"))
        assert await _state_of(daemon, queue_id) == [RecipientState.FAILED]
    _report_about(report, poison)
    assert b"4.4.7" in report.data


async def test_a_report_that_cannot_be_built_still_records_the_outcome(
    make_config: ConfigFactory, upstream: FakeUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever breaks building a report (here: a bug, simulated), the recipient becomes
    failed once, the failure is logged with the queue id, and the message leaves the queue's
    pending set instead of being sent again at every lease expiry."""

    def broken(*args: object, **kwargs: object) -> bytes:
        raise RuntimeError("report builder bug")

    monkeypatch.setattr(dsn_reports, "build_dsn", broken)
    upstream.script.rcpt_replies["nobody@example.net"] = "550 5.1.1 No such user"
    config = make_config(generic(upstream.port), extra=BOUNCES)
    with capture_logs() as logs:
        async with running(config) as daemon:
            await send(port_of(daemon), rcpts=["nobody@example.net"])
            await until(lambda: _original_failed(daemon, "nobody@example.net"))
            assert daemon.store is not None
            (view,) = await daemon.store.list_messages()
    failures = [e for e in logs if e["event"] == "dsn_failed"]
    assert [e["queue_id"] for e in failures] == [view.queue_id]
    assert upstream.received == []
