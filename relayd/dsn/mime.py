"""Reading parts and headers of a bounce report with the stdlib `email` (compat32); pure.

Shared by the RFC 3464 reader (dsn/parse.py) and the free-text readers (dsn/freetext.py).
"""

from __future__ import annotations

import codecs
import re
from collections.abc import Iterator
from email import policy
from email.errors import HeaderParseError
from email.header import decode_header
from email.message import Message
from email.parser import HeaderParser

from relayd.policy.addresses import AddressError, check_address

MESSAGE_TYPES = frozenset({"message/rfc822", "message/global"})
HEADER_TYPES = frozenset({"text/rfc822-headers", "message/global-headers"})
_FOLD = re.compile(r"\r?\n[ \t]+")
_INLINE_ID = re.compile(r"^(Message-ID|X-Relayd-ID):[ \t]*(\S+)", re.IGNORECASE | re.MULTILINE)
_ADDRESS_WRAPPING = "<>\"':;,.()[] \t"


def parts(message: Message) -> Iterator[Message]:
    """Every part, depth first, without descending into returned messages (a bounced
    bounce carries someone else's report inside)."""
    yield message
    if message.get_content_maintype() == "message":
        return
    payload = message.get_payload()
    if isinstance(payload, list):
        for part in payload:
            if isinstance(part, Message):
                yield from parts(part)


def plain_text(message: Message) -> str | None:
    """The first text/plain part outside returned messages, decoded, LF line ends."""
    part = next((p for p in parts(message) if p.get_content_type() == "text/plain"), None)
    if part is None:
        return None
    data = part.get_payload(decode=True)
    if not isinstance(data, bytes):
        return None
    return data.decode(codec(part.get_content_charset()), "replace").replace("\r\n", "\n")


def original_headers(message: Message) -> Message | None:
    """The headers of the returned original (message/rfc822 or text/rfc822-headers)."""
    for part in parts(message):
        ctype = part.get_content_type()
        if ctype in MESSAGE_TYPES:
            payload = part.get_payload()
            if isinstance(payload, list) and payload:
                inner = payload[0]
                return inner if isinstance(inner, Message) else None
        elif ctype in HEADER_TYPES:
            data = part.get_payload(decode=True)
            if isinstance(data, bytes):
                return inline_headers(data.decode("utf-8", "replace"))
    return None


def inline_headers(text: str) -> Message:
    """Headers from text that starts (after blank lines) with a header block."""
    return HeaderParser(policy=policy.compat32).parsestr(text.lstrip("\r\n"))


def inline_ids(text: str) -> tuple[str | None, str | None]:
    """(Message-ID, X-Relayd-ID) of an original quoted in a free-text bounce (qmail's
    "Below this line is a copy of the message", Sendmail's transcript): the first of each."""
    found: dict[str, str] = {}
    for match in _INLINE_ID.finditer(text):
        found.setdefault(match.group(1).lower(), match.group(2))
    return found.get("message-id"), found.get("x-relayd-id")


def header(headers: Message | None, name: str) -> str | None:
    if headers is None:
        return None
    value = headers.get(name)
    if value is None:
        return None
    return one_line(str(value)) or None


def subject(headers: Message | None) -> str | None:
    """The original's Subject for people: encoded words decoded, raw 8-bit read as UTF-8."""
    value = headers.get("Subject") if headers is not None else None
    if value is None:
        return None
    try:
        chunks = decode_header(value)
    except HeaderParseError:
        return one_line(str(value)) or None
    text = "".join(
        chunk.decode(codec(charset), "replace") if isinstance(chunk, bytes) else chunk
        for chunk, charset in chunks
    )
    return one_line(text) or None


def codec(charset: str | None) -> str:
    if not charset or charset == "unknown-8bit":
        return "utf-8"
    try:
        return codecs.lookup(charset).name
    except LookupError:
        return "utf-8"


def usable_address(value: str) -> str | None:
    """The mailbox in `<bob@example.net>`, `"bob@example.net":` or `rfc822;bob@...`, or None
    when what is left is not an address (a word of the text, a file or pipe name)."""
    candidate = value.strip().strip(_ADDRESS_WRAPPING)
    if candidate.lower().startswith(("rfc822;", "mailto:")):
        candidate = candidate[7:].strip().strip(_ADDRESS_WRAPPING)
    try:
        return check_address(candidate, utf8=True)
    except AddressError:
        return None


def one_line(value: str) -> str:
    return _FOLD.sub(" ", value).strip()
