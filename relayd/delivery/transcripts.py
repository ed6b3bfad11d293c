"""SMTP transcripts of upstream sessions ([log] transcript_dir, the "Email Debug File Path").

Each upstream writes `<transcript_dir>/<upstream>.log`, rotated by size like logging's
RotatingFileHandler (`transcript_max_size` bytes, `transcript_files` old files kept), so the
directory never grows past (files + 1) x max_size per upstream. Every line carries the time
and the connection's session id; `>` is what relayd sent, `<` what the upstream answered:

    2026-01-05T09:14:03.120Z 3f9a1c02 > AUTH PLAIN ********
    2026-01-05T09:14:03.161Z 3f9a1c02 < 535 5.7.8 Username and Password not accepted.

What is never written: AUTH payloads (the initial response and every continuation line after
a 334 are replaced by ********), the upstream's password in any encoding relayd sends it (a
careless server may echo it back), and message content (DATA shows only its size).

The session layer is aiosmtplib's SMTP class; TranscribingSMTP overrides the points every
command and reply pass through (execute_command, starttls, data, UpstreamSMTP's pipelined
envelope and its lone final dot, and the private _create_connection for the greeting, which
aiosmtplib has kept since 1.x).
"""

from __future__ import annotations

import base64
import logging
import logging.handlers
import secrets
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import aiosmtplib
from aiosmtplib.typing import Default

from relayd.clock import Clock
from relayd.config.model import UpstreamConfig
from relayd.delivery.client import UpstreamSMTP
from relayd.units import format_iso_millis

MASK = "********"
DEFAULT_MAX_BYTES = 10_000_000
DEFAULT_FILES = 5
_MIN_SECRET = 4  # shorter "secrets" would mask ordinary words


@dataclass(frozen=True)
class _Settings:
    directory: Path
    max_bytes: int
    files: int
    clock: Clock  # the daemon's, for each line's time


_settings: _Settings | None = None
_loggers: dict[str, logging.Logger] = {}


def configure(
    directory: Path | None,
    clock: Clock,
    max_bytes: int = DEFAULT_MAX_BYTES,
    files: int = DEFAULT_FILES,
) -> None:
    """Start (or stop, with None) writing transcripts; raises OSError if the directory cannot
    be created. Sessions opened before keep the files they had until they reconnect."""
    global _settings
    for logger in _loggers.values():
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
            handler.close()
    _loggers.clear()
    _settings = None
    if directory is not None:
        directory.mkdir(parents=True, exist_ok=True, mode=0o750)
        _settings = _Settings(directory, max_bytes, files, clock)


def enabled() -> bool:
    return _settings is not None


def _logger(upstream: str) -> logging.Logger:
    assert _settings is not None
    logger = _loggers.get(upstream)
    if logger is None:
        logger = logging.getLogger(f"relayd.transcript.{upstream}")
        logger.propagate = False
        logger.setLevel(logging.INFO)
        handler = logging.handlers.RotatingFileHandler(
            _settings.directory / f"{upstream}.log",
            maxBytes=_settings.max_bytes,
            backupCount=_settings.files,
            encoding="utf-8",
        )
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.handlers = [handler]
        _loggers[upstream] = logger
    return logger


def secret_forms(username: str | None, password: str | None) -> list[str]:
    """The password as relayd may send it: plain, base64 (LOGIN), base64 of PLAIN's string."""
    if not password or len(password) < _MIN_SECRET:
        return []
    forms = [password, base64.b64encode(password.encode()).decode()]
    if username:
        forms.append(base64.b64encode(f"\0{username}\0{password}".encode()).decode())
    return forms


def scrub(text: str, hidden: Sequence[str]) -> str:
    for secret in sorted(hidden, key=len, reverse=True):
        text = text.replace(secret, MASK)
    return text


def _password_forms(upstream: UpstreamConfig) -> list[str]:
    password = upstream.password.get_secret_value() if upstream.password is not None else None
    return secret_forms(upstream.username, password)


def scrub_password(upstream: UpstreamConfig, text: str) -> str:
    """`text` (a server's reply) without the upstream's password in any form relayd sends."""
    return scrub(text, _password_forms(upstream))


class Transcript:
    """One connection's lines, written to its upstream's rotating file."""

    def __init__(self, upstream: str, hidden: Sequence[str]) -> None:
        self.upstream = upstream
        self.session = secrets.token_hex(4)
        self.hidden = list(hidden)

    def write(self, direction: str, text: str) -> None:
        if _settings is None:
            return
        stamp = format_iso_millis(_settings.clock.now())
        logger = _logger(self.upstream)
        for line in scrub(text, self.hidden).splitlines() or [""]:
            logger.info("%s %s %s %s", stamp, self.session, direction, line)

    def reply(self, response: aiosmtplib.SMTPResponse) -> None:
        lines = response.message.splitlines() or [""]
        for index, line in enumerate(lines):
            sep = " " if index == len(lines) - 1 else "-"
            self.write("<", f"{response.code}{sep}{line}")


