"""Trace and identity headers on the raw message bytes; pure.

relayd never re-serialises an app's message with the `email` package (it rewrites bodies
and has had header-injection bugs): it only reads the header block and prepends lines.
"""

from __future__ import annotations

import re

from relayd.units import format_rfc5322

_HEADER_END = re.compile(rb"\r?\n\r?\n")
_MESSAGE_ID = re.compile(rb"^message-id:[ \t]*(.*(?:\r?\n[ \t].*)*)", re.IGNORECASE | re.MULTILINE)
_DATE = re.compile(rb"^date:", re.IGNORECASE | re.MULTILINE)
_CLEAN = re.compile(r"[^\x21-\x7e]")
# What may not stand in a header value relayd writes: the C0 and C1 controls, DEL, and the
# other line breaks of str.splitlines() (U+2028, U+2029), which the `email` package refuses.
_UNSAFE = "\x00-\x1f\x7f-\x9f\u2028\u2029"
_UNSAFE_RUN = re.compile(f" *[{_UNSAFE}][ {_UNSAFE}]*")
# Lone surrogates: what surrogateescape makes of invalid UTF-8, which no codec writes back.
_SURROGATE = re.compile(r"[\ud800-\udfff]")


def header_block(body: bytes) -> bytes:
    """The header section (up to the first empty line), or everything if there is none."""
    match = _HEADER_END.search(body)
    return body[: match.start()] if match else body


def find_message_id(headers: bytes) -> str | None:
    """The Message-ID value (unfolded, as text), or None when the header is absent."""
    match = _MESSAGE_ID.search(headers)
    if not match:
        return None
    value = re.sub(rb"\r?\n[ \t]+", b" ", match.group(1)).strip()
    return value.decode("utf-8", "replace") or None


def encodable(text: str) -> str:
    """`text` as UTF-8 can write it: a lone surrogate (invalid bytes an app or upstream sent)
    becomes U+FFFD, as a reader shows it."""
    return _SURROGATE.sub("\ufffd", text)


def header_text(value: str) -> str:
    """App or upstream text made safe for a header (or one-line field) relayd builds.

    Every run of controls and line breaks becomes one space, so that no value an app sends
    can make the `email` package refuse a report about it, or split a line; the rest (the
    non-ASCII text a person reads) stays as it was.
    """
    return _UNSAFE_RUN.sub(" ", encodable(value)).strip()


def has_date(headers: bytes) -> bool:
    return _DATE.search(headers) is not None


def received_header(
    *,
    helo: str,
    client_ip: str,
    hostname: str,
    protocol: str,
    queue_id: str,
    recipients: tuple[str, ...],
    at: float,
) -> bytes:
    """An RFC 5321 4.4 trace line; `for` only with a single recipient (privacy)."""
    helo_text = _CLEAN.sub("", helo)[:255] or "unknown"
    lines = [
        f"Received: from {helo_text} ([{client_ip}])",
        f"\tby {hostname} (relayd) with {protocol} id {queue_id}",
    ]
    stamp = format_rfc5322(at)
    if len(recipients) == 1:
        lines.append(f"\tfor <{recipients[0]}>; {stamp}")
    else:
        lines[-1] += f"; {stamp}"
    return ("\r\n".join(lines) + "\r\n").encode("utf-8")


def prepare(
    body: bytes,
    *,
    received: bytes,
    queue_id: str,
    hostname: str,
    at: float,
    relayd_id: bool = False,
) -> tuple[bytes, str]:
    """Prepend Received (and Message-ID/Date when missing); return the bytes and the Message-ID.

    The Message-ID relayd adds is recognisable (`<relayd.QUEUEID@host>`) so a late bounce
    can be matched back to the queued message; when the app set its own, `relayd_id` adds
    `X-Relayd-ID: QUEUEID` instead (a report returning the headers carries it).
    """
    headers = header_block(body)
    message_id = find_message_id(headers)
    added = [received]
    if message_id is None:
        message_id = f"<relayd.{queue_id}@{hostname}>"
        added.append(f"Message-ID: {message_id}\r\n".encode())
    elif relayd_id:
        added.append(f"X-Relayd-ID: {queue_id}\r\n".encode())
    if not has_date(headers):
        added.append(f"Date: {format_rfc5322(at)}\r\n".encode())
    return b"".join(added) + body, message_id
