"""A real SMTP upstream on loopback (aiosmtpd) that tests program reply by reply."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ssl
import time
import weakref
from dataclasses import dataclass, field
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session

from tests.support.loopback_smtp import LoopbackSMTPServer


@dataclass
class Received:
    mail_from: str
    recipients: list[str]
    data: bytes
    at: float


@dataclass
class Script:
    """What the upstream answers. Queues are consumed one reply per use, then the default."""

    mail_replies: collections.deque[str] = field(default_factory=collections.deque)
    rcpt_replies: dict[str, str] = field(default_factory=dict)  # per address, every time
    data_replies: collections.deque[str] = field(default_factory=collections.deque)
    drop_in_data: int = 0  # close the connection instead of answering DATA, this many times
    stall: float = 0.0  # seconds to wait before answering DATA
    rcpt_stall: float = 0.0  # seconds to wait before answering each RCPT
    # seconds to wait before answering the first MAIL on each connection: a new connection
    # that is slow to get going (TLS, AUTH, a busy server), so its message arrives late
    first_mail_stall: float = 0.0
    auth_reply: str | None = None  # reply to every AUTH attempt (None: accept)


_DSN_MAIL = frozenset({"RET", "ENVID"})
_DSN_RCPT = frozenset({"NOTIFY", "ORCPT"})


def _split_dsn(arg: str | None, keywords: frozenset[str]) -> tuple[str | None, tuple[str, ...]]:
    """A MAIL/RCPT argument without its DSN parameters, and those parameters verbatim."""
    if arg is None:
        return None, ()
    rest: list[str] = []
    dsn: list[str] = []
    for word in arg.split(" "):
        (dsn if word.partition("=")[0].upper() in keywords else rest).append(word)
    return " ".join(rest), tuple(dsn)


class _DsnSMTP(SMTP):
    """aiosmtpd's SMTP with RFC 3461 DSN, which aiosmtpd does not know (FakeUpstream(dsn=True)).

    aiosmtpd upper-cases MAIL/RCPT parameters and answers 555 to any it does not know, before
    a handler hook sees them; so RET/ENVID and NOTIFY/ORCPT are taken off the command here,
    verbatim (ENVID and ORCPT are case-sensitive xtext), for the handler to record. EHLO's
    `250-DSN` line comes from _DsnHandler.handle_EHLO.
    """

    dsn_params: tuple[str, ...] = ()  # the current MAIL or RCPT command's

    async def smtp_MAIL(self, arg: str | None) -> None:
        arg, self.dsn_params = _split_dsn(arg, _DSN_MAIL)
        await super().smtp_MAIL(arg)

    async def smtp_RCPT(self, arg: str | None) -> None:
        arg, self.dsn_params = _split_dsn(arg, _DSN_RCPT)
        await super().smtp_RCPT(arg)


def _dsn_params(server: SMTP) -> tuple[str, ...]:
    return server.dsn_params if isinstance(server, _DsnSMTP) else ()


class _Handler:
    extensions: tuple[str, ...] = ()  # advertised in EHLO besides aiosmtpd's own

    def __init__(self, upstream: FakeUpstream) -> None:
        self.upstream = upstream

    async def handle_EHLO(
        self, server: SMTP, session: Session, envelope: Envelope, hostname: str, lines: list[str]
    ) -> list[str]:
        """PIPELINING (as every provider offers it; aiosmtpd reads one command at a time,
        so it answers pipelined commands in order) and `extensions`, before the last line
        ("250 HELP"); with this hook aiosmtpd leaves recording the client's name to it."""
        session.host_name = hostname
        offered = [*(["PIPELINING"] if self.upstream.pipelining else []), *self.extensions]
        return [*lines[:-1], *(f"250-{keyword}" for keyword in offered), lines[-1]]

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        script = self.upstream.script
        if script.first_mail_stall and session not in self.upstream.mailed:
            self.upstream.mailed.add(session)
            await asyncio.sleep(script.first_mail_stall)
        if script.mail_replies:
            reply = script.mail_replies.popleft()
            if not reply.startswith("2"):
                return reply
        options = [*options, *_dsn_params(server)]
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        self.upstream.mail_options.append(options)
        return "250 2.1.0 OK"

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        self.upstream.rcpt_options.append((address, [*options, *_dsn_params(server)]))
        if self.upstream.script.rcpt_stall:
            await asyncio.sleep(self.upstream.script.rcpt_stall)
        reply = self.upstream.script.rcpt_replies.get(address)
        if reply is not None and not reply.startswith("2"):
            return reply
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        script = self.upstream.script
        self.upstream.data_seen += 1
        if script.drop_in_data > 0:
            script.drop_in_data -= 1
            assert isinstance(server.transport, asyncio.Transport)
            server.transport.abort()
            return "451 4.3.0 (connection dropped)"
        if script.stall:
            await asyncio.sleep(script.stall)
        if script.data_replies:
            reply = script.data_replies.popleft()
            if not reply.startswith("2"):
                return reply
        assert envelope.mail_from is not None and envelope.original_content is not None
        self.upstream.received.append(
            Received(
                envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content, time.time()
            )
        )
        self.upstream.arrived.set()
        return "250 2.0.0 OK accepted"


