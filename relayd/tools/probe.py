"""`relayd test-upstream`: the checks a support engineer would run against one upstream.

resolve -> connect -> TLS and greeting (STARTTLS: greeting, EHLO, STARTTLS; implicit TLS:
handshake, greeting) -> EHLO -> AUTH. Each check is a `Step` with the server's exact words
and, when it fails, a hint from policy/hints.py; the checks stop at the first failure, since every
later one would fail for the same reason. Nothing is sent: no MAIL FROM, no message.

TLS is never optional: a STARTTLS upstream whose server does not offer STARTTLS fails here,
as delivery never falls back to plaintext. Certificates are verified as delivery/session.py
verifies them (the system's CA certificates, or `tls_ca_file`). The secret never reaches a
Step: every detail is scrubbed of it, raw and base64-encoded, in case a server echoes back
what it was sent. The `directory` upstream gets one check instead: can relayd write there.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import socket
import ssl
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import aiosmtplib

from relayd.clock import Clock
from relayd.config.model import UpstreamConfig
from relayd.delivery.oauth import TokenSource, problem_of, xoauth2_b64
from relayd.errors import UpstreamAuthError, UpstreamUnavailable
from relayd.policy.providers import PRESETS, Problem, hint_for
from relayd.types import SmtpReply
from relayd.units import format_duration

MASK = "********"
_AddrInfo = tuple[int, int, int, str, Any]


@dataclass(frozen=True)
class Step:
    """One check: `detail` is the server's reply or the error; `hint` says what to do."""

    name: str
    ok: bool
    detail: str
    hint: str | None = None


def can_send(steps: Sequence[Step]) -> bool:
    """Whether every check passed (and there was at least one)."""
    return bool(steps) and all(step.ok for step in steps)


async def probe_upstream(upstream: UpstreamConfig, local_hostname: str, clock: Clock) -> list[Step]:
    """Run the checks for `upstream`, introducing ourselves as `local_hostname`."""
    if PRESETS[upstream.provider].delivers_to_directory:
        return [await asyncio.to_thread(_check_directory, upstream)]
    probe = _Probe(upstream, local_hostname, clock)
    await probe.run()
    return probe.steps


def _check_directory(upstream: UpstreamConfig) -> Step:
    assert upstream.path is not None
    path = upstream.path
    hint = hint_for(upstream.provider, None, Problem.DIRECTORY)
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return Step("directory", False, f"{existing} is not a directory", hint)
    if existing != path:
        if os.access(existing, os.W_OK | os.X_OK):
            return Step("directory", True, f"{path} will be created (in {existing}, writable)")
        return Step("directory", False, f"{path} does not exist and {existing} is read-only", hint)
    try:
        with tempfile.NamedTemporaryFile(dir=path, prefix=".relayd-test-"):
            pass
    except OSError as exc:
        return Step("directory", False, f"cannot write to {path}: {exc.strerror}", hint)
    return Step("directory", True, f"{path} is writable")


