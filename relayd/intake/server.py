"""SMTP intake: the aiosmtpd server local apps talk to.

Answers 250 only after the store committed the message (group commit inside the store).
Every bad command gets a reply code; no exception text ever reaches a client.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
from collections.abc import Callable
from typing import Any

from aiosmtpd.smtp import Envelope, Session

from relayd.clock import Clock
from relayd.config.model import Config
from relayd.dsn.params import DsnParamError, mail_param, rcpt_params
from relayd.errors import StoreError
from relayd.intake.auth import AuthSMTP, LocalAuth, prefixed_names
from relayd.logs import get_logger
from relayd.policy.addresses import AddressError, check_address, split_path
from relayd.policy.headers import prepare, received_header
from relayd.policy.routing import Routes
from relayd.store.base import MessageIntake
from relayd.types import NewMessage, Recipient, new_queue_id

# Every reply relayd itself sends, with its enhanced status code (RFC 3463).
R250_QUEUED = "250 2.0.0 Ok: queued as {queue_id}"
R250_OK = "250 2.1.0 Ok"
R250_RCPT_OK = "250 2.1.5 Ok"
R354_DATA = "354 End data with <CR><LF>.<CR><LF>"
R421_SHUTTING_DOWN = "421 4.3.2 Service shutting down, please try again later"
R451_STORE_UNAVAILABLE = "451 4.3.0 Temporary local problem, please try again later"
R452_TOO_MANY_RECIPIENTS = "452 4.5.3 Too many recipients (at most {limit} per message)"
R500_LINE_TOO_LONG = "500 5.5.2 Line too long (RFC 5321 4.5.3.1.6 allows 1000 bytes)"
R501_SYNTAX_MAIL = "501 5.5.4 Syntax: MAIL FROM:<address> [parameters]"
R501_SYNTAX_RCPT = "501 5.5.4 Syntax: RCPT TO:<address> [parameters]"
R501_BAD_RECIPIENT = "501 5.1.3 Bad recipient address syntax: {reason}"
R503_NEED_MAIL = "503 5.5.1 Error: need MAIL command"
R503_NESTED_MAIL = "503 5.5.1 Error: nested MAIL command"
R503_NEED_RCPT = "503 5.5.1 Error: need RCPT command"
R552_TOO_BIG = "552 5.3.4 Message too big for this relay (at most {limit} bytes)"
R553_BAD_SENDER = "553 5.1.3 Bad sender address syntax: {reason}"
R554_ACCESS_DENIED = "554 5.7.1 Access denied: {client} is not in server.allowed_networks"
R555_UNKNOWN_PARAMETER = "555 5.5.4 Unsupported parameter {param}"
R501_BAD_DSN_PARAMETER = "501 5.5.4 Bad DSN parameter: {reason}"

MAX_LINE = 1000  # RFC 5321 4.5.3.1.6, including CRLF; +1 for a stuffed dot
_KNOWN_MAIL_PARAMS = {"SIZE", "BODY", "SMTPUTF8", "RET", "ENVID"}

log = get_logger("intake")


class DataTooBig(Exception):
    """The DATA section exceeded the size limit (the rest was read and discarded)."""


class DataLineTooLong(Exception):
    """A DATA line exceeded RFC 5321's 1000 bytes."""


async def read_data(reader: asyncio.StreamReader, max_size: int) -> bytes:
    """Read a DATA section up to <CRLF>.<CRLF> and undo dot-stuffing.

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
    if len(data) >= MAX_LINE and max(map(len, data.split(b"\r\n"))) > MAX_LINE - 1:
        raise DataLineTooLong
    # RFC 5321 4.5.2: drop the first dot of every line that starts with one.
    if data.startswith(b"."):
        del data[0]
    return bytes(data.replace(b"\r\n.", b"\r\n"))


class RelaydEnvelope(Envelope):
    """aiosmtpd's envelope with typed recipients, NOTIFY/ORCPT included (rcpt_tos stays empty)."""

    def __init__(self) -> None:
        super().__init__()
        self.recipients: list[Recipient] = []