def redact_command(args: Sequence[bytes], auth_continuation: bool) -> str:
    """A command as the transcript shows it: AUTH payloads and continuations masked."""
    if auth_continuation:
        return MASK
    text = b" ".join(args).decode("utf-8", "replace")
    words = text.split(" ")
    if words[0].upper() == "AUTH" and len(words) > 2:
        return f"{words[0]} {words[1]} {MASK}"
    return text


class TranscribingSMTP(UpstreamSMTP):
    """aiosmtplib.SMTP that writes every command and reply to a Transcript."""

    def __init__(self, transcript: Transcript, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.transcript = transcript
        self._in_auth = False

    async def _create_connection(self, timeout: float | None) -> aiosmtplib.SMTPResponse:
        self.transcript = Transcript(self.transcript.upstream, self.transcript.hidden)
        tls = " (implicit TLS)" if self.use_tls else ""
        self.transcript.write("-", f"connect {self.hostname}:{self.port}{tls}")
        return await self._exchange(super()._create_connection(timeout))

    async def _exchange(
        self,
        call: Awaitable[aiosmtplib.SMTPResponse],
        errors: tuple[type[Exception], ...] = (aiosmtplib.SMTPException,),
    ) -> aiosmtplib.SMTPResponse:
        """Await one exchange and write its reply, or the error, to the transcript."""
        try:
            response = await call
        except aiosmtplib.SMTPResponseException as exc:
            self.transcript.reply(aiosmtplib.SMTPResponse(exc.code, exc.message))
            raise
        except errors as exc:
            self.transcript.write("-", f"error: {exc}")
            raise
        self.transcript.reply(response)
        return response

    async def execute_command(
        self, *args: bytes, timeout: float | Literal[Default.token] | None = Default.token
    ) -> aiosmtplib.SMTPResponse:
        is_auth = bool(args) and args[0].upper() == b"AUTH"
        self.transcript.write(">", redact_command(args, self._in_auth))
        try:
            response = await super().execute_command(*args, timeout=timeout)
        except aiosmtplib.SMTPException as exc:
            self._in_auth = False
            self.transcript.write("-", f"error: {exc}")
            raise
        self._in_auth = (is_auth or self._in_auth) and response.code == 334
        self.transcript.reply(response)
        return response

    async def _pipeline(
        self, lines: list[bytes], timeout: float | None
    ) -> list[aiosmtplib.SMTPResponse]:
        for line in lines:
            self.transcript.write(">", redact_command([line], False))
        try:
            replies = await super()._pipeline(lines, timeout)
        except aiosmtplib.SMTPException as exc:
            self.transcript.write("-", f"error: {exc}")
            raise
        for reply in replies:
            self.transcript.reply(reply)
        return replies

    async def starttls(self, *args: Any, **kwargs: Any) -> aiosmtplib.SMTPResponse:
        await self._ehlo_or_helo_if_needed()  # what aiosmtplib does first, so lines are in order
        self.transcript.write(">", "STARTTLS")
        errors = (aiosmtplib.SMTPException, OSError)
        response = await self._exchange(super().starttls(*args, **kwargs), errors)
        self.transcript.write("-", f"TLS established: {self.get_transport_info('cipher')}")
        return response

    async def data(
        self, message: str | bytes, *args: Any, **kwargs: Any
    ) -> aiosmtplib.SMTPResponse:
        if kwargs.get("started") is None:  # else DATA went with the envelope (_pipeline)
            self.transcript.write(">", "DATA")
        self.transcript.write(">", f"(message: {len(message)} bytes)")
        return await self._exchange(super().data(message, *args, **kwargs))

    async def end_empty_data(self) -> aiosmtplib.SMTPResponse:
        self.transcript.write(">", ". (no recipient was accepted)")
        return await self._exchange(super().end_empty_data())

    def close(self) -> None:
        if self.is_connected:
            self.transcript.write("-", "closed")
        super().close()


def make_upstream_smtp(upstream: UpstreamConfig, **kwargs: Any) -> UpstreamSMTP:
    """An UpstreamSMTP(**kwargs) (delivery/client.py) for `upstream`, transcribed when [log]
    transcript_dir is set."""
    if _settings is None:
        return UpstreamSMTP(**kwargs)
    return TranscribingSMTP(Transcript(upstream.name, _password_forms(upstream)), **kwargs)
