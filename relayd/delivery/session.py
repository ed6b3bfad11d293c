"""One upstream session: connect, TLS, AUTH, send one message, report per-recipient replies.

Which session an upstream gets (SMTP or the directory capture, with its from_policy) is
delivery/opener.py's. No retry decisions here (policy/outcome.py makes them). The SMTP
connection is kept open and reused for consecutive messages; any failure closes it so the
next send reconnects. A recipient cap (452, or 552 after accepted recipients) sends the
rest in further transactions of the same attempt.
"""

from __future__ import annotations

import asyncio
import functools
import ssl
from typing import Protocol

import aiosmtplib

from relayd.config.model import UpstreamConfig
from relayd.delivery import renewal
from relayd.delivery.client import OutOfStep, ReplyLost, UpstreamSMTP
from relayd.delivery.oauth import TokenSource
from relayd.delivery.transcripts import make_upstream_smtp, scrub_password
from relayd.dsn.params import rcpt_options
from relayd.errors import LeaseLost, UpstreamAuthError, UpstreamUnavailable
from relayd.logs import get_logger
from relayd.policy.outcome import too_many_recipients
from relayd.types import Outgoing, SendResult, SmtpReply

log = get_logger("session")

# Replies relayd synthesises for the directory capture upstream.

NO_SMTPUTF8 = SmtpReply(553, "5.6.7 the upstream does not support SMTPUTF8 (non-ASCII address)")

# MAIL FROM parameters forwarded when the upstream advertises the matching extension.
_FORWARDED_OPTIONS = {"BODY": "8bitmime", "SMTPUTF8": "smtputf8", "RET": "dsn", "ENVID": "dsn"}


class Session(Protocol):
    async def send(self, message: Outgoing) -> SendResult:
        """Deliver one message; raises UpstreamUnavailable when the session breaks. Its
        `rcpt_dsn` (recipients' NOTIFY/ORCPT) goes upstream only where it advertises DSN;
        its `final_timeout` runs while the lease is renewed (delivery/renewal.py)."""

    async def close(self) -> None:
        """Close the connection (QUIT when possible)."""


