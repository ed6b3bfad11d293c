"""PIPELINING (RFC 2920) on the delivering side: MAIL, every RCPT and DATA written at once
to an upstream that offers it, each reply paired with its command however the replies
arrive; one command at a time to an upstream that does not."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from relayd.clock import SystemClock
from relayd.config.model import UpstreamConfig
from relayd.delivery import transcripts
from relayd.delivery.client import PipeliningProtocol, UpstreamSMTP
from relayd.delivery.session import SmtpSession
from relayd.types import Outgoing, SmtpReply
from tests.support.raw_upstream import DROP, RawUpstream, Script

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


def pipelining(*answers: tuple[str, str]) -> Script:
    """A RawUpstream script that offers PIPELINING and gives a command the reply of the first
    answer whose prefix begins it (the usual reply for the rest)."""

    def reply(connection: int, line: str) -> str | None:
        if line.startswith("EHLO"):
            return EHLO_PIPELINING
        return next((answer for prefix, answer in answers if line.startswith(prefix)), None)

    return reply


def session_to(raw: RawUpstream) -> SmtpSession:
    return SmtpSession(
        UpstreamConfig(name="raw", host="127.0.0.1", port=raw.port, security="none"), "relay.test"
    )


async def test_mail_every_rcpt_and_data_go_in_one_write_to_a_pipelining_upstream() -> None:
    async with PacketUpstream(EHLO_PIPELINING) as upstream:
        smtp = UpstreamSMTP(hostname="127.0.0.1", port=upstream.port, timeout=5)
        async with smtp:
            replies = await smtp.envelope(("app@example.org", []), RCPTS, "ascii", data=True)
        assert replies.mail.code == 250 and [r.code for r in replies.rcpts] == [250, 250, 250]
        assert replies.data is not None and replies.data.code == 250  # this fake's answer
    together = [chunk for chunk in upstream.chunks if chunk.startswith(b"MAIL")]
    assert together == [
        b"MAIL FROM:<app@example.org>\r\nRCPT TO:<one@example.net>\r\n"
        b"RCPT TO:<two@example.net>\r\nRCPT TO:<three@example.net>\r\nDATA\r\n"
    ]


async def test_an_upstream_without_pipelining_gets_one_command_at_a_time() -> None:
    async with PacketUpstream("250 raw\r\n") as upstream:
        smtp = UpstreamSMTP(hostname="127.0.0.1", port=upstream.port, timeout=5)
        async with smtp:
            replies = await smtp.envelope(("app@example.org", []), RCPTS, "ascii", data=True)
        assert [reply.code for reply in [replies.mail, *replies.rcpts]] == [250, 250, 250, 250]
        assert replies.data is None  # DATA is data()'s, after the replies
    commands = [c for c in upstream.chunks if c.startswith((b"MAIL", b"RCPT", b"DATA"))]
    assert commands == [
        b"MAIL FROM:<app@example.org>\r\n",
        b"RCPT TO:<one@example.net>\r\n",
        b"RCPT TO:<two@example.net>\r\n",
        b"RCPT TO:<three@example.net>\r\n",
    ]


async def test_replies_in_separate_packets_each_reach_their_command(raw: RawUpstream) -> None:
    """The upstream answers each command on its own, late: no reply is dropped or taken for
    another command's, and the session stays in step for DATA and the next message."""
    raw.script = pipelining(("RCPT TO:<two@example.net>", "550 5.1.1 no such user\r\n"))
    raw.delay = lambda c, line: 0.05 if line.startswith("RCPT") else 0.0
    smtp = UpstreamSMTP(hostname="127.0.0.1", port=raw.port, timeout=5)
    async with smtp:
        for _ in range(2):
            replies = await smtp.envelope(("app@example.org", []), RCPTS, "ascii", data=True)
            assert [(r.code, r.message) for r in [replies.mail, *replies.rcpts]] == [
                (250, "ok"),
                (250, "ok"),
                (550, "5.1.1 no such user"),
                (250, "ok"),
            ]
            assert replies.data == (354, "go ahead")
            assert (await smtp.data(BODY, started=replies.data)).code == 250
    assert raw.bodies == [BODY, BODY]


