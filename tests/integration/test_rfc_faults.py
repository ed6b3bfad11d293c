"""Issue 13, item 5: RFC 5321/3461 and provider-policy gaps, each through the daemon over
loopback with a scripted raw upstream (tests/support/raw_upstream.py)."""

from __future__ import annotations

import asyncio
import email
from dataclasses import replace
from email.message import EmailMessage
from email.policy import default

import pytest
from structlog.testing import capture_logs

from relayd.daemon.relayd import Relayd
from relayd.types import RecipientState
from tests.conftest import ConfigFactory, running
from tests.support.client import message
from tests.support.raw_upstream import DROP, RawUpstream
from tests.support.waits import until

from .test_delivery import generic, port_of
from .test_delivery_faults import _enqueue, _new_message, _recipients
from .test_dsn import BOUNCES, _send_with_options
from .test_notices import NOTIFICATIONS

TWELVE = tuple(f"r{n}@example.net" for n in range(12))


@pytest.mark.parametrize("cap_reply", ["552 5.5.3 Too many recipients", "452 4.5.3 Too many"])
async def test_a_recipient_cap_sends_the_rest_in_further_transactions(
    make_config: ConfigFactory, raw: RawUpstream, cap_reply: str
) -> None:
    """RFC 5321 4.5.3.1.10: a 552 after some recipients were accepted means "too many
    recipients"; like a 452 it is temporary, and the rest go in the next transaction."""
    taken: dict[int, int] = {}

    def script(connection: int, command: str) -> str | None:
        if command.startswith("MAIL"):
            taken[connection] = 0
        elif command.startswith("RCPT"):
            taken[connection] += 1
            if taken[connection] > 5:
                return cap_reply + "\r\n"
        return None

    raw.script = script
    config = make_config(generic(raw.port))
    await _enqueue(config, _new_message("twelve", *TWELVE))
    async with running(config) as daemon:
        await until(lambda: _all_delivered(daemon, TWELVE))
    assert len(raw.bodies) == 3  # 5 + 5 + 2, in one attempt
    sent = [line for _, line in raw.commands if line.startswith("RCPT")]
    assert sent[:5] == [f"RCPT TO:<{a}>" for a in TWELVE[:5]]
    assert sum(line.startswith("MAIL") for _, line in raw.commands) == 3


async def _all_delivered(daemon: Relayd, addresses: tuple[str, ...]) -> bool:
    views = await _recipients(daemon)
    return all(a in views and views[a].state is RecipientState.DELIVERED for a in addresses)


async def test_the_final_dot_reply_may_take_longer_than_the_general_timeout(
    make_config: ConfigFactory, raw: RawUpstream
) -> None:
    """RFC 5321 4.5.3.2.6: the reply to the final dot may take 10 minutes: a reply after 4 s,
    twice the general timeout, is a delivery, not a retry."""
    raw.delay = lambda connection, command: 4.0 if command == "." else 0.0
    config = make_config(generic(raw.port))  # timeout = "2s"
    await _enqueue(config, _new_message("slow", "slow@example.net"))
    async with running(config) as daemon:
        await until(lambda: _all_delivered(daemon, ("slow@example.net",)), timeout=15)
        views = await _recipients(daemon)
    assert views["slow@example.net"].attempts == 1
    assert len(raw.bodies) == 1  # sent once


async def test_a_reply_lost_after_the_final_dot_marks_the_retry_a_possible_duplicate(
    make_config: ConfigFactory, raw: RawUpstream
) -> None:
    """The connection drops after the dot was sent: the upstream may have the message, so
    the retry is logged as a possible duplicate."""
    raw.script = lambda connection, command: DROP if connection == 1 and command == "." else None
    config = make_config(generic(raw.port))
    await _enqueue(config, _new_message("lost", "lost@example.net"))
    with capture_logs() as logs:
        async with running(config) as daemon:
            await until(lambda: _all_delivered(daemon, ("lost@example.net",)))
    assert len(raw.bodies) == 2
    (lost,) = [e for e in logs if e["event"] == "reply_lost"]
    assert lost["possible_duplicate"] is True
    (retry,) = [e for e in logs if e["event"] == "possible_duplicate"]
    assert retry["queue_id"] == lost["queue_id"]
    deferred = [e for e in logs if e["event"] == "deferred"]
    assert "a retry may duplicate it" in deferred[0]["smtp_response"]


