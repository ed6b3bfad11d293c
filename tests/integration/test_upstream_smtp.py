"""UpstreamSMTP's DATA against a real aiosmtpd upstream: the same bytes arrive as through
aiosmtplib's own DATA, for clean bodies (written as they are) and for the rest."""

from __future__ import annotations

import aiosmtplib
import pytest
from hypothesis import given
from hypothesis import strategies as st

from relayd.delivery.client import ReplyLost, UpstreamSMTP, is_wire_clean, to_wire
from tests.support.fake_upstream import FakeUpstream

CLEAN = b"Subject: hi\r\n\r\nline one\r\nline. with a dot inside\r\n"
BODIES = {
    "clean": (CLEAN, True),
    "clean, 100 KiB": (b"Subject: big\r\n\r\n" + (b"y" * 76 + b"\r\n") * 1400, True),
    "a line starting with a dot": (b"Subject: d\r\n\r\n.hidden\r\n..two\r\n", False),
    "starts with a dot": (b".Subject: d\r\n\r\nbody\r\n", False),
    "a lone LF": (b"Subject: lf\r\n\r\none\ntwo\r\n", False),
    "a lone CR": (b"Subject: cr\r\n\r\none\rtwo\r\n", False),
    "no final CRLF": (b"Subject: end\r\n\r\nno newline", False),
    "a dot after a lone LF": (b"Subject: lf\r\n\r\none\n.two\r\n", False),
}


@pytest.mark.parametrize("name", list(BODIES))
def test_is_wire_clean(name: str) -> None:
    body, clean = BODIES[name]
    assert is_wire_clean(body) is clean


@given(st.lists(st.sampled_from([b"a", b".", b"\r", b"\n", b"\r\n", b"\r\n."])).map(b"".join))
def test_a_clean_body_is_one_that_to_wire_leaves_as_it_is(body: bytes) -> None:
    assert is_wire_clean(body) is (to_wire(body) == body)


async def _send(smtp: aiosmtplib.SMTP, body: bytes) -> aiosmtplib.SMTPResponse:
    async with smtp:
        await smtp.mail("a@example.com")
        await smtp.rcpt("b@example.com")
        return await smtp.data(body)


@pytest.mark.parametrize("name", list(BODIES))
async def test_same_bytes_arrive_as_through_aiosmtplib(upstream: FakeUpstream, name: str) -> None:
    body, _ = BODIES[name]
    plain = await _send(aiosmtplib.SMTP(hostname="127.0.0.1", port=upstream.port), body)
    wire = await _send(UpstreamSMTP(hostname="127.0.0.1", port=upstream.port), body)
    assert (plain.code, wire.code) == (250, 250)
    first, second = await upstream.wait_for(2)
    assert second.data == first.data
    if BODIES[name][1]:
        assert second.data == body


async def test_a_refused_message_raises_data_error(upstream: FakeUpstream) -> None:
    upstream.script.data_replies.append("554 5.7.1 message refused")
    with pytest.raises(aiosmtplib.SMTPDataError) as refused:
        await _send(UpstreamSMTP(hostname="127.0.0.1", port=upstream.port), CLEAN)
    assert (refused.value.code, refused.value.message) == (554, "5.7.1 message refused")


async def _at_data(upstream: FakeUpstream, timeout: float) -> UpstreamSMTP:
    """An UpstreamSMTP connected, with MAIL and RCPT accepted: ready for DATA."""
    smtp = UpstreamSMTP(hostname="127.0.0.1", port=upstream.port, timeout=timeout)
    await smtp.connect()
    await smtp.mail("a@example.com")
    await smtp.rcpt("b@example.com")
    return smtp


async def test_a_stall_after_the_body_times_out_and_closes(upstream: FakeUpstream) -> None:
    """The body went: its lost reply is ReplyLost (the upstream may have the message)."""
    upstream.script.stall = 2.0
    smtp = await _at_data(upstream, timeout=0.3)
    with pytest.raises(ReplyLost, match="timed out"):
        await smtp.data(CLEAN)
    assert not smtp.is_connected


async def test_the_final_dot_reply_waits_final_timeout(upstream: FakeUpstream) -> None:
    """RFC 5321 4.5.3.2.6: the final dot's reply has its own, longer timeout."""
    upstream.script.stall = 1.0
    smtp = await _at_data(upstream, timeout=0.3)
    assert (await smtp.data(CLEAN, final_timeout=3.0)).code == 250


async def test_a_drop_after_the_body_is_a_lost_reply(upstream: FakeUpstream) -> None:
    upstream.script.drop_in_data = 1  # after the final dot came in
    smtp = await _at_data(upstream, timeout=5)
    with pytest.raises(ReplyLost, match="dropped"):
        await smtp.data(CLEAN)
    assert not smtp.is_connected
