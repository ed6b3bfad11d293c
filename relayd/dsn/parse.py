"""Read the bounce reports other mail systems send; pure (no I/O).

Recognised: RFC 3464 `multipart/report; report-type=delivery-status` (Gmail's "Delivery
Status Notification (Failure)", Microsoft 365's "Undeliverable:" NDRs, Postfix's
"Undelivered Mail Returned to Sender", modern Exim), Exim's classic plain-text bounce ("This
message was created automatically by mail delivery software", the original after "------
This is a copy of the message"), and as a last resort any message naming
`X-Failed-Recipients`. Everything else (replies, out-of-office notes, read receipts) is not
a bounce: `parse_dsn` returns None and the caller leaves it alone.

Which relayd message a report is about comes from the returned original (its Message-ID,
relayd's `<relayd.QUEUEID@host>`, or X-Relayd-ID), else Gmail's X-Original-Message-ID,
else the report's In-Reply-To (Microsoft and Gmail set it to the original's Message-ID).
"""

from __future__ import annotations

import codecs
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from email import policy
from email.errors import HeaderParseError
from email.header import decode_header
from email.message import Message
from email.parser import BytesHeaderParser, BytesParser, HeaderParser

from relayd.dsn.build import ACTIONS, is_dsn
from relayd.errors import RelaydError
from relayd.policy.headers import header_block

__all__ = [
    "BounceParseError",
    "ParsedDsn",
    "ParsedRecipient",
    "might_be_bounce",
    "parse_dsn",
    "relayd_queue_id",
]

_STATUS_TYPES = frozenset({"message/delivery-status", "message/global-delivery-status"})
_MESSAGE_TYPES = frozenset({"message/rfc822", "message/global"})
_HEADER_TYPES = frozenset({"text/rfc822-headers", "message/global-headers"})
_STATUS = re.compile(r"\b([245])\.(\d{1,3})\.(\d{1,3})\b")
_REPLY = re.compile(r"\b([245])\d\d[ -]")
_RELAYD_MESSAGE_ID = re.compile(r"^<relayd\.([0-9A-Z]+)@[^>]+>$")
_FOLD = re.compile(r"\r?\n[ \t]+")
_BLOCK_SPLIT = re.compile(r"\r?\n[ \t]*\r?\n")
_EXIM_MARK = "This message was created automatically by mail delivery software"
_EXIM_COPY = re.compile(r"^-{3,} This is a copy of the message.*$", re.MULTILINE)
_EXIM_SECTIONS = (
    (re.compile(r"following address\(es\) failed:[ \t]*$", re.MULTILINE), "failed"),
    (re.compile(r"not yet been delivered (?:is|are):[ \t]*$", re.MULTILINE), "delayed"),
)
_EXIM_HOST = re.compile(r"^host (\S+?)\.? \[")
_BOUNCE_SENDER = re.compile(r"mailer-daemon|postmaster|mail delivery", re.IGNORECASE)
_BOUNCE_SUBJECT = re.compile(
    r"^(undeliverable|undelivered mail|delivery status notification|mail delivery failed"
    r"|delayed mail|returned mail|failure notice|delivery failure|warning: message)",
    re.IGNORECASE,
)
_DEFAULT_STATUS = {"failed": "5.0.0", "delayed": "4.0.0"}


class BounceParseError(RelaydError):
    """The message looks like a bounce report but cannot be read as one.

    Defined here rather than in errors.py while the bounce work is wired in; it moves there
    when errors.py is free.
    """


@dataclass(frozen=True)
class ParsedRecipient:
    """One recipient of a report someone else made, as its delivery-status block says."""

    final_recipient: str
    action: str
    status: str
    diagnostic: str | None = None
    remote_mta: str | None = None
    original_recipient: str | None = None


