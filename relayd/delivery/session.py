"""One upstream session: connect, TLS, AUTH, send one message, report per-recipient replies.

No retry decisions here (policy/outcome.py makes them). The SMTP connection is kept open and
reused for consecutive messages; any failure closes it so the next send reconnects.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Mapping
from typing import Protocol

import aiosmtplib

from relayd.clock import Clock
from relayd.config.model import UpstreamConfig
from relayd.delivery import renewal
from relayd.delivery.capture import DirectorySession
from relayd.delivery.client import OutOfStep
from relayd.delivery.oauth import TokenSource, TokenSources
from relayd.delivery.transcripts import make_upstream_smtp, scrub_password
from relayd.dsn.params import rcpt_options
from relayd.errors import UpstreamAuthError, UpstreamUnavailable
from relayd.policy.from_policy import apply_from_policy, envelope_sender
from relayd.policy.providers import PRESETS
from relayd.types import NoticeHook, RcptDsn, SendResult, SmtpReply

# Replies relayd synthesises for the directory capture upstream.

NO_SMTPUTF8 = SmtpReply(553, "5.6.7 the upstream does not support SMTPUTF8 (non-ASCII address)")

# MAIL FROM parameters forwarded when the upstream advertises the matching extension.
_FORWARDED_OPTIONS = {"BODY": "8bitmime", "SMTPUTF8": "smtputf8", "RET": "dsn", "ENVID": "dsn"}


class Session(Protocol):
    async def send(
        self,
        mail_from: str,
        recipients: tuple[str, ...],
        body: bytes,
        *,
        name: str,
        mail_options: tuple[str, ...] = (),
        rcpt_dsn: Mapping[str, RcptDsn] | None = None,
    ) -> SendResult:
        """Deliver one message; raises UpstreamUnavailable when the session breaks. `rcpt_dsn`
        (recipients' NOTIFY/ORCPT) goes upstream only where it advertises DSN."""

    async def close(self) -> None:
        """Close the connection (QUIT when possible)."""


def open_session(
    upstream: UpstreamConfig, local_hostname: str, tokens: TokenSource | None, clock: Clock
) -> Session:
    """The session kind the upstream's provider calls for, with its from_policy.

    An xoauth2 upstream takes its access tokens from `tokens` (SessionOpener shares one
    source among an upstream's connections).
    """
    session: Session
    if upstream.provider == "directory":
        assert upstream.path is not None
        session = DirectorySession(upstream.path, upstream.name, clock)
    else:
        session = SmtpSession(upstream, local_hostname, tokens)
    return PolicySession(session, upstream) if PolicySession.applies(upstream) else session


class SessionOpener:
    """A session factory whose xoauth2 upstreams share one TokenSource each; `tokens.watch()`
    is the expiry watch, `notices` gets refused grants and expiring tokens."""

    def __init__(
        self, upstreams: list[UpstreamConfig], clock: Clock, notices: NoticeHook | None = None
    ) -> None:
        self.tokens = TokenSources(upstreams, clock, notices)
        self.clock = clock

    def __call__(self, upstream: UpstreamConfig, local_hostname: str) -> Session:
        return open_session(upstream, local_hostname, self.tokens.get(upstream), self.clock)


class PolicySession:
    """The upstream's from_policy (policy/from_policy.py) and envelope-sender rule of a session."""

    def __init__(self, inner: Session, upstream: UpstreamConfig) -> None:
        self.inner = inner
        self.policy = upstream.from_policy
        username = upstream.username or ""
        self.account = username if "@" in username else None
        preset = PRESETS[upstream.provider]
        self.use_account = preset.envelope_from_account or self.policy == "rewrite"

    @staticmethod
    def applies(upstream: UpstreamConfig) -> bool:
        preset = PRESETS[upstream.provider]
        return upstream.from_policy != "keep" or preset.envelope_from_account

    async def send(
        self,
        mail_from: str,
        recipients: tuple[str, ...],
        body: bytes,
        *,
        name: str,
        mail_options: tuple[str, ...] = (),
        rcpt_dsn: Mapping[str, RcptDsn] | None = None,
    ) -> SendResult:
        return await self.inner.send(
            envelope_sender(mail_from, self.account, self.use_account),
            recipients,
            apply_from_policy(body, self.policy, self.account),
            name=name,
            mail_options=mail_options,
            rcpt_dsn=rcpt_dsn,
        )

    async def close(self) -> None:
        await self.inner.close()


class SmtpSession:
    """An aiosmtplib connection to one upstream account, reused across messages."""

    def __init__(
        self, upstream: UpstreamConfig, local_hostname: str, tokens: TokenSource | None = None
    ) -> None:
        self.upstream = upstream
        self.local_hostname = local_hostname
        self.tokens = tokens
        self._smtp: aiosmtplib.SMTP | None = None
        self._in_transaction = False

    def _client(self) -> aiosmtplib.SMTP:
        up = self.upstream
        # tls_ca_file (a private CA) replaces the system's CA certificates for this upstream.
        context = ssl.create_default_context(cafile=up.tls_ca_file)
        if not up.tls_verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
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
            tls_context=context if up.security != "none" else None,
        )

    async def _connect(self) -> aiosmtplib.SMTP:
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

    async def send(
        self,
        mail_from: str,
        recipients: tuple[str, ...],
        body: bytes,
        *,
        name: str,
        mail_options: tuple[str, ...] = (),
        rcpt_dsn: Mapping[str, RcptDsn] | None = None,
    ) -> SendResult:
        reused = self._smtp is not None and self._smtp.is_connected
        self._in_transaction = True
        envelope = (mail_from, recipients, body, mail_options, rcpt_dsn or {})
        try:
            return await self._send(*envelope)
        except aiosmtplib.SMTPServerDisconnected as exc:
            await self.close()
            if not reused:
                raise UpstreamUnavailable(f"connection lost: {exc}") from exc
            # The server closed an idle reused connection before DATA (a drop during DATA
            # raises UpstreamUnavailable below): one fresh try, not a deferral.
            try:
                return await self._send(*envelope)
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

    async def _send(
        self,
        mail_from: str,
        recipients: tuple[str, ...],
        body: bytes,
        mail_options: tuple[str, ...],
        rcpt_dsn: Mapping[str, RcptDsn],
    ) -> SendResult:
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
        options = self._mail_options(smtp, mail_options, len(body))
        encoding = "utf-8" if "SMTPUTF8" in options else "ascii"
        if encoding == "ascii" and not all(a.isascii() for a in (mail_from, *recipients)):
            # RFC 6531 3.5: a non-ASCII address cannot be relayed to a server without
            # SMTPUTF8; that is permanent for this upstream.
            return SendResult({rcpt: NO_SMTPUTF8 for rcpt in recipients})
        try:
            await smtp.mail(mail_from, options=options, encoding=encoding)
        except aiosmtplib.SMTPSenderRefused as exc:
            await self._reset(smtp)
            reply = SmtpReply(exc.code, exc.message)
            return SendResult({rcpt: reply for rcpt in recipients})
        result = SendResult()
        dsn = rcpt_dsn if smtp.supports_extension("dsn") else {}
        accepted = await self._recipients(smtp, recipients, encoding, dsn, result)
        if not accepted:
            await self._reset(smtp)
            return result
        await renewal.before_data()  # LeaseLost: another node took the message meanwhile
        result.reached_data = True
        try:
            response = await smtp.data(body)
        except aiosmtplib.SMTPDataError as exc:
            response = aiosmtplib.SMTPResponse(exc.code, exc.message)
        except (aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPTimeoutError, OutOfStep) as exc:
            raise UpstreamUnavailable(_describe(exc), reached_data=True) from exc
        for rcpt in accepted:
            result.replies[rcpt] = SmtpReply(response.code, response.message)
        return result

    @staticmethod
    async def _recipients(
        smtp: aiosmtplib.SMTP,
        recipients: tuple[str, ...],
        encoding: str,
        dsn: Mapping[str, RcptDsn],
        result: SendResult,
    ) -> list[str]:
        """RCPT TO each recipient (with its NOTIFY/ORCPT from `dsn`); returns the accepted."""
        accepted: list[str] = []
        for rcpt in recipients:
            options = rcpt_options(dsn[rcpt]) if rcpt in dsn else None
            try:
                response = await smtp.rcpt(rcpt, options=options, encoding=encoding)
            except aiosmtplib.SMTPRecipientRefused as exc:
                response = aiosmtplib.SMTPResponse(exc.code, exc.message)
            result.replies[rcpt] = SmtpReply(response.code, response.message)
            if response.code in (250, 251):
                accepted.append(rcpt)
        return accepted

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
