"""SMTP AUTH for local apps: the protocol layer intake/server.py's IntakeSMTP builds on.

The pure policy (hashes, the failure limiter, allowed senders) is policy/localauth.py.
`AuthAccounts` applies it to the [[server.users]] accounts and answers in SMTP replies;
`AuthSMTP` extends aiosmtpd's SMTP with it:

- AUTH PLAIN / LOGIN send the password in the clear (RFC 4954 section 14), so they are
  offered and accepted only over TLS (STARTTLS with server.tls_cert / tls_key) or from a
  loopback address, where nobody else can listen. Elsewhere AUTH gets aiosmtpd's
  `538 5.7.11 Encryption required`. Without [[server.users]] no AUTH is offered at all.
- `require_auth = true` makes aiosmtpd answer MAIL/RCPT/DATA before AUTH with
  `530 5.7.0 Authentication required`.
- scrypt runs in a worker thread so a login never stalls other sessions; a login that
  succeeded is remembered (as an HMAC under a per-process key) so an app that logs in on
  every connection pays for scrypt once.
- Failed logins are limited per client address (localauth.FailureLimiter): the failure
  answer comes after FAILURE_DELAY, and a client over the limit gets `454 4.7.0` without
  its password being checked, until its failures age out.
- A user with `allowed_senders` may only use those envelope senders (`553 5.7.1`).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import logging
import secrets
import ssl
from typing import Any

from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword, syntax

from relayd.clock import Clock
from relayd.config.model import ServerConfig, UserConfig
from relayd.intake.replies import R454_AUTH_LOCKED, R535_AUTH_FAILED, R553_SENDER_NOT_ALLOWED
from relayd.logs import get_logger
from relayd.policy.localauth import (
    DECOY,
    FailureLimiter,
    ScryptHash,
    parse_hash,
    sender_allowed,
    verify_password,
)
from relayd.units import format_duration

FAILURE_DELAY = 1.0  # seconds before a failed login is answered (slows guessing)

log = get_logger("intake")


def is_loopback(peer: Any) -> bool:
    """Whether a socket peer (host, port, ...) is a loopback address (IPv4-mapped too)."""
    try:
        ip = ipaddress.ip_address(peer[0])
    except (TypeError, ValueError, IndexError):
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def server_tls_context(server: ServerConfig) -> ssl.SSLContext | None:
    """The STARTTLS context for local clients, or None without tls_cert/tls_key.

    Raises OSError (ssl.SSLError among them) when the files cannot be loaded: the daemon
    does not start with a certificate it cannot use.
    """
    if server.tls_cert is None or server.tls_key is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(server.tls_cert, server.tls_key)
    return context


class _QuietLoginData(logging.Filter):
    """aiosmtpd logs a deprecation warning about its own Session.login_data on every login."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "login_data is deprecated" not in str(record.msg)


def _quiet_aiosmtpd() -> None:
    logger = logging.getLogger("mail.log")
    if not any(isinstance(item, _QuietLoginData) for item in logger.filters):
        logger.addFilter(_QuietLoginData())


class AuthAccounts:
    """The [[server.users]] accounts, their failed-login limits and their allowed senders:
    policy/localauth.py's rules with this process's state, answered as SMTP replies."""

    def __init__(
        self,
        server: ServerConfig,
        clock: Clock,
        *,
        tls_context: ssl.SSLContext | None = None,
        limiter: FailureLimiter | None = None,
    ) -> None:
        self.users: dict[str, tuple[UserConfig, ScryptHash]] = {
            user.name: (user, parse_hash(user.password_hash.get_secret_value()))
            for user in server.users
        }
        self.require_auth = server.require_auth
        self.tls_context = tls_context or server_tls_context(server)
        self.clock = clock
        self.limiter = limiter or FailureLimiter()
        self._key = secrets.token_bytes(32)
        self._verified: dict[str, bytes] = {}
        _quiet_aiosmtpd()

    def reconfigured(self, server: ServerConfig) -> AuthAccounts:
        """For a reload: the new users and require_auth; the TLS files are read at start only
        (reload.RESTART_KEYS), and a reload does not forgive a locked-out client."""
        return AuthAccounts(server, self.clock, tls_context=self.tls_context, limiter=self.limiter)

    def _remembered(self, name: str, password: bytes) -> bool:
        known = self._verified.get(name)
        digest = hmac.new(self._key, password, hashlib.sha256).digest()
        return known is not None and hmac.compare_digest(known, digest)

    def _check(self, name: str, password: bytes) -> bool:
        entry = self.users.get(name)
        if entry is None:
            verify_password(password, DECOY)  # as slow as a real check: names stay secret
            return False
        return verify_password(password, entry[1])

    def lockout_reply(self, client: str) -> str | None:
        """R454_AUTH_LOCKED while `client` has too many recent failures, else None."""
        now = self.clock.now()
        until = self.limiter.locked_until(client, now)
        if until is None:
            return None
        log.warning("auth_locked", client=client, retry_in=format_duration(until - now))
        return R454_AUTH_LOCKED

    async def verify(self, client: str, login: bytes, password: bytes) -> AuthResult:
        """Check one login; the result is what aiosmtpd's smtp_AUTH answers."""
        locked = self.lockout_reply(client)
        if locked is not None:
            return AuthResult(success=False, handled=False, message=locked)
        name = login.decode("utf-8", "replace")
        if self._remembered(name, password) or await asyncio.to_thread(self._check, name, password):
            self.limiter.succeeded(client)
            self._verified[name] = hmac.new(self._key, password, hashlib.sha256).digest()
            log.info("auth_succeeded", user=name, client=client)
            return AuthResult(success=True, auth_data=name)
        failures = self.limiter.failed(client, self.clock.now())
        # An unknown name is not logged as typed: it may be a password in the wrong field.
        user = name if name in self.users else "(unknown user)"
        log.warning("auth_failed", user=user, client=client, failures=failures)
        await asyncio.sleep(FAILURE_DELAY)
        return AuthResult(success=False, handled=False, message=R535_AUTH_FAILED)

    def sender_refusal(self, user: str | None, address: str) -> str | None:
        """R553_SENDER_NOT_ALLOWED if `user` may not send as `address`, else None."""
        entry = self.users.get(user) if user is not None else None
        if entry is None or sender_allowed(address, entry[0].allowed_senders):
            return None
        log.warning("sender_not_allowed", user=user, sender=address)
        return R553_SENDER_NOT_ALLOWED.format(user=user)

    def ehlo_lines(self, lines: list[str]) -> list[str]:
        """The EHLO reply without AUTH when there are no users (aiosmtpd lists it after TLS)."""
        return lines if self.users else [line for line in lines if not line[4:].startswith("AUTH")]