class _Probe:
    def __init__(self, upstream: UpstreamConfig, local_hostname: str, clock: Clock) -> None:
        assert upstream.host is not None
        assert upstream.port is not None
        self.up = upstream
        self.host, self.port = upstream.host, upstream.port
        self.local_hostname = local_hostname
        self.clock = clock  # for the xoauth2 token's lifetime
        self.steps: list[Step] = []
        self._secrets = _secret_forms(upstream)

    def _add(
        self,
        name: str,
        ok: bool,
        detail: str,
        *,
        reply: SmtpReply | None = None,
        problem: Problem | None = None,
    ) -> bool:
        for secret in self._secrets:
            detail = detail.replace(secret, MASK)
        hint = None if ok else hint_for(self.up.provider, reply, problem)
        self.steps.append(Step(name, ok, detail, hint))
        return ok

    def _fail(self, name: str, exc: BaseException) -> bool:
        """A failed step for an exception: a server reply, or a transport problem."""
        if isinstance(exc, aiosmtplib.SMTPResponseException):
            reply = SmtpReply(exc.code, exc.message)
            return self._add(name, False, str(reply), reply=reply)
        detail, problem = _transport_problem(exc)
        return self._add(name, False, detail, problem=problem)

    async def run(self) -> None:
        try:
            context = _tls_context(self.up) if self.up.security != "none" else None
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
            self._add("tls", False, f"cannot load tls_ca_file: {exc}", problem=Problem.CERTIFICATE)
            return
        infos = await self._resolve()
        sock = await self._connect(infos) if infos else None
        if sock is None:
            return
        smtp = aiosmtplib.SMTP(
            hostname=self.host,  # with `sock`, this is only the name the certificate must match
            sock=sock,
            local_hostname=self.local_hostname,
            timeout=self.up.timeout,
            use_tls=self.up.security == "tls",
            start_tls=False,  # STARTTLS is done step by step below, and never skipped
            validate_certs=self.up.tls_verify,
            tls_context=context,
        )
        try:
            if await self._open(smtp) and await self._ehlo(smtp):
                await self._auth(smtp)
        finally:
            await _quit(smtp)
            sock.close()

    async def _resolve(self) -> list[_AddrInfo]:
        loop = asyncio.get_running_loop()
        lookup = loop.getaddrinfo(self.host, self.port, type=socket.SOCK_STREAM)
        try:
            infos = await asyncio.wait_for(lookup, self.up.connect_timeout)
        except socket.gaierror as exc:
            self._add("resolve", False, f"{self.host}: {exc.strerror}", problem=Problem.RESOLVE)
            return []
        except TimeoutError:
            detail = (
                f"{self.host}: no answer from DNS in {format_duration(self.up.connect_timeout)}"
            )
            self._add("resolve", False, detail, problem=Problem.RESOLVE)
            return []
        unique: list[_AddrInfo] = list({info[4]: info for info in infos}.values())
        addresses = ", ".join(str(info[4][0]) for info in unique)
        self._add("resolve", True, f"{self.host} -> {addresses}")
        return unique

    async def _connect(self, infos: list[_AddrInfo]) -> socket.socket | None:
        """TCP to each address in turn (as the resolver ordered them) until one answers."""
        loop = asyncio.get_running_loop()
        errors: list[str] = []
        timeouts = 0
        for family, kind, proto, _, address in infos:
            sock = socket.socket(family, kind, proto)
            sock.setblocking(False)
            try:
                await asyncio.wait_for(loop.sock_connect(sock, address), self.up.connect_timeout)
            except OSError as exc:  # TimeoutError and ConnectionRefusedError among them
                sock.close()
                timeouts += isinstance(exc, TimeoutError)
                errors.append(f"{_where(address)}: {self._reason(exc)}")
                continue
            self._add("connect", True, f"connected to {_where(address)}")
            return sock
        problem = Problem.TIMEOUT if timeouts == len(errors) else Problem.REFUSED
        self._add("connect", False, "; ".join(errors), problem=problem)
        return None

    def _reason(self, exc: OSError) -> str:
        if isinstance(exc, TimeoutError):
            return f"no answer in {format_duration(self.up.connect_timeout)}"
        if isinstance(exc, ConnectionRefusedError):
            return "connection refused"
        return exc.strerror or str(exc)

    async def _open(self, smtp: aiosmtplib.SMTP) -> bool:
        """Up to an encrypted (or, with security = "none", plain) session after the greeting."""
        if self.up.security == "tls":
            return await self._implicit_tls(smtp)
        if not await self._greeting(smtp):
            return False
        return self.up.security != "starttls" or await self._starttls(smtp)

    async def _greeting(self, smtp: aiosmtplib.SMTP) -> bool:
        try:
            response = await smtp.connect(timeout=self.up.connect_timeout)
        except aiosmtplib.SMTPConnectTimeoutError:
            wait = format_duration(self.up.connect_timeout)
            detail = f"connected, but the server sent no greeting in {wait}"
            return self._add("greeting", False, detail, problem=Problem.NO_GREETING)
        except (aiosmtplib.SMTPException, OSError) as exc:
            return self._fail("greeting", exc)
        return self._add("greeting", True, _text(response))

    async def _implicit_tls(self, smtp: aiosmtplib.SMTP) -> bool:
        try:
            response = await smtp.connect(timeout=self.up.connect_timeout)
        except aiosmtplib.SMTPConnectResponseError as exc:
            self._add("tls", True, _tls_detail(smtp, self.up.tls_verify))
            return self._fail("greeting", exc)
        except (aiosmtplib.SMTPException, OSError) as exc:
            return self._fail("tls", exc)
        self._add("tls", True, _tls_detail(smtp, self.up.tls_verify))
        return self._add("greeting", True, _text(response))

    async def _starttls(self, smtp: aiosmtplib.SMTP) -> bool:
        try:
            ehlo = await smtp.ehlo()
        except (aiosmtplib.SMTPException, OSError) as exc:
            return self._fail("ehlo", exc)
        if not smtp.supports_extension("starttls"):
            detail = f"STARTTLS is not offered; the server's EHLO reply:\n{_text(ehlo)}"
            return self._add("tls", False, detail, problem=Problem.STARTTLS_NOT_OFFERED)
        try:
            await smtp.starttls(timeout=self.up.connect_timeout)
        except (aiosmtplib.SMTPException, OSError) as exc:
            return self._fail("tls", exc)
        return self._add("tls", True, "STARTTLS: " + _tls_detail(smtp, self.up.tls_verify))

    async def _ehlo(self, smtp: aiosmtplib.SMTP) -> bool:
        try:
            response = await smtp.ehlo()
        except (aiosmtplib.SMTPException, OSError) as exc:
            return self._fail("ehlo", exc)
        return self._add("ehlo", True, _text(response))

    async def _auth(self, smtp: aiosmtplib.SMTP) -> None:
        up = self.up
        if up.auth == "xoauth2":
            await self._xoauth2(smtp)
            return
        if up.auth != "password":
            return  # auth = "none": nothing to check
        assert up.username is not None
        assert up.password is not None
        if not smtp.supports_extension("auth"):
            detail = "the server's EHLO reply offers no AUTH"
            self._add("auth", False, detail, problem=Problem.AUTH_NOT_OFFERED)
            return
        try:
            response = await smtp.login(up.username, up.password.get_secret_value())
        except aiosmtplib.SMTPResponseException as exc:
            self._fail("auth", exc)
            return
        except aiosmtplib.SMTPException as exc:  # no mechanism in common
            offered = " ".join(smtp.server_auth_methods).upper() or "none"
            detail = f"{exc} (the server offers: {offered})"
            self._add("auth", False, detail, problem=Problem.AUTH_NOT_OFFERED)
            return
        except OSError as exc:
            self._fail("auth", exc)
            return
        self._add("auth", True, f"{_text(response)} (logged in as {up.username})")

    async def _xoauth2(self, smtp: aiosmtplib.SMTP) -> None:
        """token (refresh or client credentials at the token endpoint), then AUTH XOAUTH2."""
        up = self.up
        assert up.username is not None
        try:
            token = await TokenSource(up, self.clock, quiet=True).token()
        except (UpstreamAuthError, UpstreamUnavailable) as exc:
            self._add("token", False, str(exc), problem=problem_of(exc))
            return
        self._secrets = (token.value, xoauth2_b64(up.username, token.value), *self._secrets)
        valid = format_duration(token.expires_at - token.obtained_at)
        self._add("token", True, f"access token from {up.token_url}, valid for {valid}")
        if "xoauth2" not in smtp.server_auth_methods:
            offered = " ".join(smtp.server_auth_methods).upper() or "none"
            detail = f"the server does not offer AUTH XOAUTH2 (it offers: {offered})"
            self._add("auth", False, detail, problem=Problem.AUTH_NOT_OFFERED)
            return
        try:
            response = await smtp.auth_xoauth2(up.username, token.value)
        except (aiosmtplib.SMTPException, OSError) as exc:
            self._fail("auth", exc)
            return
        self._add("auth", True, f"{_text(response)} (XOAUTH2 as {up.username})")