async def test_a_refused_mail_and_a_hangup_give_every_recipient_the_mail_reply(
    raw: RawUpstream,
) -> None:
    """A 421 to MAIL, then the upstream closes: each recipient gets the 421 (it decides the
    retry and the upstream's throttle hold), not a lost connection."""
    busy = "421 4.7.0 Too many messages, try later"
    raw.script = pipelining(("MAIL", f"{busy}\r\n"), ("RCPT", DROP))
    session = session_to(raw)
    recipients = tuple(rcpt for rcpt, _ in RCPTS)
    result = await session.send(Outgoing("app@example.org", recipients, BODY, "Q1"))
    await session.close()
    assert {rcpt: (r.code, r.message) for rcpt, r in result.replies.items()} == {
        rcpt: (421, busy[4:]) for rcpt in recipients
    }
    assert not result.reached_data and raw.bodies == []


async def test_pipelined_commands_and_replies_are_transcribed(
    raw: RawUpstream, tmp_path: Path
) -> None:
    raw.script = pipelining()
    transcripts.configure(tmp_path, SystemClock())
    try:
        upstream = UpstreamConfig(name="raw", host="127.0.0.1", port=raw.port, security="none")
        smtp = transcripts.make_upstream_smtp(upstream, hostname="127.0.0.1", port=raw.port)
        async with smtp:
            replies = await smtp.envelope(("app@example.org", []), RCPTS[:1], "ascii", data=True)
            await smtp.data(BODY, started=replies.data)
    finally:
        transcripts.configure(None, SystemClock())
    lines = [line.split(" ", 2)[2] for line in (tmp_path / "raw.log").read_text().splitlines()]
    start = lines.index("> MAIL FROM:<app@example.org>")
    assert lines[start : start + 9] == [
        "> MAIL FROM:<app@example.org>",
        "> RCPT TO:<one@example.net>",
        "> DATA",
        "< 250 ok",
        "< 250 ok",
        "< 354 go ahead",
        f"> (message: {len(BODY)} bytes)",
        "< 250 ok",
        "> QUIT",
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


async def test_data_taken_for_no_recipient_ends_with_the_dot_alone(raw: RawUpstream) -> None:
    """RFC 2920 3.1: an upstream that answers 354 to a pipelined DATA although it refused
    every recipient gets the final dot alone (no message), then RSET; the session stays in
    step and the next message goes through it."""
    refused = "550 5.1.1 no such user"
    raw.script = pipelining(("RCPT TO:<nobody", f"{refused}\r\n"))
    session = session_to(raw)
    nobody = ("nobody1@example.net", "nobody2@example.net")
    first = await session.send(Outgoing("app@example.org", nobody, BODY, "Q1"))
    second = await session.send(Outgoing("app@example.org", ("one@example.net",), BODY, "Q2"))
    await session.close()
    assert {r: (x.code, x.message) for r, x in first.replies.items()} == {
        rcpt: (550, refused[4:]) for rcpt in nobody
    }
    assert not first.reached_data and second.replies["one@example.net"].code == 250
    lines = [line for c, line in raw.commands]
    assert lines[lines.index("DATA") : lines.index("DATA") + 3] == ["DATA", ".", "RSET"]
    assert raw.bodies == [BODY] and raw.connections == 1


async def test_a_421_to_a_pipelined_data_closes_the_connection(raw: RawUpstream) -> None:
    """421 means the upstream is closing the channel (RFC 5321 3.8): the session does not
    send the next message over it but opens a new connection."""
    busy = "421 4.3.2 Service shutting down"
    raw.script = lambda c, line: (
        EHLO_PIPELINING
        if line.startswith("EHLO")
        else f"{busy}\r\n"
        if line == "DATA" and c == 1
        else None
    )
    session = session_to(raw)
    first = await session.send(Outgoing("app@example.org", ("one@example.net",), BODY, "Q1"))
    second = await session.send(Outgoing("app@example.org", ("one@example.net",), BODY, "Q2"))
    await session.close()
    assert first.replies["one@example.net"] == SmtpReply(421, busy[4:])
    assert second.replies["one@example.net"].code == 250
    assert raw.connections == 2 and raw.bodies == [BODY]
