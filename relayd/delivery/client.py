"""aiosmtplib.SMTP as relayd delivers with it: DATA without copying, the envelope
pipelined, one AUTH attempt.

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

PIPELINING (RFC 2920): to an upstream that offers it, `envelope` writes MAIL FROM, every
RCPT TO and DATA at once and reads their replies in order; the body follows the 354. Two
round trips per message instead of three and one per recipient (Gmail, Microsoft 365 and
Postfix all offer it; over the internet a round trip is tens of milliseconds). The session
confirms the lease between the replies and the body (delivery/renewal.py). aiosmtplib's
protocol cannot take replies to commands written together (see PipeliningProtocol), so
this module gives aiosmtplib a subclass of it that can.

AUTH: aiosmtplib's `login` tries every mechanism both sides know, one after another, so a
wrong password costs two failed logins (PLAIN, then LOGIN) each time, and providers count
failures towards locking the account. UpstreamSMTP makes one attempt, with the mechanism
aiosmtplib ranks first.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, NoReturn

import aiosmtplib
import aiosmtplib.smtp
from aiosmtplib.email import quote_address
from aiosmtplib.protocol import MAX_RESPONSE_LENGTH, SMTPProtocol
from aiosmtplib.typing import Default

_LINE_END = re.compile(rb"\r\n|\n|\r(?!\n)")  # what aiosmtplib's DATA turns into CRLF
_LEADING_DOT = re.compile(rb"(?m)^\.")  # dot-stuffing, RFC 5321 4.5.2
_LONE_CR = re.compile(rb"\r(?!\n)")
_DOT_LINE = re.compile(rb"\n[.]")  # a line after the first that starts with a dot
# A mailbox aiosmtplib's quote_address would give back unchanged: dot-atom characters (any
# non-ASCII too, for SMTPUTF8) around one @, or empty (the null sender). Queued addresses
# are these nearly always (intake checked them); anything else goes through quote_address.
_PLAIN_MAILBOX = re.compile(r"(?:[\w!#$%&'*+/=?^`{|}~-]+(?:\.[\w!#$%&'*+/=?^`{|}~-]+)*@[\w.-]+)?")


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
    then aiosmtplib's normalisation and dot-stuffing would return the body unchanged.

    With no CR that is not before an LF, as many CRs as LFs means no lone LF either. Two
    one-byte counts and two regexes led by one literal byte (which re finds fast) take a
    fifth less than counting CRLFs and searching for `b"\\n."` (340 -> 250-290 us per
    100 KiB, run for every message the delivering process sends)."""
    if not body.endswith(b"\r\n") or body.startswith(b"."):
        return False
    return (
        body.count(b"\r") == body.count(b"\n")
        and not _LONE_CR.search(body)
        and not _DOT_LINE.search(body)
    )


class PipeliningProtocol(SMTPProtocol):
    """aiosmtplib's protocol, keeping every reply to commands written together (RFC 2920).

    aiosmtplib waits for one reply at a time: bytes that arrive while no command waits, or
    after the awaited reply was parsed but before it was taken, are dropped (so that a
    stray line is never taken for the next command's reply), and a second reply that came
    in the same packet stays unread. While `owed` replies are outstanding this protocol
    keeps those bytes, and a read takes a complete reply from them before it waits."""

    owed = 0  # replies still to come for commands written together

    def data_received(self, data: bytes) -> None:
        waiter = self._response_waiter
        idle = waiter is not None and (waiter.done() or not self._response_pending)
        if self.owed and idle and len(self._buffer) + len(data) <= MAX_RESPONSE_LENGTH:
            self._buffer.extend(data)  # the reply of a command written with the last one
            return
        super().data_received(data)

    async def read_response(self, timeout: float | None = None) -> aiosmtplib.SMTPResponse:
        waiter = self._response_waiter
        if self.owed and self._buffer and waiter is not None and not waiter.done():
            response = self._read_response_from_buffer()  # kept after the last one taken
            if response is not None:
                self._response_pending = False
                return response
        return await super().read_response(timeout)


# aiosmtplib's SMTP makes its protocol by this module-level name and offers no other way
# in; every aiosmtplib connection of the process (deliveries, test-upstream, send-test) gets
# the subclass, which behaves as aiosmtplib's own while no reply is owed.
aiosmtplib.smtp.SMTPProtocol = PipeliningProtocol  # type: ignore[attr-defined]


@dataclass(frozen=True)
class EnvelopeReplies:
    """The replies to one transaction's MAIL, its RCPTs (in order) and, when DATA went with
    them (pipelined), DATA."""

    mail: aiosmtplib.SMTPResponse
    rcpts: list[aiosmtplib.SMTPResponse]
    data: aiosmtplib.SMTPResponse | None