class _DsnHandler(_Handler):
    extensions = ("DSN",)


class FakeUpstream(LoopbackSMTPServer):
    """Start with `async with FakeUpstream() as up:`; `up.port`, `up.received`, `up.script`.

    `mail_options` has each accepted MAIL's parameters, `rcpt_options` each RCPT TO's address
    and parameters (refused ones too); aiosmtpd's own are upper-cased, DSN ones verbatim.
    `dsn=True` advertises RFC 3461 DSN and accepts RET, ENVID, NOTIFY and ORCPT; without it,
    as aiosmtpd, the upstream refuses them (555), as a server without DSN would.
    `pipelining=False` leaves PIPELINING (RFC 2920) out of EHLO.
    """

    def __init__(
        self,
        port: int = 0,
        tls_context: ssl.SSLContext | None = None,
        starttls: bool = False,
        *,
        dsn: bool = False,
        pipelining: bool = True,
    ) -> None:
        super().__init__(port)
        self.pipelining = pipelining
        self.script = Script()
        self.received: list[Received] = []
        self.mail_options: list[list[str]] = []
        self.rcpt_options: list[tuple[str, list[str]]] = []
        self.dsn = dsn
        self.data_seen = 0
        self.mailed: weakref.WeakSet[Session] = weakref.WeakSet()  # connections that sent MAIL
        self.connections = 0
        self.arrived = asyncio.Event()
        self.tls_context = tls_context
        self.starttls = starttls
        self.smtputf8 = True  # advertise SMTPUTF8

    def _protocol(self) -> SMTP:
        self.connections += 1
        kwargs: dict[str, Any] = {"hostname": "fake-upstream", "enable_SMTPUTF8": self.smtputf8}
        if self.starttls and self.tls_context is not None:
            kwargs["tls_context"] = self.tls_context
            kwargs["require_starttls"] = True
        if self.dsn:
            return _DsnSMTP(_DsnHandler(self), **kwargs)
        return SMTP(_Handler(self), **kwargs)

    def _implicit_tls(self) -> ssl.SSLContext | None:
        return self.tls_context if (self.tls_context and not self.starttls) else None

    async def wait_for(self, count: int, timeout: float = 10.0) -> list[Received]:
        """Wait until `count` messages arrived; fail the test loudly on timeout."""
        deadline = asyncio.get_running_loop().time() + timeout
        while len(self.received) < count:
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                raise AssertionError(f"upstream got {len(self.received)} of {count} messages")
            self.arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.arrived.wait(), min(remaining, 0.2))
        return self.received