SEND_AS_DENIED = (
    "554 5.2.0 STOREDRV.Submission.Exception:SendAsDeniedException.MapiExceptionSendAsDenied;"
    " Failed to process message due to a permanent exception\r\n"
)


async def test_send_as_denied_holds_the_senders_mail_and_tells_the_operator(
    make_config: ConfigFactory, raw: RawUpstream
) -> None:
    """Microsoft's SendAsDenied is the account's permission on one sender: that sender's
    mail is deferred (never bounced at once), the operator gets the fix, and it fails with a
    DSN at max_lifetime like any deferred mail; another sender's mail goes on."""
    sender: dict[int, str] = {}

    def script(connection: int, command: str) -> str | None:
        if command.startswith("MAIL"):
            sender[connection] = command
        if command == "." and "app@example.org" in sender[connection]:
            return SEND_AS_DENIED
        return None

    raw.script = script
    config = make_config(
        generic(raw.port), extra=BOUNCES + NOTIFICATIONS, queue='max_lifetime = "4s"'
    )
    other = _new_message("other", "someone@example.net")
    other = replace(other, mail_from="billing@example.org", message_id="<other@example.org>")
    await _enqueue(config, _new_message("denied", "a@example.net"), other)
    async with running(config) as daemon:
        await until(lambda: _state_of(daemon, "a@example.net", RecipientState.DEFERRED))
        assert ("send_as_denied", "main: app@example.org") in [
            (kind, key) for kind, key, _ in daemon.notifier.active()
        ]
        await until(lambda: _all_delivered(daemon, ("someone@example.net",)))
        await until(lambda: _state_of(daemon, "a@example.net", RecipientState.FAILED), timeout=15)
        await until(lambda: len(_mail_to(raw, "ops@practice.example")) >= 1, timeout=10)
        await until(lambda: len(_mail_to(raw, "bounces@practice.example")) >= 1, timeout=10)
        views = await _recipients(daemon)
    assert views["a@example.net"].attempts >= 1
    assert (views["a@example.net"].last_reply or "").startswith(("554 5.2.0", "4.4.7 expired"))
    notice = email.message_from_bytes(_mail_to(raw, "ops@practice.example")[0], policy=default)
    assert "may not send as this sender" in str(notice["Subject"])
    assert isinstance(notice, EmailMessage)
    text = " ".join(str(notice.get_body(("plain",)).get_content()).split())  # type: ignore[union-attr]
    assert "'Send As' permission" in text and 'from_policy = "rewrite"' in text  # the fix
    (dsn,) = _mail_to(raw, "bounces@practice.example")
    assert b"Action: failed" in dsn


async def _state_of(daemon: Relayd, address: str, state: RecipientState) -> bool:
    views = await _recipients(daemon)
    return address in views and views[address].state is state


def _mail_to(raw: RawUpstream, address: str) -> list[bytes]:
    """The bodies the upstream read for transactions that named `address` in a RCPT."""
    rcpts: dict[int, list[str]] = {}
    bodies: list[bytes] = []
    dots = 0
    for connection, line in list(raw.commands):
        if line.startswith("MAIL"):
            rcpts[connection] = []
        elif line.startswith("RCPT"):
            rcpts[connection].append(line)
        elif line == ".":
            if any(f"<{address}>" in r for r in rcpts[connection]):
                bodies.append(raw.bodies[dots])
            dots += 1
    return bodies


TOO_MANY_SESSIONS = "432 4.3.2 STOREDRV.ClientSubmit; sender thread limit exceeded\r\n"


async def test_432_lowers_the_number_of_sessions(
    make_config: ConfigFactory, raw: RawUpstream
) -> None:
    """Microsoft's 432 4.3.2 (too many concurrent connections) retries the message and
    lowers the upstream's sessions: with a limit of 2 and max_connections = 4, two sessions
    remain and every message is delivered."""
    refused_at: list[int] = []  # connections open when a 432 was sent

    def script(connection: int, command: str) -> str | None:
        if command.startswith("MAIL") and raw.open > 2:
            refused_at.append(raw.open)
            return TOO_MANY_SESSIONS
        return None

    raw.script = script
    # rate_limits: one message per lease, so the four workers send at once
    upstream = generic(raw.port, 'max_connections = 4\nrate_limits = ["100000/hour"]')
    config = make_config(upstream)
    subjects = [f"m{n}" for n in range(16)]
    await _enqueue(config, *(_new_message(s, f"{s}@example.net", age=1) for s in subjects))
    async with running(config) as daemon:
        addresses = tuple(f"{s}@example.net" for s in subjects)
        await until(lambda: _all_delivered(daemon, addresses), timeout=20)
        assert daemon.lanes is not None
        slots = daemon.lanes.lanes["main"].slots
        assert raw.open <= 2  # the workers beyond the limit closed their connections
    assert refused_at  # the upstream did refuse sessions over its limit ...
    assert slots.limit == 2  # ... and the lane settled on what it allows
    assert len(raw.bodies) == 16