def _tls_context(upstream: UpstreamConfig) -> ssl.SSLContext:
    """The context SmtpSession (delivery/session.py) builds: the probe tests what delivery does."""
    context = ssl.create_default_context(cafile=upstream.tls_ca_file)
    if not upstream.tls_verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def _tls_detail(smtp: aiosmtplib.SMTP, verified: bool) -> str:
    ssl_object = smtp.get_transport_info("ssl_object")
    if not isinstance(ssl_object, ssl.SSLObject | ssl.SSLSocket):
        return "encrypted"
    cipher = ssl_object.cipher()
    text = f"{ssl_object.version()} {cipher[0] if cipher else ''}".rstrip()
    if not verified:
        return f"{text}; certificate NOT verified (tls_verify = false)"
    cert: dict[str, Any] = dict(ssl_object.getpeercert() or {})
    names = [str(value) for _, value in cert.get("subjectAltName", ())]
    subject = _name(cert.get("subject", ()), ", ".join(names[:3]))
    issuer = _name(cert.get("issuer", ()))
    return f"{text}; certificate for {subject}, issued by {issuer}, verified"


def _name(rdns: Any, alt_names: str = "") -> str:
    """A certificate's commonName, else its subjectAltNames, else its organizationName."""
    fields = {key: value for rdn in rdns for key, value in rdn}
    return str(fields.get("commonName") or alt_names or fields.get("organizationName") or "?")


