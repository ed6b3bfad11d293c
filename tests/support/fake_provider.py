"""A provider-like SMTP submission server on loopback: TLS, AUTH, programmable replies.

FakeUpstream (fake_upstream.py) programs MAIL/RCPT/DATA; this one programs what a
provider's submission port does before that: implicit TLS or STARTTLS (or neither), which
AUTH reply it gives (Gmail's `535 5.7.8`, Microsoft's `535 5.7.139`, ...), and it records
every login so tests can check what was (and was not) sent. Like Gmail, it offers AUTH only
on an encrypted connection. Messages sent after a successful AUTH are accepted and kept.
"""

from __future__ import annotations

import asyncio
import base64
import ssl
from dataclasses import dataclass
from typing import Any, Literal

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

Mode = Literal["starttls", "tls", "none"]


@dataclass(frozen=True)
class Login:
    mechanism: str
    username: str
    password: str


class _Handler:
    def __init__(self, provider: FakeProvider) -> None:
        self.provider = provider

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.provider.messages.append(envelope.original_content or b"")
        return "250 2.0.0 OK accepted"


class FakeProvider:
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
        self.mode = mode
        self.tls_context = tls_context
        self.hostname = hostname
        self.auth_reply: str | None = None
        self.echo_secret = False
        self.logins: list[Login] = []
        self.messages: list[bytes] = []
        self.port = 0
        self._server: asyncio.Server | None = None
        self._protocols: list[SMTP] = []

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

    def _factory(self) -> SMTP:
        kwargs: dict[str, Any] = {
            "hostname": self.hostname,
            "authenticator": self._authenticate,
            # Implicit TLS is encrypted from the first byte; aiosmtpd only knows STARTTLS.
            "auth_require_tls": self.mode != "tls",
        }
        if self.mode == "starttls" and self.tls_context is not None:
            kwargs["tls_context"] = self.tls_context
        protocol = SMTP(_Handler(self), **kwargs)
        self._protocols.append(protocol)
        return protocol

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        ssl_context = self.tls_context if self.mode == "tls" else None
        self._server = await loop.create_server(self._factory, "127.0.0.1", 0, ssl=ssl_context)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for protocol in self._protocols:
            if protocol.transport is not None:
                protocol.transport.abort()
        self._protocols.clear()

    async def __aenter__(self) -> FakeProvider:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
