"""Delivery status notifications end to end over loopback: intake -> store -> dispatch ->
FakeUpstream refuses -> relayd's DSN arrives at the same upstream, to the bounce mailbox,
from <>; read back with the stdlib email package field by field."""

from __future__ import annotations

import asyncio
import email
import smtplib
from email import policy
from email.message import EmailMessage

from relayd.daemon.relayd import Relayd
from relayd.types import RecipientState
from tests.conftest import ConfigFactory, running
from tests.support.client import message, send
from tests.support.dsn import status_blocks
from tests.support.fake_upstream import FakeUpstream
from tests.support.waits import until

from .test_delivery import generic, port_of

BOUNCES = """
[bounces]
mailbox = "bounces@practice.example"
"""


def _send_with_options(
    port: int, rcpts: dict[str, list[str]], data: bytes, mail_options: list[str]
) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=20) as client:
        client.ehlo("app.test")
        assert client.has_extn("dsn")
        code, reply = client.mail("app@example.org", mail_options)
        assert code == 250, reply
        for rcpt, options in rcpts.items():
            code, reply = client.rcpt(rcpt, options)
            assert code == 250, reply
        code, reply = client.data(data)
        assert code == 250, reply


async def _states(daemon: Relayd) -> list[RecipientState]:
    assert daemon.store is not None
    return [r.state for v in await daemon.store.list_messages() for r in v.recipients]


async def test_permanent_failure_sends_one_dsn_to_the_bounce_mailbox(
    make_config: ConfigFactory, upstream: FakeUpstream
) -> None:
    upstream.script.rcpt_replies["nobody@example.net"] = "550 5.1.1 No such user"
    upstream.script.rcpt_replies["gone@example.net"] = "550 5.1.1 Gone away"
    config = make_config(generic(upstream.port), extra=BOUNCES)
    original = message(subject="Invoice 42", extra="Message-ID: <inv-42@example.org>\r\n")
    rcpts = ["nobody@example.net", "gone@example.net", "ok@example.net"]
    async with running(config) as daemon:
        await send(port_of(daemon), original, rcpts=rcpts)
        first, report = await upstream.wait_for(2)
    assert first.recipients == ["ok@example.net"]
    assert report.mail_from == "<>"
    assert report.recipients == ["bounces@practice.example"]
    parsed = email.message_from_bytes(report.data, policy=policy.default)
    assert isinstance(parsed, EmailMessage)
    assert parsed.get_content_type() == "multipart/report"
    assert parsed.get_param("report-type") == "delivery-status"
    assert parsed["To"] == "bounces@practice.example"
    assert "MAILER-DAEMON@relay.test" in parsed["From"]
    parts = list(parsed.iter_parts())
    assert [p.get_content_type() for p in parts] == [
        "text/plain",
        "message/delivery-status",
        "text/rfc822-headers",
    ]
    blocks = status_blocks(parsed)
    assert blocks[0]["Reporting-MTA"] == "dns; relay.test"
    assert blocks[0]["Arrival-Date"]
    by_rcpt = {str(b["Final-Recipient"]): b for b in blocks[1:]}
    assert set(by_rcpt) == {"rfc822; nobody@example.net", "rfc822; gone@example.net"}
    nobody = by_rcpt["rfc822; nobody@example.net"]
    assert nobody["Action"] == "failed"
    assert nobody["Status"] == "5.1.1"
    assert nobody["Remote-MTA"] == "dns; 127.0.0.1"
    assert "550 5.1.1 No such user" in str(nobody["Diagnostic-Code"])
    headers = parts[2].get_payload(decode=True)
    assert isinstance(headers, bytes)
    assert b"Message-ID: <inv-42@example.org>" in headers
    assert b"X-Relayd-ID: " in headers  # the app's own Message-ID: relayd marks its copy


async def test_no_dsn_about_a_dsn(make_config: ConfigFactory, upstream: FakeUpstream) -> None:
    """The DSN itself is refused: it fails, and nothing reports on it (no loop)."""
    upstream.script.rcpt_replies["nobody@example.net"] = "550 5.1.1 No such user"
    upstream.script.rcpt_replies["bounces@practice.example"] = "550 5.1.1 No bounce box"
    config = make_config(generic(upstream.port), extra=BOUNCES)
    async with running(config) as daemon:
        await send(port_of(daemon), rcpts=["nobody@example.net"])

        async def two_failed() -> bool:
            return await _states(daemon) == [RecipientState.FAILED] * 2

        await until(two_failed)
        await asyncio.sleep(0.5)
        assert len(await _states(daemon)) == 2
    assert upstream.received == []


