"""SMTP intake: the aiosmtpd protocol local apps talk to, its DATA reading, and the server
factory that keeps its sessions for shutdown.

Decisions and storage are intake/handler.py's, replies intake/replies.py's, AUTH
intake/auth.py's. Every bad command gets a reply code; no exception text ever reaches a
client.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from typing import Any

from relayd.dsn.params import DsnParamError, rcpt_params
from relayd.intake.auth import AuthSMTP
from relayd.intake.handler import IntakeEnvelope, IntakeHandler
from relayd.intake.replies import (
    R250_RCPT_OK,
    R354_DATA,
    R421_SHUTTING_DOWN,
    R452_TOO_MANY_RECIPIENTS,
    R500_LINE_TOO_LONG,
    R501_BAD_DSN_PARAMETER,
    R501_SYNTAX_DATA,
    R501_SYNTAX_MAIL,
    R501_SYNTAX_RCPT,
    R503_NEED_MAIL,
    R503_NEED_RCPT,
    R503_NESTED_MAIL,
    R552_TOO_BIG,
    R553_BAD_RECIPIENT,
    R553_BAD_SENDER,
    R554_ACCESS_DENIED,
)
from relayd.logs import get_logger
from relayd.policy.addresses import AddressError, check_address, split_path
from relayd.policy.longlines import longest_line
from relayd.types import Recipient

log = get_logger("intake")

_STUFFED = re.compile(rb"\r\n\.")  # a line that starts with a dot, stuffed (RFC 5321 4.5.2)

# Commands per session (aiosmtpd's command_call_limit: past it, "421 4.7.0 X sent too many
# times" and the connection closes). Commands that carry no mail are cheap to flood with;
# "*" bounds the rest (MAIL, RCPT, DATA, RSET) so high that an app reusing one connection
# for many thousand messages never meets it.
COMMAND_LIMITS = {
    "NOOP": 1000,
    "VRFY": 1000,
    "EXPN": 1000,
    "HELP": 1000,
    "EHLO": 100,
    "HELO": 100,
    "AUTH": 100,
    "STARTTLS": 10,
    "*": 1_000_000,
}


class DataTooBig(Exception):
    """The DATA section exceeded the size limit (the rest was read and discarded)."""


class DataLineTooLong(Exception):
    """A DATA line exceeded server.max_line_length."""


async def read_data(reader: asyncio.StreamReader, max_size: int, max_line: int) -> bytes:
    """Read a DATA section up to <CRLF>.<CRLF> and undo dot-stuffing.

    Lines longer than RFC 5321's 1000 bytes are accepted up to `max_line` (without CRLF):
    apps write them, and intake/handler.py makes the message wire-safe before it is queued.

    Only CRLF.CRLF ends the data (a bare LF or CR before the dot does not: that is the
    SMTP-smuggling defence). Scanning for ".\\r\\n" with the C-level readuntil and checking
    the two bytes before it avoids aiosmtpd's Python loop over every line.
    """
    data = bytearray()
    tail = b"\r\n"  # the data section starts at a line start
    too_big = False
    while True:
        try:
            piece = await reader.readuntil(b".\r\n")
        except asyncio.LimitOverrunError as exc:
            piece = await reader.read(exc.consumed)
            ended = False
        else:
            # It ends the data only if the two bytes before the dot are CRLF.
            ended = (tail + piece[-5:])[-5:-3] == b"\r\n"
        if not too_big:
            data += piece
            if len(data) > max_size + 3:
                too_big = True
                data.clear()
        tail = (tail + piece[-2:])[-2:]
        if ended:
            break
    if too_big:
        raise DataTooBig
    del data[-3:]  # the terminating ".\r\n"; its CRLF ends the last line
    if len(data) > max_line + 1 and longest_line(data) > max_line + 1:  # +1: a stuffed dot
        raise DataLineTooLong
    return _unstuffed(data)


def _unstuffed(data: bytearray) -> bytes:
    """RFC 5321 4.5.2: the first dot of every line that starts with one dropped. Such lines
    are rare, and re finds one in a third of the time bytearray.replace takes to look."""
    if data.startswith(b"."):
        del data[0]
    if _STUFFED.search(data):
        data = data.replace(b"\r\n.", b"\r\n")
    return bytes(data)


class IntakeSMTP(AuthSMTP):
    """aiosmtpd's protocol with relayd's own MAIL/RCPT/DATA and network check (AUTH:
    intake/auth.py)."""

    # The StreamReader's buffer limit, not a line limit: aiosmtpd pauses the socket each
    # time the buffer exceeds twice this, which made large DATA crawl. Line lengths are
    # enforced in read_data and by command_size_limit for commands.
    line_length_limit = 64 * 1024

    def __init__(self, handler: IntakeHandler, sessions: set[IntakeSMTP], **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self.handler = handler
        self.sessions = sessions
        self.in_data = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.sessions.add(self)
        super().connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.sessions.discard(self)
        super().connection_lost(exc)

    def alone(self) -> bool:
        """The only session this process serves: no other could share its message's commit,
        or has work for the loop while the store commits it on the loop's thread."""
        return len(self.sessions) == 1

    def _create_envelope(self) -> IntakeEnvelope:
        return IntakeEnvelope()

    def env(self) -> IntakeEnvelope:
        """The current transaction's envelope (aiosmtpd creates it before any command); a
        method, not a property: aiosmtpd's __init__ inspects every attribute."""
        assert isinstance(self.envelope, IntakeEnvelope)
        return self.envelope

    async def _handle_client(self) -> None:
        client = str(self.session.peer[0]) if self.session and self.session.peer else "?"
        if not self.handler.client_allowed(client):
            log.warning("client_refused", client=client)
            await self.push(R554_ACCESS_DENIED.format(client=client))
            if self.transport is not None:
                self.transport.close()
            return
        await super()._handle_client()

    async def smtp_MAIL(self, arg: str | None) -> None:
        if await self.check_helo_needed() or await self.check_auth_needed("MAIL"):
            return
        if self.env().mail_from is not None:
            await self.push(R503_NESTED_MAIL)
            return
        if arg is None or arg[:5].upper() != "FROM:":
            await self.push(R501_SYNTAX_MAIL)
            return
        try:
            address, params = split_path(arg[5:])
        except AddressError as exc:
            await self.push(R553_BAD_SENDER.format(reason=exc))
            return
        refusal = self.sender_refusal(address)
        await self.push(refusal or self.handler.accept_mail(self.env(), address, params))

    async def smtp_RCPT(self, arg: str | None) -> None:
        if await self.check_helo_needed() or await self.check_auth_needed("RCPT"):
            return
        if self.env().mail_from is None:
            await self.push(R503_NEED_MAIL)
            return
        if arg is None or arg[:3].upper() != "TO:":
            await self.push(R501_SYNTAX_RCPT)
            return
        try:
            address, params = split_path(arg[3:])
            recipient = Recipient(address, rcpt_params(params))
            check_address(address, utf8=self.env().smtp_utf8)
        except DsnParamError as exc:
            await self.push(R501_BAD_DSN_PARAMETER.format(reason=exc))
            return
        except AddressError as exc:
            await self.push(R553_BAD_RECIPIENT.format(reason=exc))
            return
        limit = self.handler.config.server.max_recipients
        if len(self.env().recipients) >= limit:
            await self.push(R452_TOO_MANY_RECIPIENTS.format(limit=limit))
            return
        self.env().recipients.append(recipient)
        await self.push(R250_RCPT_OK)

    async def smtp_DATA(self, arg: str | None) -> None:
        if await self.check_helo_needed() or await self.check_auth_needed("DATA"):
            return
        if not self.env().recipients:
            await self.push(R503_NEED_RCPT)
            return
        if arg:
            await self.push(R501_SYNTAX_DATA)
            return
        await self.push(R354_DATA)
        limit = self.handler.config.server.max_message_size
        max_line = self.handler.config.server.max_line_length
        self.in_data = True
        try:
            body = await read_data(self._reader, limit, max_line)
        except DataTooBig:
            status = R552_TOO_BIG.format(limit=limit)
        except DataLineTooLong:
            status = R500_LINE_TOO_LONG.format(limit=max_line)
        else:
            self.env().original_content = self.env().content = body
            assert self.session is not None
            status = await self.handler.handle_DATA(
                self, self.session, self.env(), alone=self.alone()
            )
        finally:
            self.in_data = False
        self.envelope = self._create_envelope()  # aiosmtpd's post-DATA state
        await self.push(status)


