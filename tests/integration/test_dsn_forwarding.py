"""RFC 3461 parameters forwarded upstream end to end over loopback: an app sends RET/ENVID
and NOTIFY/ORCPT to relayd with smtplib; relayd stores them and, when the upstream (a real
aiosmtpd FakeUpstream) advertises DSN, sends exactly them on MAIL and RCPT; when it does
not, sends none of them and the mail is delivered all the same."""

from __future__ import annotations

import asyncio
import smtplib

from relayd.daemon.relayd import Relayd
from relayd.types import RecipientState
from tests.conftest import ConfigFactory, running
from tests.support.client import message
from tests.support.fake_upstream import FakeUpstream, Received
from tests.support.waits import until

from .test_delivery import generic, port_of, states

MAIL_OPTIONS = ["RET=HDRS", "ENVID=abc"]
BOB = "bob+x@example.com"
BOB_OPTIONS = ["NOTIFY=SUCCESS,FAILURE", "ORCPT=rfc822;bob+2Bx@example.com"]  # + is +2B
RCPTS = {
    BOB: BOB_OPTIONS,
    "carol@example.net": [],  # no parameters: none forwarded
    "dave@example.net": ["NOTIFY=NEVER"],
    "erin@example.net": ["ORCPT=RFC822;+45rin+3DX@example.net"],  # needlessly encoded E
    "frank@example.net": ["ORCPT=rfc822;fr+C3+A4nk@example.net"],  # UTF-8 bytes as xtext
    "grete@example.net": ["ORCPT=utf-8;gr\\x{E9}te@example.net"],  # RFC 6533 utf-8 type
}


def _submit(port: int, data: bytes) -> None:
    """MAIL with RET/ENVID and each recipient with its own parameters, as an app would."""
    with smtplib.SMTP("127.0.0.1", port, timeout=20) as client:
        client.ehlo("app.test")
        assert client.has_extn("dsn")
        code, reply = client.mail("app@example.org", MAIL_OPTIONS)
        assert code == 250, reply
        for rcpt, options in RCPTS.items():
            code, reply = client.rcpt(rcpt, options)
            assert code == 250, reply
        code, reply = client.data(data)
        assert code == 250, reply


async def _deliver(daemon: Relayd, upstream: FakeUpstream) -> Received:
    """Submit the message; return what the upstream got once every recipient is delivered."""
    await asyncio.to_thread(_submit, port_of(daemon), message())
    (received,) = await upstream.wait_for(1)

    async def all_delivered() -> bool:
        return set((await states(daemon)).values()) == {RecipientState.DELIVERED}

    await until(all_delivered)
    return received


async def test_dsn_parameters_reach_an_upstream_that_advertises_dsn(
    make_config: ConfigFactory,
) -> None:
    async with FakeUpstream(dsn=True) as upstream:
        # from_policy "bare" puts PolicySession around the SMTP session: it passes them on too.
        config = make_config(generic(upstream.port, 'from_policy = "bare"'))
        async with running(config) as daemon:
            received = await _deliver(daemon, upstream)
    assert received.recipients == list(RCPTS)
    assert upstream.mail_options == [[f"SIZE={len(received.data)}", *MAIL_OPTIONS]]
    assert upstream.rcpt_options == [
        (BOB, BOB_OPTIONS),
        ("carol@example.net", []),
        ("dave@example.net", ["NOTIFY=NEVER"]),
        ("erin@example.net", ["ORCPT=rfc822;Erin+3DX@example.net"]),  # the same, minimal
        ("frank@example.net", RCPTS["frank@example.net"]),
        ("grete@example.net", RCPTS["grete@example.net"]),
    ]


async def test_nothing_extra_to_an_upstream_without_dsn_and_the_mail_is_delivered(
    make_config: ConfigFactory, upstream: FakeUpstream
) -> None:
    """aiosmtpd without DSN answers 555 to any of these parameters: had relayd sent one, the
    recipient would have been refused and the mail not delivered. Bob asked NOTIFY=SUCCESS,
    which this upstream cannot honour: relayd's own "relayed" report goes to the sender."""
    config = make_config(generic(upstream.port))
    async with running(config) as daemon:
        await asyncio.to_thread(_submit, port_of(daemon), message())
        received, report = await upstream.wait_for(2)
    assert received.recipients == list(RCPTS)
    assert upstream.mail_options[0] == [f"SIZE={len(received.data)}"]
    assert upstream.rcpt_options[: len(RCPTS)] == [(rcpt, []) for rcpt in RCPTS]
    assert (report.mail_from, report.recipients) == ("<>", ["app@example.org"])
    assert report.data.count(b"Action: relayed") == 1  # only Bob asked
    assert b"Original-Recipient: rfc822;bob+x@example.com" in report.data
