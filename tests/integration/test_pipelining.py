"""PIPELINING (RFC 2920) on the delivering side: MAIL and every RCPT written at once to an
upstream that offers it, each reply paired with its command however the replies arrive;
one command at a time to an upstream that does not."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from relayd.clock import SystemClock
from relayd.config.model import UpstreamConfig
from relayd.delivery import transcripts
from relayd.delivery.client import PipeliningProtocol, UpstreamSMTP
from relayd.delivery.session import SmtpSession
from tests.support.raw_upstream import DROP, RawUpstream

EHLO_PIPELINING = "250-raw\r\n250 PIPELINING\r\n"
BODY = b"Subject: hi\r\n\r\nhello\r\n"
RCPTS: list[tuple[str, list[str]]] = [
    ("one@example.net", []),
    ("two@example.net", []),
    ("three@example.net", []),
]


class PacketUpstream:
    """Records what each read from the connection got: which commands came together."""

    def __init__(self, ehlo: str) -> None:
        self.ehlo = ehlo
        self.chunks: list[bytes] = []
        self.port = 0

    async def __aenter__(self) -> PacketUpstream:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._server.close()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 packets ESMTP\r\n")
        pending = b""
        while chunk := await reader.read(65536):
            self.chunks.append(chunk)
            pending += chunk
            *lines, pending = pending.split(b"\r\n")
            replies = [self.ehlo if line.startswith(b"EHLO") else "250 ok\r\n" for line in lines]
            writer.write("".join(replies).encode())  # the replies of one read, in one packet
            if b"QUIT" in lines:
                break
        writer.close()


@pytest.fixture
async def raw() -> AsyncIterator[RawUpstream]:
    upstream = RawUpstream()
    await upstream.start()
    yield upstream
    await upstream.stop()


async def test_mail_and_every_rcpt_go_in_one_write_to_a_pipelining_upstream() -> None:
    async with PacketUpstream(EHLO_PIPELINING) as upstream:
        smtp = UpstreamSMTP(hostname="127.0.0.1", port=upstream.port, timeout=5)
        async with smtp:
            replies = await smtp.envelope(("app@example.org", []), RCPTS, "ascii")
        assert [reply.code for reply in replies] == [250, 250, 250, 250]
    together = [chunk for chunk in upstream.chunks if chunk.startswith(b"MAIL")]
    assert together == [
        b"MAIL FROM:<app@example.org>\r\nRCPT TO:<one@example.net>\r\n"
        b"RCPT TO:<two@example.net>\r\nRCPT TO:<three@example.net>\r\n"
    ]


async def test_an_upstream_without_pipelining_gets_one_command_at_a_time() -> None:
    async with PacketUpstream("250 raw\r\n") as upstream:
        smtp = UpstreamSMTP(hostname="127.0.0.1", port=upstream.port, timeout=5)
        async with smtp:
            replies = await smtp.envelope(("app@example.org", []), RCPTS, "ascii")
        assert [reply.code for reply in replies] == [250, 250, 250, 250]
    commands = [c for c in upstream.chunks if c.startswith((b"MAIL", b"RCPT"))]
    assert commands == [
        b"MAIL FROM:<app@example.org>\r\n",
        b"RCPT TO:<one@example.net>\r\n",
        b"RCPT TO:<two@example.net>\r\n",
        b"RCPT TO:<three@example.net>\r\n",
    ]


async def test_replies_in_separate_packets_each_reach_their_command(raw: RawUpstream) -> None:
    """The upstream answers each command on its own, late: no reply is dropped or taken for
    another command's, and the session stays in step for DATA and the next message."""
    raw.script = lambda c, line: (
        EHLO_PIPELINING
        if line.startswith("EHLO")
        else "550 5.1.1 no such user\r\n"
        if line == "RCPT TO:<two@example.net>"
        else None
    )
    raw.delay = lambda c, line: 0.05 if line.startswith("RCPT") else 0.0
    smtp = UpstreamSMTP(hostname="127.0.0.1", port=raw.port, timeout=5)
    async with smtp:
        for _ in range(2):
            replies = await smtp.envelope(("app@example.org", []), RCPTS, "ascii")
            assert [(r.code, r.message) for r in replies] == [
                (250, "ok"),
                (250, "ok"),
                (550, "5.1.1 no such user"),
                (250, "ok"),
            ]
            assert (await smtp.data(BODY)).code == 250
    assert raw.bodies == [BODY, BODY]


async def test_a_refused_mail_and_a_hangup_give_every_recipient_the_mail_reply(
    raw: RawUpstream,
) -> None:
    """A 421 to MAIL, then the upstream closes: each recipient gets the 421 (it decides the
    retry and the upstream's throttle hold), not a lost connection."""
    busy = "421 4.7.0 Too many messages, try later"
    raw.script = lambda c, line: (
        EHLO_PIPELINING
        if line.startswith("EHLO")
        else f"{busy}\r\n"
        if line.startswith("MAIL")
        else DROP
        if line.startswith("RCPT")
        else None
    )
    upstream = UpstreamConfig(name="raw", host="127.0.0.1", port=raw.port, security="none")
    session = SmtpSession(upstream, "relay.test")
    recipients = tuple(rcpt for rcpt, _ in RCPTS)
    result = await session.send("app@example.org", recipients, BODY, name="Q1")
    await session.close()
    assert {rcpt: (r.code, r.message) for rcpt, r in result.replies.items()} == {
        rcpt: (421, busy[4:]) for rcpt in recipients
    }
    assert not result.reached_data and raw.bodies == []


async def test_pipelined_commands_and_replies_are_transcribed(
    raw: RawUpstream, tmp_path: Path
) -> None:
    raw.script = lambda c, line: EHLO_PIPELINING if line.startswith("EHLO") else None
    transcripts.configure(tmp_path, SystemClock())
    try:
        upstream = UpstreamConfig(name="raw", host="127.0.0.1", port=raw.port, security="none")
        smtp = transcripts.make_upstream_smtp(upstream, hostname="127.0.0.1", port=raw.port)
        async with smtp:
            await smtp.envelope(("app@example.org", []), RCPTS[:1], "ascii")
    finally:
        transcripts.configure(None, SystemClock())
    lines = [line.split(" ", 2)[2] for line in (tmp_path / "raw.log").read_text().splitlines()]
    start = lines.index("> MAIL FROM:<app@example.org>")
    assert lines[start : start + 4] == [
        "> MAIL FROM:<app@example.org>",
        "> RCPT TO:<one@example.net>",
        "< 250 ok",
        "< 250 ok",
    ]


@pytest.mark.parametrize(
    "reads", [[b"250 first\r\n", b"250 second\r\n"], [b"250 first\r\n250 second\r\n"]]
)
async def test_replies_that_arrive_before_the_first_is_taken_are_kept(
    raw: RawUpstream, reads: list[bytes]
) -> None:
    """Two reads (or one) before the waiting command resumes: aiosmtplib's protocol drops
    the second reply (its waiter is done) or leaves it unread in its buffer; with replies
    owed, both are kept and taken in order."""
    smtp = UpstreamSMTP(hostname="127.0.0.1", port=raw.port, timeout=1)
    async with smtp:
        protocol = smtp.protocol
        assert isinstance(protocol, PipeliningProtocol)
        protocol.owed = 2
        protocol._response_pending = True
        for data in reads:  # as the event loop would hand them over, in one go
            protocol.data_received(data)
        first = await protocol.read_response(timeout=1)
        second = await protocol.read_response(timeout=1)
        protocol.owed = 0
    assert (first.message, second.message) == ("first", "second")
