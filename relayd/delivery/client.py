"""aiosmtplib.SMTP as relayd delivers with it: DATA without copying, one AUTH attempt.

DATA: aiosmtplib's `SMTP.data` rewrites every message with two regular expressions (lone
CR/LF to CRLF, then dot-stuffing): about 2 ms of one core for a 100 KiB body, a third of the
delivery cost. Almost every message that reaches us is already in wire form: intake stores
exactly the CRLF lines the client sent, un-stuffed. For such a body a cheap scan proves both
rewrites would change nothing, and UpstreamSMTP writes the body as it is; any other body gets
the same two rewrites first.

DATA is also where a broken or out-of-step upstream shows (a 250 to DATA, say, when it sent
a RCPT reply twice). aiosmtplib reports every unexpected code alike, as SMTPDataError, so a
250 to DATA looked like a delivered message although no body was sent. UpstreamSMTP tells them
apart: a 4xx or 5xx is the upstream's answer (SMTPDataError); any other code where 354 or the
final reply belongs raises OutOfStep and closes the connection. Only a 2xx to the final dot
means delivered.

The final dot's reply may take long: RFC 5321 4.5.3.2.6 asks a client to wait 10 minutes for
it, since the server may be processing the message. `data(final_timeout=...)` waits that long
there (the lane's lease is renewed meanwhile). A reply lost there (timed out, or the connection
dropped after the dot was written) raises ReplyLost: the upstream may have the message.

AUTH: aiosmtplib's `login` tries every mechanism both sides know, one after another, so a
wrong password costs two failed logins (PLAIN, then LOGIN) each time, and providers count
failures towards locking the account. UpstreamSMTP makes one attempt, with the mechanism
aiosmtplib ranks first.
"""

from __future__ import annotations

import re
from typing import Literal, NoReturn

import aiosmtplib
from aiosmtplib.typing import Default

_LINE_END = re.compile(rb"\r\n|\n|\r(?!\n)")  # what aiosmtplib's DATA turns into CRLF
_LEADING_DOT = re.compile(rb"(?m)^\.")  # dot-stuffing, RFC 5321 4.5.2


class OutOfStep(aiosmtplib.SMTPException):
    """A reply no server in step with us sends there (a 2xx to DATA, a 3xx to the final dot):
    no reply of the transaction can be trusted (a RCPT refusal may be another's), so every
    recipient is deferred and the connection is closed, never reused."""


class ReplyLost(aiosmtplib.SMTPException):
    """The message was sent (the final dot written) but its reply never came: the upstream may
    have taken it, so a retry may deliver it twice."""


def crlf_lines(body: bytes) -> bytes:
    """Every line end (CRLF, a lone LF, a lone CR) written as CRLF."""
    return _LINE_END.sub(b"\r\n", body)


def to_wire(body: bytes) -> bytes:
    """The body as DATA sends it: every line ending CRLF, the last one too, dots stuffed."""
    body = crlf_lines(body)
    if not body.endswith(b"\r\n"):
        body += b"\r\n"
    return _LEADING_DOT.sub(b"..", body)


def is_wire_clean(body: bytes) -> bool:
    """True when every line ends in CRLF (no lone CR or LF) and no line starts with a dot:
    then aiosmtplib's normalisation and dot-stuffing would return the body unchanged."""
    if not body.endswith(b"\r\n") or body.startswith(b"."):
        return False
    crlf = body.count(b"\r\n")
    return body.count(b"\r") == crlf and body.count(b"\n") == crlf and b"\n." not in body


class UpstreamSMTP(aiosmtplib.SMTP):
    """aiosmtplib.SMTP whose DATA writes a wire-clean body as it is and whose login makes
    one attempt."""

    async def login(
        self,
        username: str | bytes,
        password: str | bytes,
        /,
        timeout: float | Literal[Default.token] | None = Default.token,
    ) -> aiosmtplib.SMTPResponse:
        await self._ehlo_or_helo_if_needed()
        methods = self.supported_auth_methods
        if not self.supports_extension("auth") or not methods:
            return await super().login(username, password, timeout=timeout)  # its errors
        mechanism = getattr(self, f"auth_{methods[0].replace('-', '').lower()}")
        response: aiosmtplib.SMTPResponse = await mechanism(username, password, timeout=timeout)
        return response

    async def data(
        self,
        message: str | bytes,
        /,
        *,
        timeout: float | Literal[Default.token] | None = Default.token,
        final_timeout: float | None = None,
    ) -> aiosmtplib.SMTPResponse:
        """DATA, the body and the final dot; `final_timeout` is how long the reply to the dot
        may take (the general timeout when None)."""
        protocol = self.protocol
        if protocol is None:
            raise aiosmtplib.SMTPServerDisconnected("Connection lost")
        await self._ehlo_or_helo_if_needed()
        body = message.encode("ascii") if isinstance(message, str) else message
        if not is_wire_clean(body):
            body = to_wire(body)
        wait = self.timeout if timeout is Default.token else timeout
        try:
            start = await protocol.execute_command(b"DATA", timeout=wait)
            if start.code != aiosmtplib.SMTPStatus.start_input:
                self._refused(start, "DATA")
            # read_response arms the protocol for the reply before it awaits anything, so
            # no byte of the reply can arrive between the write and it.
            protocol.write(body + b".\r\n")
        except (aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPTimeoutError):
            self.close()
            raise
        try:
            response = await protocol.read_response(timeout=final_timeout or wait)
        except (aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPTimeoutError) as exc:
            self.close()
            timed_out = isinstance(exc, aiosmtplib.SMTPTimeoutError)
            what = "timed out" if timed_out else f"connection dropped: {exc}"
            raise ReplyLost(f"no reply to the final dot ({what})") from exc
        if not 200 <= response.code < 300:
            self._refused(response, "the end of DATA")
        return response

    def _refused(self, reply: aiosmtplib.SMTPResponse, stage: str) -> NoReturn:
        """A 4xx or 5xx is the upstream's answer; any other code means it is out of step."""
        if 400 <= reply.code < 600:
            raise aiosmtplib.SMTPDataError(reply.code, reply.message)
        self.close()
        raise OutOfStep(f"protocol error: {reply.code} to {stage}")