class IntakeServerFactory:
    """The protocol factory for loop.create_server (one IntakeSMTP per connection), which
    keeps the open sessions so that shutdown can close them."""

    def __init__(self, handler: IntakeHandler) -> None:
        self.handler = handler
        self.sessions: set[IntakeSMTP] = set()

    def __call__(self) -> IntakeSMTP:
        handler = self.handler
        server = handler.config.server  # read per connection: a reload swaps handler.config
        return IntakeSMTP(
            handler,
            self.sessions,
            hostname=server.hostname,
            ident="relayd",
            data_size_limit=server.max_message_size,
            accounts=handler.accounts,
            enable_SMTPUTF8=True,
            decode_data=False,
            timeout=server.idle_timeout,
            command_call_limit=COMMAND_LIMITS,
            loop=asyncio.get_running_loop(),  # else aiosmtpd looks it up the slow way
        )

    async def close_sessions(self, timeout: float) -> None:
        """At shutdown: let transactions in DATA finish (bounded), then say 421 and close."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while any(conn.in_data for conn in self.sessions) and loop.time() < deadline:  # noqa: ASYNC110 - a poll of a few sessions at shutdown only
            await asyncio.sleep(0.05)
        for conn in list(self.sessions):
            if conn.transport is not None:
                with contextlib.suppress(Exception):
                    conn._writer.write(R421_SHUTTING_DOWN.encode() + b"\r\n")
                conn.transport.close()