@dataclass(frozen=True)
class ParsedDsn:
    """What a bounce report says: which recipients, what happened, and about which message.

    `original_message_id` and `original_relayd_id` come from the returned message (or its
    headers) inside the report; `kind` names the format it was read from ("rfc3464", "exim",
    "x-failed-recipients").
    """

    recipients: tuple[ParsedRecipient, ...]
    original_message_id: str | None = None
    original_relayd_id: str | None = None
    reporting_mta: str | None = None
    envelope_id: str | None = None
    subject: str | None = None
    kind: str = "rfc3464"

    @property
    def queue_id(self) -> str | None:
        """The relayd queue id of the original: X-Relayd-ID, else from `<relayd.ID@host>`."""
        if self.original_relayd_id:
            return self.original_relayd_id
        return relayd_queue_id(self.original_message_id)

    @property
    def failed(self) -> tuple[ParsedRecipient, ...]:
        return tuple(r for r in self.recipients if r.action == "failed")


def relayd_queue_id(message_id: str | None) -> str | None:
    """The queue id in a Message-ID relayd made (`<relayd.QUEUEID@host>`, headers.prepare)."""
    if not message_id:
        return None
    match = _RELAYD_MESSAGE_ID.match(message_id.strip())
    return match.group(1) if match else None


def might_be_bounce(raw_headers: bytes) -> bool:
    """A cheap look at the headers: could `parse_dsn` recognise this message?

    Errs towards yes (an out-of-office reply passes); the poller fetches the whole message
    only when it does, so a large ordinary message is never downloaded.
    """
    if is_dsn(raw_headers):
        return True
    headers = BytesHeaderParser(policy=policy.compat32).parsebytes(header_block(raw_headers))
    sender = f"{headers.get('From', '')} {headers.get('Return-Path', '')}"
    subject = _one_line(str(headers.get("Subject", "")))
    return bool(_BOUNCE_SENDER.search(sender) or _BOUNCE_SUBJECT.match(subject))


def parse_dsn(raw: bytes) -> ParsedDsn | None:
    """The report in `raw`, or None when `raw` is not a bounce.

    Raises BounceParseError for a message that is a bounce by its structure but names no
    recipient (or cannot be parsed at all).
    """
    try:
        message = BytesParser(policy=policy.compat32).parsebytes(raw)
    except Exception as exc:  # the parser is lenient: whatever it raises means garbage
        raise BounceParseError(f"unreadable message: {exc!r}") from exc
    parsed = _parse_report(message) or _parse_exim(message) or _parse_failed_header(message)
    if parsed is not None and not parsed.recipients:
        raise BounceParseError(f"a {parsed.kind} bounce that names no recipient")
    return parsed


def _parse_report(message: Message) -> ParsedDsn | None:
    if message.get_content_type() != "multipart/report":
        return None
    report_type = str(message.get_param("report-type", "delivery-status")).lower()
    if report_type not in ("delivery-status", "global-delivery-status"):
        return None  # read receipts (MDN), abuse reports (ARF): not bounces
    status = next((p for p in _parts(message) if p.get_content_type() in _STATUS_TYPES), None)
    if status is None:
        raise BounceParseError("a delivery-status report without a delivery-status part")
    blocks = _status_blocks(status)
    per_message = next((b for b in blocks if "final-recipient" not in b), {})
    recipients = tuple(_recipient(b) for b in blocks if "final-recipient" in b)
    original = _original_headers(message)
    message_id = _header(original, "Message-ID") or per_message.get("x-original-message-id")
    return ParsedDsn(
        recipients=recipients,
        original_message_id=message_id or _header(message, "In-Reply-To"),
        original_relayd_id=_header(original, "X-Relayd-ID"),
        reporting_mta=_typed_value(per_message.get("reporting-mta")),
        envelope_id=per_message.get("original-envelope-id"),
        subject=_subject(original),
        kind="rfc3464",
    )


