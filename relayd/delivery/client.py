"""aiosmtplib.SMTP as relayd delivers with it: DATA without copying, one AUTH attempt.

DATA: aiosmtplib's `SMTP.data` rewrites every message with two regular expressions (lone
CR/LF to CRLF, then dot-stuffing): about 2 ms of one core for a 100 KiB body, a third of the
delivery cost. Almost every message that reaches us is already in wire form: intake stores
exactly the CRLF lines the client sent, un-stuffed. For such a body a cheap scan proves both
rewrites would change nothing, and UpstreamSMTP writes the body as it is; any other body goes
through aiosmtplib's own DATA.

AUTH: aiosmtplib's `login` tries every mechanism both sides know, one after another, so a
wrong password costs two failed logins (PLAIN, then LOGIN) each time, and providers count
failures towards locking the account. UpstreamSMTP makes one attempt, with the mechanism
aiosmtplib ranks first.
"""

from __future__ import annotations

from typing import Literal

import aiosmtplib
from aiosmtplib.typing import Default


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
    ) -> aiosmtplib.SMTPResponse:
        protocol = self.protocol
        if isinstance(message, str) or protocol is None or not is_wire_clean(message):
            return await super().data(message, timeout=timeout)
        await self._ehlo_or_helo_if_needed()
        wait = self.timeout if timeout is Default.token else timeout
        try:
            start = await protocol.execute_command(b"DATA", timeout=wait)
            if start.code != aiosmtplib.SMTPStatus.start_input:
                raise aiosmtplib.SMTPDataError(start.code, start.message)
            # read_response arms the protocol for the reply before it awaits anything, so
            # no byte of the reply can arrive between the write and it.
            protocol.write(message + b".\r\n")
            response = await protocol.read_response(timeout=wait)
        except (aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPTimeoutError):
            self.close()
            raise
        if response.code != aiosmtplib.SMTPStatus.completed:
            raise aiosmtplib.SMTPDataError(response.code, response.message)
        return response