async def _notify_success(port: int) -> None:
    """An app asks NOTIFY=SUCCESS (with an ORCPT) for one recipient over SMTP."""
    rcpts = {"someone@example.net": ["NOTIFY=SUCCESS,FAILURE", "ORCPT=rfc822;someone@example.net"]}
    data = message(subject="Tell me", extra="Message-ID: <tell@example.org>\r\n")
    await asyncio.to_thread(_send_with_options, port, rcpts, data, ["ENVID=tell-1"])


async def test_notify_success_through_an_upstream_without_dsn_gets_a_relayed_report(
    make_config: ConfigFactory, raw: RawUpstream
) -> None:
    """RFC 3461 6.2.1: the upstream cannot report success, so relayd reports "relayed"
    (2.0.0) to the sender, from the null sender."""
    config = make_config(generic(raw.port))
    async with running(config) as daemon:
        await _notify_success(port_of(daemon))
        await until(lambda: len(_mail_to(raw, "app@example.org")) == 1)
        await asyncio.sleep(0.3)  # no second report
    assert [line for _, line in raw.commands if line.startswith("RCPT")] == [
        "RCPT TO:<someone@example.net>",  # no NOTIFY for a server without DSN
        "RCPT TO:<app@example.org>",
    ]
    assert "MAIL FROM:<>" in [line.split(" SIZE")[0] for _, line in raw.commands]
    (report,) = _mail_to(raw, "app@example.org")
    assert b"Action: relayed" in report
    assert b"Status: 2.0.0" in report
    assert b"Original-Recipient: rfc822;someone@example.net" in report
    assert b"Original-Envelope-Id: tell-1" in report


async def test_notify_success_through_an_upstream_with_dsn_goes_on_the_wire(
    make_config: ConfigFactory, raw: RawUpstream
) -> None:
    """An upstream that offers DSN gets NOTIFY and ORCPT (and RET/ENVID) and reports itself:
    relayd sends no report of its own."""
    raw.script = lambda c, command: (
        "250-raw\r\n250-DSN\r\n250 8BITMIME\r\n" if command.startswith("EHLO") else None
    )
    config = make_config(generic(raw.port))
    async with running(config) as daemon:
        await _notify_success(port_of(daemon))
        await until(lambda: _all_delivered(daemon, ("someone@example.net",)))
        await asyncio.sleep(0.3)  # no report follows
    rcpts = [line for _, line in raw.commands if line.startswith("RCPT")]
    assert rcpts == [
        "RCPT TO:<someone@example.net> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;someone@example.net"
    ]
    (mail,) = [line for _, line in raw.commands if line.startswith("MAIL")]
    assert "ENVID=tell-1" in mail
    assert len(raw.bodies) == 1


async def test_a_report_refused_for_good_raises_a_notice(
    make_config: ConfigFactory, raw: RawUpstream
) -> None:
    """A DSN to the bounce mailbox that fails permanently: no DSN about a DSN, so the
    operator gets a notice (report_undeliverable)."""
    refuse = {"RCPT TO:<gone@example.net>", "RCPT TO:<bounces@practice.example>"}
    raw.script = lambda c, command: "550 5.1.1 no such mailbox\r\n" if command in refuse else None
    config = make_config(generic(raw.port), extra=BOUNCES)
    await _enqueue(config, _new_message("bounced", "gone@example.net"))
    with capture_logs() as logs:
        async with running(config) as daemon:
            await until(
                lambda: (
                    ("report_undeliverable", "bounces@practice.example")
                    in [(kind, key) for kind, key, _ in daemon.notifier.active()]
                )
            )
            views = await _recipients(daemon)
    assert views["bounces@practice.example"].state is RecipientState.FAILED
    (event,) = [e for e in logs if e["event"] == "report_undeliverable"]
    assert event["recipient"] == "bounces@practice.example"
    assert len([e for e in logs if e["event"] == "dsn_queued"]) == 1  # no DSN about the DSN