def _parse_exim(message: Message) -> ParsedDsn | None:
    text = _plain_text(message)
    if text is None or _EXIM_MARK not in text:
        return None
    copy = _EXIM_COPY.search(text)
    notice = text[: copy.start()] if copy else text
    original = _inline_headers(text[copy.end() :]) if copy else None
    recipients = tuple(_exim_recipients(notice)) or _failed_header(message)
    return ParsedDsn(
        recipients=recipients,
        original_message_id=_header(original, "Message-ID") or _header(message, "In-Reply-To"),
        original_relayd_id=_header(original, "X-Relayd-ID"),
        subject=_subject(original),
        kind="exim",
    )


def _parse_failed_header(message: Message) -> ParsedDsn | None:
    if message.get("X-Failed-Recipients") is None:
        return None
    original = _original_headers(message)
    return ParsedDsn(
        recipients=_failed_header(message),
        original_message_id=_header(original, "Message-ID") or _header(message, "In-Reply-To"),
        original_relayd_id=_header(original, "X-Relayd-ID"),
        subject=_subject(original),
        kind="x-failed-recipients",
    )


def _parts(message: Message) -> Iterator[Message]:
    """Every part, depth first, without descending into returned messages (a bounced
    bounce carries someone else's report inside)."""
    yield message
    if message.get_content_maintype() == "message":
        return
    payload = message.get_payload()
    if isinstance(payload, list):
        for part in payload:
            if isinstance(part, Message):
                yield from _parts(part)


def _status_blocks(part: Message) -> list[dict[str, str]]:
    """The field groups of a delivery-status body, names lower-cased, values unfolded."""
    payload = part.get_payload()
    if isinstance(payload, list):  # the stdlib splits message/delivery-status into blocks
        return [_fields(block.items()) for block in payload if isinstance(block, Message)]
    data = part.get_payload(decode=True)
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else str(payload)
    chunks = [chunk for chunk in _BLOCK_SPLIT.split(text.strip()) if chunk.strip()]
    return [_fields(HeaderParser(policy=policy.compat32).parsestr(c).items()) for c in chunks]


def _fields(items: Iterable[tuple[str, object]]) -> dict[str, str]:
    fields: dict[str, str] = {}
    for name, value in items:
        fields.setdefault(name.lower(), _one_line(str(value)))
    return fields


def _recipient(block: dict[str, str]) -> ParsedRecipient:
    diagnostic = _typed_value(block.get("diagnostic-code"))
    action = block.get("action", "").lower()
    status = _status(block.get("status"), diagnostic, action)
    if action not in ACTIONS:
        action = "failed" if status.startswith("5") else "delayed"
    return ParsedRecipient(
        final_recipient=_address(_typed_value(block["final-recipient"]) or ""),
        action=action,
        status=status,
        diagnostic=diagnostic,
        remote_mta=_host(_typed_value(block.get("remote-mta"))),
        original_recipient=block.get("original-recipient"),
    )


def _status(field: str | None, diagnostic: str | None, action: str) -> str:
    for text in (field, diagnostic):
        match = _STATUS.search(text or "")
        if match:
            return match.group(0)
    reply = _REPLY.search(diagnostic or "")
    if reply:
        return f"{reply.group(1)}.0.0"
    return {"delivered": "2.0.0", "relayed": "2.0.0", "expanded": "2.0.0"}.get(action, "5.0.0")


def _original_headers(message: Message) -> Message | None:
    """The headers of the returned original (message/rfc822 or text/rfc822-headers)."""
    for part in _parts(message):
        ctype = part.get_content_type()
        if ctype in _MESSAGE_TYPES:
            payload = part.get_payload()
            if isinstance(payload, list) and payload:
                inner = payload[0]
                return inner if isinstance(inner, Message) else None
        elif ctype in _HEADER_TYPES:
            data = part.get_payload(decode=True)
            if isinstance(data, bytes):
                return _inline_headers(data.decode("utf-8", "replace"))
    return None