class UpstreamSMTP(aiosmtplib.SMTP):
    """aiosmtplib.SMTP whose DATA writes a wire-clean body as it is, whose envelope is
    pipelined and whose login makes one attempt."""

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

    async def envelope(
        self,
        mail: tuple[str, Sequence[str]],
        recipients: Sequence[tuple[str, Sequence[str]]],
        encoding: str,
        *,
        data: bool = False,
        timeout: float | Literal[Default.token] | None = Default.token,
    ) -> EnvelopeReplies:
        """MAIL FROM, every RCPT TO and, with `data`, DATA, written at once when the upstream
        offers PIPELINING (one round trip instead of one per command), else MAIL and the
        RCPTs one after another (DATA is then data()'s: the replies' `data` is None); their
        replies, refusals included (after a refused MAIL, each RCPT's reply is the
        upstream's complaint about the order, so each gets MAIL's)."""
        await self._ehlo_or_helo_if_needed()
        sender, options = mail
        lines = [_command(b"MAIL FROM:", sender, options, encoding)]
        lines += [_command(b"RCPT TO:", rcpt, opts, encoding) for rcpt, opts in recipients]
        wait = self.timeout if timeout is Default.token else timeout
        pipelined = self.supports_extension("pipelining") and isinstance(
            self.protocol, PipeliningProtocol
        )
        if pipelined:
            replies = await self._pipeline([*lines, b"DATA"] if data else lines, wait)
        else:
            replies = [await self.execute_command(lines[0], timeout=wait)]
            if replies[0].code == 250:
                replies += [await self.execute_command(line, timeout=wait) for line in lines[1:]]
        started = replies.pop() if pipelined and data and len(replies) == len(lines) + 1 else None
        if replies[0].code != 250:
            replies[1:] = [replies[0]] * len(recipients)
        closing = [*replies, started] if started is not None else replies
        if any(reply.code == aiosmtplib.SMTPStatus.domain_unavailable for reply in closing):
            self.close()  # a 421: the upstream closes the connection (as aiosmtplib does)
        return EnvelopeReplies(replies[0], replies[1:], started)

    async def end_empty_data(self) -> aiosmtplib.SMTPResponse:
        """The final dot alone, and its reply (whatever it says): DATA was accepted (354) in
        a pipelined transaction none of whose recipients was (RFC 2920 3.1)."""
        protocol = self.protocol
        if protocol is None:
            raise aiosmtplib.SMTPServerDisconnected("Connection lost")
        protocol.write(b".\r\n")
        try:
            return await protocol.read_response(timeout=self.timeout)
        except (aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPTimeoutError):
            self.close()
            raise

    async def _pipeline(
        self, lines: list[bytes], timeout: float | None
    ) -> list[aiosmtplib.SMTPResponse]:
        """`lines` written at once; their replies, fewer when the connection dropped or
        stalled after a refused MAIL (a 421 and goodbye)."""
        protocol = self.protocol
        if not isinstance(protocol, PipeliningProtocol) or protocol._command_lock is None:
            raise aiosmtplib.SMTPServerDisconnected("Connection lost")
        replies: list[aiosmtplib.SMTPResponse] = []
        async with protocol._command_lock:
            protocol.owed = len(lines)
            try:
                protocol._response_pending = True
                protocol.write(b"".join(line + b"\r\n" for line in lines))
                while len(replies) < len(lines):
                    replies.append(await protocol.read_response(timeout=timeout))
                    protocol.owed -= 1
            except (aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPTimeoutError):
                self.close()  # a reply given up on would be taken for a later command's
                if not replies or replies[0].code == 250:
                    raise
            finally:
                protocol.owed = 0
        return replies

    async def data(
        self,
        message: str | bytes,
        /,
        *,
        timeout: float | Literal[Default.token] | None = Default.token,
        final_timeout: float | None = None,
        started: aiosmtplib.SMTPResponse | None = None,
    ) -> aiosmtplib.SMTPResponse:
        """DATA, the body and the final dot; `final_timeout` is how long the reply to the dot
        may take (the general timeout when None). `started`: DATA's reply when DATA went
        with the envelope (pipelined); then only the body and the dot go."""
        if started is not None and started.code != aiosmtplib.SMTPStatus.start_input:
            self._refused(started, "DATA")  # before anything else: a 421 closed the connection
        protocol = self.protocol
        if protocol is None:
            raise aiosmtplib.SMTPServerDisconnected("Connection lost")
        await self._ehlo_or_helo_if_needed()
        body = message.encode("ascii") if isinstance(message, str) else message
        if not is_wire_clean(body):
            body = to_wire(body)
        wait = self.timeout if timeout is Default.token else timeout
        try:
            if started is None:
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


def _command(verb: bytes, address: str, options: Sequence[str], encoding: str) -> bytes:
    """One MAIL or RCPT line, without its CRLF; ValueError for a CR or LF in it, as
    aiosmtplib's own commands (no command may be smuggled into another)."""
    quoted = f"<{address}>" if _PLAIN_MAILBOX.fullmatch(address) else quote_address(address)
    words = [verb + quoted.encode(encoding)]
    line = b" ".join(words + [option.encode("ascii") for option in options])
    if b"\r" in line or b"\n" in line:
        raise ValueError("Command arg contains a prohibited control character")
    return line