class RelaydSMTP(AuthSMTP):
    """aiosmtpd's protocol with relayd's own MAIL/RCPT/DATA and network check (AUTH:
    intake/auth.py)."""

    # The StreamReader's buffer limit, not a line limit: aiosmtpd pauses the socket each
    # time the buffer exceeds twice this, which made large DATA crawl. Line lengths are
    # enforced in read_data and by command_size_limit for commands.
    line_length_limit = 64 * 1024

    def __init__(self, handler: IntakeHandler, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self.relayd = handler
        self.in_data = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.relayd.connections.add(self)
        super().connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.relayd.connections.discard(self)
        super().connection_lost(exc)

    def _create_envelope(self) -> RelaydEnvelope:
        return RelaydEnvelope()

    def env(self) -> RelaydEnvelope:
        """The current transaction's envelope (aiosmtpd creates it before any command); a
        method, not a property: aiosmtpd's __init__ inspects every attribute."""
        assert isinstance(self.envelope, RelaydEnvelope)
        return self.envelope

    async def _handle_client(self) -> None:
        client = str(self.session.peer[0]) if self.session and self.session.peer else "?"
        if not self.relayd.client_allowed(client):
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
        await self.push(refusal or self.relayd.accept_mail(self.env(), address, params))

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
            await self.push(R501_BAD_RECIPIENT.format(reason=exc))
            return
        limit = self.relayd.config.server.max_recipients
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
            await self.push("501 5.5.4 Syntax: DATA")
            return
        await self.push(R354_DATA)
        limit = self.relayd.config.server.max_message_size
        self.in_data = True
        try:
            body = await read_data(self._reader, limit)
        except DataTooBig:
            status = R552_TOO_BIG.format(limit=limit)
        except DataLineTooLong:
            status = R500_LINE_TOO_LONG
        else:
            self.env().original_content = self.env().content = body
            assert self.session is not None
            status = await self.relayd.handle_DATA(self, self.session, self.env())
        finally:
            self.in_data = False
        self.envelope = self._create_envelope()  # aiosmtpd's post-DATA state
        await self.push(status)


class IntakeHandler:
    """Policy and storage behind the SMTP protocol: networks, addresses, route, enqueue."""

    def __init__(self, config: Config, store: MessageIntake, clock: Clock) -> None:
        self.config = config
        self.store = store
        self.clock = clock
        self.connections: set[RelaydSMTP] = set()
        self.local_auth = LocalAuth(config.server, clock)

    def __dir__(self) -> list[str]:  # the hooks and mechanisms only: see AuthSMTP.__dir__
        return prefixed_names(type(self), ("handle_", "auth_"))

    def reconfigure(self, config: Config) -> None:
        """A reload (SIGHUP): new connections and transactions use `config` and its users."""
        self.config = config
        self.local_auth = self.local_auth.reconfigured(config.server)

    async def close_sessions(self, timeout: float) -> None:
        """At shutdown: let transactions in DATA finish (bounded), then say 421 and close."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while any(conn.in_data for conn in self.connections) and loop.time() < deadline:  # noqa: ASYNC110 - a poll of a few sessions at shutdown only
            await asyncio.sleep(0.05)
        for conn in list(self.connections):
            if conn.transport is not None:
                with contextlib.suppress(Exception):
                    conn._writer.write(R421_SHUTTING_DOWN.encode() + b"\r\n")
                conn.transport.close()

    def client_allowed(self, client: str) -> bool:
        try:
            ip = ipaddress.ip_address(client)
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip in net for net in self.config.server.allowed_networks)

    def accept_mail(self, envelope: Envelope, address: str, params: list[str]) -> str:
        """Validate MAIL FROM and its parameters; returns the reply."""
        options: list[str] = []
        utf8 = False
        for param in params:
            keyword, _, value = param.partition("=")
            keyword = keyword.upper()
            if keyword not in _KNOWN_MAIL_PARAMS:
                return R555_UNKNOWN_PARAMETER.format(param=keyword)
            if keyword == "SIZE" and value.isdigit():
                if int(value) > self.config.server.max_message_size:
                    return R552_TOO_BIG.format(limit=self.config.server.max_message_size)
                continue
            if keyword == "SMTPUTF8":
                utf8 = True
            if keyword in ("RET", "ENVID"):
                try:
                    options.append(mail_param(keyword, value))
                except DsnParamError as exc:
                    return R501_BAD_DSN_PARAMETER.format(reason=exc)
                continue
            options.append(param.upper() if keyword == "BODY" else keyword)
        if address:  # "<>" is the null sender, allowed
            try:
                check_address(address, utf8=utf8)
            except AddressError as exc:
                return R553_BAD_SENDER.format(reason=exc)
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        envelope.smtp_utf8 = utf8
        return R250_OK

    async def handle_DATA(
        self, server: RelaydSMTP, session: Session, envelope: RelaydEnvelope
    ) -> str:
        now = self.clock.now()
        client = str(session.peer[0]) if session.peer else "?"
        mail_from = envelope.mail_from or ""
        content = envelope.original_content or b""
        queue_id = new_queue_id(now)
        protocol = _protocol_name(session, server)
        received = received_header(
            helo=session.host_name or "unknown",
            client_ip=client,
            hostname=self.config.server.hostname,
            protocol=protocol,
            queue_id=queue_id,
            recipients=tuple(r.address for r in envelope.recipients),
            at=now,
        )
        body, message_id = prepare(
            content,
            received=received,
            queue_id=queue_id,
            hostname=self.config.server.hostname,
            at=now,
            relayd_id=True,
        )
        auth_user = server.local_user()
        upstream = Routes.from_config(self.config).pick(mail_from, auth_user)
        log.info(
            "received",
            queue_id=queue_id,
            sender=mail_from,
            recipients=len(envelope.recipients),
            size=len(content),
            client=client,
            user=auth_user,
        )
        message = NewMessage(
            mail_from=mail_from,
            recipients=tuple(envelope.recipients),
            body=body,
            upstream=upstream,
            message_id=message_id,
            received_at=now,
            client=client,
            mail_options=tuple(envelope.mail_options),
            auth_user=auth_user,
            queue_id=queue_id,
        )
        try:
            await self.store.enqueue(message)
        except StoreError as exc:
            log.error("store_unavailable", queue_id=queue_id, error=str(exc))
            return R451_STORE_UNAVAILABLE
        log.info(
            "queued",
            queue_id=queue_id,
            message_id=message_id,
            upstream=upstream,
            sender=mail_from,
            recipients=len(envelope.recipients),
            size=len(body),
            client=client,
        )
        return R250_QUEUED.format(queue_id=queue_id)

    async def handle_EHLO(
        self, server: RelaydSMTP, session: Session, envelope: Envelope, name: str, lines: list[str]
    ) -> list[str]:
        session.host_name = name  # aiosmtpd leaves this to an EHLO hook
        lines = self.local_auth.ehlo_lines(lines)
        return [*lines[:-1], "250-DSN", lines[-1]] if lines else lines  # RFC 3461 4

    async def handle_exception(self, error: Exception) -> str:
        """aiosmtpd's default would send `500 Error: (ExcType) text` to the client."""
        log.error("intake_error", error=repr(error))
        return R451_STORE_UNAVAILABLE


def _protocol_name(session: Session, server: RelaydSMTP) -> str:
    """RFC 3848 protocol names for the Received line."""
    if not session.extended_smtp:
        return "SMTP"
    name = "ESMTP"
    if server._tls_protocol is not None:
        name += "S"
    if session.authenticated:
        name += "A"
    return name


def make_server_factory(handler: IntakeHandler) -> Callable[[], RelaydSMTP]:
    """The protocol factory for loop.create_server (one RelaydSMTP per connection)."""

    def factory() -> RelaydSMTP:
        server = handler.config.server  # read per connection: a reload swaps handler.config
        return RelaydSMTP(
            handler,
            hostname=server.hostname,
            ident="relayd",
            data_size_limit=server.max_message_size,
            local_auth=handler.local_auth,
            enable_SMTPUTF8=True,
            decode_data=False,
            timeout=server.idle_timeout,
        )

    return factory