class SmtpSession:
    """An aiosmtplib connection to one upstream account, reused across messages."""

    def __init__(
        self,
        upstream: UpstreamConfig,
        local_hostname: str,
        tokens: TokenSource | None = None,
        reply_lost: set[str] | None = None,
    ) -> None:
        self.upstream = upstream
        self.local_hostname = local_hostname
        self.tokens = tokens
        self._smtp: UpstreamSMTP | None = None
        self._in_transaction = False
        # Queue ids whose final dot got no reply (shared by the daemon's sessions, so the
        # retry is logged as a possible duplicate whichever connection makes it).
        self.reply_lost = reply_lost if reply_lost is not None else set()

    @functools.cached_property
    def _tls_context(self) -> ssl.SSLContext | None:
        """Made once per session, and only for TLS: loading the CA certificates costs
        about 17 ms of CPU, which a connection per message would pay every time."""
        up = self.upstream
        if up.security == "none":
            return None
        # tls_ca_file (a private CA) replaces the system's CA certificates for this upstream.
        context = ssl.create_default_context(cafile=up.tls_ca_file)
        if not up.tls_verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context

    def _client(self) -> UpstreamSMTP:
        up = self.upstream
        # An UpstreamSMTP, writing a transcript when [log] transcript_dir is set.
        return make_upstream_smtp(
            up,
            hostname=up.host,
            port=up.port,
            local_hostname=self.local_hostname,
            timeout=up.timeout,
            use_tls=up.security == "tls",
            # start_tls=True REQUIRES STARTTLS: aiosmtplib's default (None) would fall back
            # to plaintext, and then AUTH, when the server does not offer it.
            start_tls=up.security == "starttls",
            validate_certs=up.tls_verify,
            tls_context=self._tls_context,
        )

    async def _connect(self) -> UpstreamSMTP:
        smtp = self._client()
        up = self.upstream
        try:
            await asyncio.wait_for(smtp.connect(), up.connect_timeout)
            if up.auth == "password" and up.username and up.password is not None:
                await smtp.login(up.username, up.password.get_secret_value())
            elif up.auth == "xoauth2" and up.username and self.tokens is not None:
                await self._xoauth2(smtp, up.username, self.tokens)
        except BaseException:
            smtp.close()
            raise
        return smtp

    @staticmethod
    async def _xoauth2(smtp: aiosmtplib.SMTP, username: str, tokens: TokenSource) -> None:
        """AUTH XOAUTH2 (SASL `user=...^Aauth=Bearer ...^A^A`, aiosmtplib builds it). A cached
        token the server refuses (revoked, clock skew) is replaced by a fresh one, once."""
        if smtp.is_ehlo_or_helo_needed:  # after STARTTLS the extensions are asked again
            await smtp.ehlo()
        if "xoauth2" not in smtp.server_auth_methods:
            raise aiosmtplib.SMTPException("the server does not offer AUTH XOAUTH2")
        asked_at = tokens.clock.now()
        token = await tokens.token()
        try:
            await smtp.auth_xoauth2(username, token.value)
        except aiosmtplib.SMTPAuthenticationError:
            tokens.invalidate()
            if token.obtained_at >= asked_at:
                raise
            await smtp.auth_xoauth2(username, (await tokens.token()).value)

    async def send(self, message: Outgoing) -> SendResult:
        reused = self._smtp is not None and self._smtp.is_connected
        self._in_transaction = True
        timeout = message.final_timeout
        # the event loop's time by which the final dot's reply must come
        reply_by = asyncio.get_running_loop().time() + timeout if timeout is not None else None
        if message.name in self.reply_lost:
            self.reply_lost.discard(message.name)
            log.warning("possible_duplicate", queue_id=message.name, upstream=self.upstream.name)
        try:
            return await self._send(message, reply_by)
        except aiosmtplib.SMTPServerDisconnected as exc:
            await self.close()
            if not reused:
                raise UpstreamUnavailable(f"connection lost: {exc}") from exc
            # The server closed an idle reused connection before DATA (a drop during DATA
            # raises UpstreamUnavailable below): one fresh try, not a deferral.
            try:
                return await self._send(message, reply_by)
            except (TimeoutError, aiosmtplib.SMTPException, OSError, ssl.SSLError) as again:
                await self.close()
                raise UpstreamUnavailable(_describe(again)) from again
        except UpstreamUnavailable:
            await self.close()
            raise
        except (TimeoutError, aiosmtplib.SMTPException, OSError, ssl.SSLError) as exc:
            await self.close()
            raise UpstreamUnavailable(_describe(exc)) from exc
        finally:
            self._in_transaction = False

    async def _send(self, message: Outgoing, reply_by: float | None) -> SendResult:
        recipients = message.recipients
        if self._smtp is None or not self._smtp.is_connected:
            try:
                self._smtp = await self._connect()
            except aiosmtplib.SMTPResponseException as exc:
                # Greeting or AUTH refused: every recipient gets the server's answer, minus
                # the password if a careless server echoes it (it is logged and stored).
                await self.close()
                reply = SmtpReply(exc.code, scrub_password(self.upstream, exc.message))
                return SendResult({rcpt: reply for rcpt in recipients})
            except UpstreamAuthError as exc:
                # No credentials to log in with (an OAuth2 grant refused): as a refused AUTH,
                # RFC 4954's 535 5.7.8, so the dispatcher holds the upstream; mail stays queued.
                await self.close()
                reply = SmtpReply(535, f"5.7.8 {exc}")
                return SendResult({rcpt: reply for rcpt in recipients})
        smtp = self._smtp
        # EHLO before MAIL (not within it, as aiosmtplib would): its extensions decide the
        # MAIL and RCPT parameters. aiosmtplib's own greeting: EHLO, HELO if refused.
        await smtp._ehlo_or_helo_if_needed()
        result = SendResult()
        rest = await self._transaction(smtp, message, reply_by, recipients, result)
        while rest:  # the upstream took some and said "too many": the rest in another one
            try:
                rest = await self._transaction(smtp, message, reply_by, rest, result)
            except (TimeoutError, aiosmtplib.SMTPException, OSError, UpstreamUnavailable) as exc:
                # The earlier transactions' replies stand: only the rest is deferred.
                await self.close()
                result.replies.update({rcpt: SmtpReply(0, _describe(exc)) for rcpt in rest})
                break
        return result

    async def _transaction(
        self,
        smtp: UpstreamSMTP,
        message: Outgoing,
        reply_by: float | None,
        recipients: tuple[str, ...],
        result: SendResult,
    ) -> tuple[str, ...]:
        """One MAIL..DATA for `recipients`, their replies into `result`; returns those the
        upstream refused as too many for this transaction, when it accepted at least one
        (each further transaction then makes progress)."""
        mail_from, body = message.mail_from, message.body
        options = self._mail_options(smtp, message.mail_options, len(body))
        encoding = "utf-8" if "SMTPUTF8" in options else "ascii"
        if encoding == "ascii" and not all(a.isascii() for a in (mail_from, *recipients)):
            # RFC 6531 3.5: a non-ASCII address cannot be relayed to a server without
            # SMTPUTF8; that is permanent for this upstream.
            result.replies.update({rcpt: NO_SMTPUTF8 for rcpt in recipients})
            return ()
        result.upstream_dsn = smtp.supports_extension("dsn")
        dsn = message.rcpt_dsn if result.upstream_dsn else {}
        rcpts = [(rcpt, rcpt_options(dsn[rcpt]) if rcpt in dsn else []) for rcpt in recipients]
        replies = await smtp.envelope((mail_from, options), rcpts, encoding, data=True)
        if replies.mail.code != 250:
            await self._abandon(smtp, replies.data)
            mail = SmtpReply(replies.mail.code, replies.mail.message)
            result.replies.update({rcpt: mail for rcpt in recipients})
            return ()
        accepted, rest = self._recipients(recipients, replies.rcpts, result)
        if not accepted:
            await self._abandon(smtp, replies.data)
            return ()
        try:  # before the body: pipelined, DATA itself went with the envelope
            await renewal.before_data()  # LeaseLost: another node took the message meanwhile
        except LeaseLost:
            if replies.data is not None:  # in DATA: only a dropped connection sends nothing
                smtp.close()
            raise
        result.reached_data = True
        try:
            response = await smtp.data(
                body, final_timeout=_time_left(reply_by), started=replies.data
            )
        except aiosmtplib.SMTPDataError as exc:
            response = aiosmtplib.SMTPResponse(exc.code, exc.message)
        except ReplyLost as exc:
            # The upstream may have the message: its retry may deliver it twice.
            self.reply_lost.add(message.name)
            reason = f"{exc}: the upstream may have taken the message; a retry may duplicate it"
            log.warning(
                "reply_lost",
                queue_id=message.name,
                upstream=self.upstream.name,
                possible_duplicate=True,
            )
            raise UpstreamUnavailable(reason, reached_data=True) from exc
        except (aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPTimeoutError, OutOfStep) as exc:
            raise UpstreamUnavailable(_describe(exc), reached_data=True) from exc
        for rcpt in accepted:
            result.replies[rcpt] = SmtpReply(response.code, response.message)
        return tuple(rest)

    @staticmethod
    def _recipients(
        recipients: tuple[str, ...],
        responses: list[aiosmtplib.SMTPResponse],
        result: SendResult,
    ) -> tuple[list[str], list[str]]:
        """Each recipient's RCPT reply into `result`; returns the accepted, and those refused
        as too many for the transaction (policy/outcome.py)."""
        accepted: list[str] = []
        too_many: list[str] = []
        for rcpt, response in zip(recipients, responses, strict=True):
            reply = SmtpReply(response.code, response.message)
            if response.code in (250, 251):
                accepted.append(rcpt)
            elif (capped := too_many_recipients(reply, len(accepted))) is not None:
                reply = capped
                too_many.append(rcpt)
            result.replies[rcpt] = reply
        return accepted, too_many if accepted else []

    @staticmethod
    def _mail_options(
        smtp: aiosmtplib.SMTP, client_options: tuple[str, ...], size: int
    ) -> list[str]:
        options = [f"SIZE={size}"] if smtp.supports_extension("size") else []
        for option in client_options:
            keyword = option.split("=", 1)[0].upper()
            extension = _FORWARDED_OPTIONS.get(keyword)
            if extension and smtp.supports_extension(extension):
                options.append(option)
        return options

    async def _abandon(self, smtp: UpstreamSMTP, data: aiosmtplib.SMTPResponse | None) -> None:
        """End a transaction that has no recipient: the final dot alone if the upstream took
        a pipelined DATA anyway (354), then RSET."""
        if data is not None and data.code == aiosmtplib.SMTPStatus.start_input:
            try:
                await smtp.end_empty_data()
            except aiosmtplib.SMTPException:
                await self.close()
                return
        await self._reset(smtp)

    async def _reset(self, smtp: aiosmtplib.SMTP) -> None:
        try:
            await smtp.rset()
        except aiosmtplib.SMTPException:
            await self.close()

    async def close(self) -> None:
        """QUIT politely when idle; a send cut short (shutdown) just drops the connection."""
        smtp, self._smtp = self._smtp, None
        if smtp is None:
            return
        if smtp.is_connected and not self._in_transaction:
            try:
                await asyncio.wait_for(smtp.quit(), 5)
            except (TimeoutError, aiosmtplib.SMTPException, OSError):
                smtp.close()
        else:
            smtp.close()


def _time_left(deadline: float | None) -> float | None:
    """Seconds until `deadline` (the event loop's time), at least a moment; None for none."""
    if deadline is None:
        return None
    return max(deadline - asyncio.get_running_loop().time(), 0.1)


def _describe(exc: BaseException) -> str:
    """A short reason for logs and `queue show`; never contains credentials."""
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        return f"{exc.code} {exc.message}"
    if isinstance(exc, asyncio.TimeoutError | aiosmtplib.SMTPTimeoutError):
        return "timed out waiting for the upstream"
    causes = [exc, exc.__cause__, exc.__context__]
    if any(isinstance(c, ConnectionRefusedError) for c in causes) or "Errno 111" in str(exc):
        return "connection refused (is the upstream host and port right, and is it up?)"
    if isinstance(exc, ssl.SSLError | ssl.CertificateError):
        return f"TLS failed: {exc}"
    return str(exc) or type(exc).__name__