_PREFIXED: dict[tuple[type, tuple[str, ...]], list[str]] = {}


def prefixed_names(cls: type, prefixes: tuple[str, ...]) -> list[str]:
    """The attribute names of `cls` that aiosmtpd looks up by prefix, for a lean __dir__."""
    names = _PREFIXED.get((cls, prefixes))
    if names is None:
        names = _PREFIXED[cls, prefixes] = [n for n in dir(cls) if n.startswith(prefixes)]
    return names


class AuthSMTP(SMTP):
    """aiosmtpd's protocol with relayd's AUTH rules; server.IntakeSMTP builds on it.

    Method names starting with `auth_` are AUTH mechanisms to aiosmtpd: only PLAIN and
    LOGIN are, the rest of this class avoids the prefix.
    """

    def __init__(self, handler: Any, *, accounts: AuthAccounts, **kwargs: Any) -> None:
        self.accounts = accounts
        super().__init__(
            handler,
            tls_context=accounts.tls_context,
            auth_required=accounts.require_auth,
            auth_require_tls=True,  # lifted per connection for loopback clients
            **kwargs,
        )

    def __dir__(self) -> list[str]:
        """Only the names aiosmtpd looks up by prefix: its __init__ builds the verb and AUTH
        tables from dir() and inspect.getmembers() for every connection, and over all ~300
        attributes that cost about a third of a millisecond per message."""
        return prefixed_names(type(self), ("smtp_", "auth_"))

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        peer = transport.get_extra_info("peername")
        self._auth_require_tls = not (self.accounts.users and is_loopback(peer))

    def _client(self) -> str:
        return str(self.session.peer[0]) if self.session and self.session.peer else "?"

    def local_user(self) -> str | None:
        """The name this session authenticated as, or None."""
        session = self.session
        if session is None or not session.authenticated:
            return None
        return session.auth_data if isinstance(session.auth_data, str) else None

    def sender_refusal(self, address: str) -> str | None:
        return self.accounts.sender_refusal(self.local_user(), address)

    @syntax("AUTH <mechanism>")
    async def smtp_AUTH(self, arg: str) -> None:
        if self.session is not None and not self.session.authenticated:
            locked = self.accounts.lockout_reply(self._client())
            if locked is not None:
                await self.push(locked)
                return
        await super().smtp_AUTH(arg)

    def _authenticate(self, mechanism: str, auth_data: Any) -> AuthResult:
        # aiosmtpd calls this synchronously; the scrypt check happens in _verified_result.
        return AuthResult(success=False, handled=False, auth_data=auth_data)

    async def _verified_result(self, result: AuthResult) -> AuthResult:
        data = result.auth_data
        if not isinstance(data, LoginPassword):  # aborted or malformed: already answered
            return result
        return await self.accounts.verify(self._client(), data.login, data.password)

    async def auth_PLAIN(self, _: Any, args: list[str]) -> AuthResult:
        return await self._verified_result(await super().auth_PLAIN(_, args))

    async def auth_LOGIN(self, _: Any, args: list[str]) -> AuthResult:
        return await self._verified_result(await super().auth_LOGIN(_, args))