async def test_notify_never_and_dsn_parameters_at_intake(
    make_config: ConfigFactory, upstream: FakeUpstream
) -> None:
    upstream.script.rcpt_replies["nobody@example.net"] = "550 5.1.1 No such user"
    upstream.script.rcpt_replies["other@example.net"] = "550 5.1.1 No such user"
    config = make_config(generic(upstream.port), extra=BOUNCES)
    async with running(config) as daemon:
        await asyncio.to_thread(
            _send_with_options,
            port_of(daemon),
            {
                "nobody@example.net": ["NOTIFY=NEVER"],
                "other@example.net": ["NOTIFY=FAILURE,DELAY", "ORCPT=rfc822;other+2Bx@example.net"],
            },
            message(),
            ["RET=HDRS", "ENVID=QQ+2B314"],
        )
        (report,) = await upstream.wait_for(1)
    parsed = email.message_from_bytes(report.data, policy=policy.default)
    blocks = status_blocks(parsed)
    assert blocks[0]["Original-Envelope-Id"] == "QQ+314"  # xtext-decoded at intake
    assert len(blocks) == 2  # NOTIFY=NEVER: not reported
    assert str(blocks[1]["Final-Recipient"]) == "rfc822; other@example.net"
    assert "other+x@example.net" in str(blocks[1]["Original-Recipient"])


async def test_a_utf8_orcpt_is_reported_as_the_app_wrote_it(
    make_config: ConfigFactory, upstream: FakeUpstream
) -> None:
    """The app's ORCPT carries a UTF-8 address as xtext (+C3+A4 for "ä"): relayd's report
    names that address, not one character per byte ("fr\u00c3\u00a4nk")."""
    upstream.script.rcpt_replies["frank@example.net"] = "550 5.1.1 No such user"
    config = make_config(generic(upstream.port), extra=BOUNCES)
    async with running(config) as daemon:
        await asyncio.to_thread(
            _send_with_options,
            port_of(daemon),
            {"frank@example.net": ["ORCPT=rfc822;fr+C3+A4nk@example.net"]},
            message(),
            [],
        )
        (report,) = await upstream.wait_for(1)
    assert "Original-Recipient: utf-8;fränk@example.net\r\n".encode() in report.data
    assert b"Final-Recipient: rfc822; frank@example.net\r\n" in report.data
    assert b"Content-Type: message/global-delivery-status" in report.data


async def test_bad_dsn_parameters_are_refused(make_config: ConfigFactory) -> None:
    config = make_config(generic(1))
    async with running(config) as daemon:

        def talk() -> tuple[int, int, tuple[int, bytes]]:
            with smtplib.SMTP("127.0.0.1", port_of(daemon), timeout=20) as client:
                client.ehlo("app.test")
                mail = client.mail("app@example.org", ["RET=BOTH"])[0]
                client.mail("app@example.org")
                rcpt = client.rcpt("a@example.net", ["NOTIFY=NEVER,DELAY"])[0]
                latin1 = client.rcpt("b@example.net", ["ORCPT=rfc822;b+FCro@example.net"])
                return mail, rcpt, latin1

        mail, rcpt, (code, text) = await asyncio.to_thread(talk)
    assert (mail, rcpt, code) == (501, 501, 501)
    assert b"ORCPT address must be UTF-8 once decoded from xtext" in text


async def test_delay_warning_once(make_config: ConfigFactory, upstream: FakeUpstream) -> None:
    upstream.script.rcpt_replies["slow@example.net"] = "451 4.2.1 Try later"
    extra = BOUNCES + 'delay_warning = "1s"\n'
    config = make_config(generic(upstream.port), extra=extra, queue='max_lifetime = "1h"')
    async with running(config) as daemon:
        await send(port_of(daemon), rcpts=["slow@example.net"])
        (report,) = await upstream.wait_for(1, timeout=15)
        await asyncio.sleep(1.5)
        assert len(upstream.received) == 1  # once only
    parsed = email.message_from_bytes(report.data, policy=policy.default)
    blocks = status_blocks(parsed)
    assert blocks[1]["Action"] == "delayed"
    assert blocks[1]["Status"] == "4.2.1"
