"""A provider-like SMTP submission server on loopback: TLS, AUTH, programmable replies.

FakeUpstream (fake_upstream.py) programs MAIL/RCPT/DATA; this one programs what a
provider's submission port does before that: implicit TLS or STARTTLS (or neither), which
AUTH reply it gives (Gmail's `535 5.7.8`, Microsoft's `535 5.7.139`, ...), and it records
every login so tests can check what was (and was not) sent. Like Gmail, it offers AUTH only
on an encrypted connection. Messages sent after a successful AUTH are accepted and kept.

With `xoauth2_tokens` set it also offers AUTH XOAUTH2 (Google's and Microsoft's SASL
mechanism): it decodes the initial response, checks it is exactly
`user=USER^Aauth=Bearer TOKEN^A^A`, records it as a Login("XOAUTH2", user, token) and the
raw string in `sasl`, and accepts the tokens in the set. A refusal is Google's: a 334
challenge carrying a base64 JSON error, then (after the client's empty line) `535 5.7.8`.
"""

from __future__ import annotations

import base64
import json
import re
import ssl
from dataclasses import dataclass
from typing import Any, Literal

from aiosmtpd.smtp import MISSING, SMTP, AuthResult, Envelope, LoginPassword, Session

from tests.support.loopback_smtp import LoopbackSMTPServer

Mode = Literal["starttls", "tls", "none"]


@dataclass(frozen=True)
class Login:
    mechanism: str
    username: str
    password: str


class _Handler:
    def __init__(self, provider: FakeProvider) -> None:
        self.provider = provider

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if self.provider.mail_reply is not None:
            return self.provider.mail_reply
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 2.1.0 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.provider.messages.append(envelope.original_content or b"")
        self.provider.envelopes.append((envelope.mail_from or "", list(envelope.rcpt_tos)))
        return "250 2.0.0 OK accepted"


_SASL = re.compile(rb"^user=([^\x01]+)\x01auth=Bearer ([^\x01]+)\x01\x01$")


class _OAuthHandler(_Handler):
    async def auth_XOAUTH2(self, server: SMTP, args: list[str]) -> AuthResult:
        raw = base64.b64decode(args[1]) if len(args) > 1 else b""
        self.provider.sasl.append(raw)
        match = _SASL.match(raw)
        if match is None:
            return AuthResult(success=False, handled=False, message="501 5.5.2 bad XOAUTH2")
        user, token = match.group(1).decode(), match.group(2).decode()
        self.provider.logins.append(Login("XOAUTH2", user, token))
        if token in (self.provider.xoauth2_tokens or ()):
            return AuthResult(success=True, auth_data=user)
        error = {"status": "401", "schemes": "bearer", "scope": "https://mail.google.com/"}
        answer = await server.challenge_auth(json.dumps(error))
        if answer is MISSING:
            return AuthResult(success=False, handled=True)
        return AuthResult(
            success=False,
            handled=False,
            message="535 5.7.8 Username and Password not accepted. (XOAUTH2 token refused)",
        )


class FakeProvider(LoopbackSMTPServer):
    """`async with FakeProvider(mode, context) as fake:`; `fake.port`, `fake.logins`.

    mode "starttls": plain connection offering STARTTLS with `tls_context` (or not offering
    it when `tls_context` is None); "tls": implicit TLS with `tls_context`; "none": plain.
    `auth_reply`: None accepts every login; otherwise every AUTH gets this reply.
    `echo_secret`: append what the client sent (raw and base64) to the AUTH reply, as a
    careless server might; relayd must not print it.
    """

    def __init__(
        self,
        mode: Mode = "starttls",
        tls_context: ssl.SSLContext | None = None,
        *,
        hostname: str = "smtp.fake-provider.test",
    ) -> None:
        super().__init__()
        self.mode = mode
        self.tls_context = tls_context
        self.hostname = hostname
        self.auth_reply: str | None = None
        self.echo_secret = False
        self.logins: list[Login] = []
        self.messages: list[bytes] = []
        self.envelopes: list[tuple[str, list[str]]] = []  # (MAIL FROM, RCPT TOs) per message
        self.mail_reply: str | None = None  # the answer to every MAIL FROM (None: 250)
        self.xoauth2_tokens: set[str] | None = None  # offer XOAUTH2, accepting these tokens
        self.sasl: list[bytes] = []  # every decoded XOAUTH2 initial response

    def _authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        assert isinstance(data, LoginPassword)
        login = Login(mechanism, data.login.decode(), data.password.decode())
        self.logins.append(login)
        if self.auth_reply is None:
            return AuthResult(success=True, auth_data=data)
        reply = self.auth_reply
        if self.echo_secret:
            encoded = base64.b64encode(data.password).decode()
            reply += f" (you sent {login.password} {encoded})"
        return AuthResult(success=False, handled=False, message=reply)

    def _protocol(self) -> SMTP:
        kwargs: dict[str, Any] = {
            "hostname": self.hostname,
            "authenticator": self._authenticate,
            # Implicit TLS is encrypted from the first byte; aiosmtpd only knows STARTTLS.
            "auth_require_tls": self.mode != "tls",
        }
        if self.mode == "starttls" and self.tls_context is not None:
            kwargs["tls_context"] = self.tls_context
        handler = _OAuthHandler(self) if self.xoauth2_tokens is not None else _Handler(self)
        return SMTP(handler, **kwargs)

    def _implicit_tls(self) -> ssl.SSLContext | None:
        return self.tls_context if self.mode == "tls" else None