def _text(response: aiosmtplib.SMTPResponse) -> str:
    return str(SmtpReply(response.code, response.message))


def _where(address: Any) -> str:
    host, port = address[0], address[1]
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """`exc` and its causes and contexts, each once."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _transport_problem(exc: BaseException) -> tuple[str, Problem]:
    """What went wrong below SMTP, in words, and which hint it calls for."""
    chain = list(_chain(exc))
    for item in chain:
        if isinstance(item, ssl.SSLCertVerificationError):
            return f"certificate not trusted: {item.verify_message}", Problem.CERTIFICATE
    for item in chain:
        if isinstance(item, ssl.SSLError):
            reason = item.reason or str(item)
            # An SMTP server's plaintext "220 ..." read as a TLS record.
            plaintext = reason in ("WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE")
            return f"TLS failed: {reason}", Problem.PLAINTEXT_PORT if plaintext else Problem.TLS
        if isinstance(item, ConnectionRefusedError):
            return "connection refused", Problem.REFUSED
        if isinstance(item, TimeoutError):
            return f"timed out: {exc}", Problem.TIMEOUT
    return f"the server closed the connection: {exc}", Problem.DISCONNECTED


def _secret_forms(upstream: UpstreamConfig) -> tuple[str, ...]:
    """The password as typed and as AUTH LOGIN / AUTH PLAIN send it (base64)."""
    if upstream.password is None:
        return ()
    secret = upstream.password.get_secret_value()
    user = upstream.username or ""
    encoded = [base64.b64encode(raw.encode()).decode() for raw in (secret, f"\0{user}\0{secret}")]
    return tuple(sorted({secret, *encoded}, key=len, reverse=True))


async def _quit(smtp: aiosmtplib.SMTP) -> None:
    transport = smtp.transport
    if smtp.is_connected:
        with contextlib.suppress(TimeoutError, aiosmtplib.SMTPException, OSError):
            await asyncio.wait_for(smtp.quit(), 5)
    smtp.close()
    if isinstance(transport, asyncio.Transport):
        # After QUIT nothing is owed: no waiting for the server's TLS close_notify, which
        # would outlive `asyncio.run` in the CLI and leave the socket to the garbage collector.
        transport.abort()
    await asyncio.sleep(0)  # let the transport's connection_lost run: it closes the socket