def _inline_headers(text: str) -> Message:
    """Headers from text that starts (after blank lines) with a header block."""
    return HeaderParser(policy=policy.compat32).parsestr(text.lstrip("\r\n"))


def _plain_text(message: Message) -> str | None:
    part = next((p for p in _parts(message) if p.get_content_type() == "text/plain"), None)
    if part is None:
        return None
    data = part.get_payload(decode=True)
    if not isinstance(data, bytes):
        return None
    return data.decode(part.get_content_charset() or "utf-8", "replace").replace("\r\n", "\n")


def _exim_recipients(notice: str) -> Iterator[ParsedRecipient]:
    for pattern, action in _EXIM_SECTIONS:
        match = pattern.search(notice)
        if match:
            for address, details in _exim_items(notice[match.end() :]):
                yield _exim_recipient(address, details, action)
            return


def _exim_items(section: str) -> Iterator[tuple[str, list[str]]]:
    """(address, detail lines) for each `  address` line and the deeper lines below it."""
    address: str | None = None
    details: list[str] = []
    for line in section.splitlines():
        if not line.strip():
            continue
        if not line.startswith(" "):
            break  # the explanation after the list
        if line.startswith(("    ", "\t")) and address is not None:
            details.append(line.strip())
            continue
        if address is not None:
            yield address, details
        address, details = _address(line.split()[0]), []
    if address is not None:
        yield address, details


def _exim_recipient(address: str, details: list[str], action: str) -> ParsedRecipient:
    remote = next((m.group(1) for d in details if (m := _EXIM_HOST.match(d))), None)
    text = " ".join(d for d in details if not _EXIM_HOST.match(d))
    reply = _REPLY.search(text)
    diagnostic = text[reply.start() :] if reply else (text or None)
    enhanced = _STATUS.search(text)
    if enhanced:
        status = enhanced.group(0)
    else:
        status = f"{reply.group(1)}.0.0" if reply else _DEFAULT_STATUS[action]
    return ParsedRecipient(address, action, status, diagnostic, remote_mta=remote)


def _failed_header(message: Message) -> tuple[ParsedRecipient, ...]:
    value = _one_line(str(message.get("X-Failed-Recipients", "")))
    addresses = [_address(a) for a in value.split(",") if a.strip()]
    return tuple(ParsedRecipient(a, "failed", "5.0.0") for a in addresses)


def _header(headers: Message | None, name: str) -> str | None:
    if headers is None:
        return None
    value = headers.get(name)
    if value is None:
        return None
    return _one_line(str(value)) or None


def _subject(headers: Message | None) -> str | None:
    """The original's Subject for people: encoded words decoded, raw 8-bit read as UTF-8."""
    value = headers.get("Subject") if headers is not None else None
    if value is None:
        return None
    try:
        chunks = decode_header(value)
    except HeaderParseError:
        return _one_line(str(value)) or None
    text = "".join(
        chunk.decode(_codec(charset), "replace") if isinstance(chunk, bytes) else chunk
        for chunk, charset in chunks
    )
    return _one_line(text) or None


def _codec(charset: str | None) -> str:
    if not charset or charset == "unknown-8bit":
        return "utf-8"
    try:
        return codecs.lookup(charset).name
    except LookupError:
        return "utf-8"


def _typed_value(value: str | None) -> str | None:
    """`rfc822; bob@example.net` -> `bob@example.net` (RFC 3464 typed fields)."""
    if value is None:
        return None
    _, _, rest = value.partition(";")
    return (rest if rest else value).strip() or None


def _address(value: str) -> str:
    return value.strip().strip("<>:").strip()


def _host(value: str | None) -> str | None:
    """`mx.example.net. (192.0.2.1, the server for ...)` -> `mx.example.net`."""
    if not value:
        return None
    return value.split()[0].rstrip(".") or None


def _one_line(value: str) -> str:
    return _FOLD.sub(" ", value).strip()
