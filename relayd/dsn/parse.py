"""Read the bounce reports other mail systems send; pure (no I/O).

In order, the first that names a recipient wins:
1. an RFC 3464 delivery-status part (Gmail, Microsoft 365, Postfix, modern Exim, OpenSMTPD,
   Amazon SES/WorkMail ...), in a `multipart/report` or wrapped in a `multipart/mixed`;
2. Exim's plain-text bounce ("This message was created automatically by mail delivery
   software") and its variants, with X-Failed-Recipients saying which failed;
3. X-Failed-Recipients alone;
4. the free-text formats flufl.bounce's detectors know (dsn/freetext.py): qmail, Yahoo,
   Exchange 2003, Sendmail, GroupWise, Gmail's plain delay notices, appliances.
A `multipart/report` whose delivery-status part is missing or empty (Postfix's "Delivery
report unavailable") falls through to 2-4. Everything else (replies, out-of-office notes,
read receipts) is not a bounce: `parse_dsn` returns None and the caller leaves it alone.

Which relayd message a report is about comes from the returned original (its Message-ID,
relayd's `<relayd.QUEUEID@host>`, or X-Relayd-ID; in free text, the first such header line
quoted), else Gmail's X-Original-Message-ID, else the report's In-Reply-To.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from email import policy
from email.message import Message
from email.parser import BytesParser, HeaderParser

from relayd.dsn import freetext
from relayd.dsn.build import ACTIONS
from relayd.dsn.mime import (
    header,
    inline_headers,
    inline_ids,
    one_line,
    original_headers,
    parts,
    plain_text,
    subject,
    usable_address,
)
from relayd.dsn.parsed import BounceParseError, ParsedDsn, ParsedRecipient, relayd_queue_id
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
_BOUNCE_REPORTS = frozenset({"delivery-status", "global-delivery-status"})
_HEADER_FIELD = re.compile(rb"^([!-9;-~]+):[ \t]*(.*(?:\r?\n[ \t].*)*)", re.MULTILINE)
_BLOCK_SPLIT = re.compile(r"\r?\n[ \t]*\r?\n")
_BOUNCE_SENDER = re.compile(r"mailer-daemon|mailer_daemon|postmaster|mail delivery", re.I)
# Words of the subjects of bounces and delay notices, in English and a few other languages.
_BOUNCE_SUBJECT = re.compile(
    r"undeliver|undelivered|not delivered|could not be delivered|non.?deliver|non remis"
    r"|unzustellbar|delivery (?:status|failure|failed|notification|problem|report|has failed)"
    r"|mail delivery failed|failure notice|returned mail|delayed mail|warning: message"
    r"|permanent (?:delivery )?failure|user unknown|mail system error|delivery notification",
    re.IGNORECASE,
)
# flufl.bounce's heuristics read this much of a message: a bounce's notice is near the
# top, and a returned attachment of many megabytes must not cost seconds of regexes.
_HEURISTICS_LIMIT = 256 * 1024


def might_be_bounce(raw_headers: bytes) -> bool:
    """A cheap look at the headers: could `parse_dsn` recognise this message?

    Errs towards yes (an out-of-office reply passes); the poller fetches the whole message
    only when it does, so a large ordinary message is never downloaded. Anything relayd
    would not report on (`is_dsn`) passes; so does mail from a mailer daemon or postmaster,
    or with a subject bounces use. One pass of a regex over the header block: it runs on
    every message of the folder.
    """
    block = header_block(raw_headers)
    fields: dict[bytes, bytes] = {}
    for match in _HEADER_FIELD.finditer(block):
        fields.setdefault(match.group(1).lower(), match.group(2))
    if fields.keys() & {b"x-relayd-dsn", b"x-failed-recipients"}:
        return True
    if fields.get(b"content-type", b"").lower().lstrip().startswith(b"multipart/report"):
        return True
    if fields.get(b"auto-submitted", b"").strip().lower().startswith(b"auto-replied"):
        return True
    sender = (fields.get(b"from", b"") + b" " + fields.get(b"return-path", b"")).decode("latin-1")
    title = fields.get(b"subject", b"").decode("utf-8", "replace")
    if "=?" in title:
        title = subject(inline_headers(f"Subject: {title}\n\n")) or title
    return bool(_BOUNCE_SENDER.search(sender) or _BOUNCE_SUBJECT.search(title))


def parse_dsn(raw: bytes) -> ParsedDsn | None:
    """The report in `raw`, or None when `raw` is not a bounce.

    Raises BounceParseError (and nothing else) for a message that is a delivery report by
    its structure but names no recipient in any format, or cannot be parsed at all.
    """
    try:
        return _parse(raw)
    except BounceParseError:
        raise
    except Exception as exc:  # the stdlib parser is lenient: whatever it raises means garbage
        raise BounceParseError(f"unreadable message: {type(exc).__name__}: {exc}") from exc


def _parse(raw: bytes) -> ParsedDsn | None:
    message = BytesParser(policy=policy.compat32).parsebytes(raw)
    report = next((p for p in parts(message) if p.get_content_type() == "multipart/report"), None)
    if report is not None and _report_type(report) not in _BOUNCE_REPORTS:
        # A read receipt (MDN) or abuse report (ARF) is no bounce, unless its text is one
        # (appliances send bounces as disposition notifications).
        return _parse_text(message, plain_text(message) or "", raw, structural=False)
    status = next((p for p in parts(message) if p.get_content_type() in _STATUS_TYPES), None)
    if status is not None:
        standard = _parse_status(message, status)
        if standard.recipients:
            return standard
    structural = report is not None or status is not None
    parsed = _parse_text(message, plain_text(message) or "", raw, structural=structural)
    if parsed is None and structural:
        raise BounceParseError("a delivery-status report that names no recipient in any form")
    return parsed


def _report_type(report: Message) -> str:
    return str(report.get_param("report-type", "delivery-status")).lower()


def _parse_status(message: Message, status: Message) -> ParsedDsn:
    blocks = _status_blocks(status)
    per_message = next((b for b in blocks if "final-recipient" not in b), {})
    recipients = tuple(r for b in blocks if "final-recipient" in b if (r := _recipient(b)))
    original = original_headers(message)
    message_id = header(original, "Message-ID") or per_message.get("x-original-message-id")
    return ParsedDsn(
        recipients=recipients,
        original_message_id=message_id or header(message, "In-Reply-To"),
        original_relayd_id=header(original, "X-Relayd-ID"),
        reporting_mta=_typed_value(per_message.get("reporting-mta")),
        envelope_id=per_message.get("original-envelope-id"),
        subject=subject(original),
        kind="rfc3464",
    )


def _parse_text(message: Message, text: str, raw: bytes, *, structural: bool) -> ParsedDsn | None:
    """Exim's text, X-Failed-Recipients, then flufl.bounce's detectors; `structural` when
    the message is a report by its MIME structure."""
    original = original_headers(message)
    if freetext.is_exim(text):
        copy = freetext.EXIM_COPY.search(text)
        notice = text[: copy.start()] if copy else text
        if copy and original is None:
            original = inline_headers(text[copy.end() :])
        recipients, kind = freetext.exim_recipients(notice, message), "exim"
    else:
        recipients, kind = freetext.failed_header(message), "x-failed-recipients"
    if not recipients:
        if len(raw) > _HEURISTICS_LIMIT:
            message = BytesParser(policy=policy.compat32).parsebytes(raw[:_HEURISTICS_LIMIT])
        from_mailer = structural or bool(_BOUNCE_SENDER.search(header(message, "From") or ""))
        recipients = freetext.recognised_failures(message, text, from_mailer=from_mailer)
        kind = "text"
    if not recipients:
        return None
    message_id, relayd_id = header(original, "Message-ID"), header(original, "X-Relayd-ID")
    if original is None:
        message_id, relayd_id = inline_ids(text)
    return ParsedDsn(
        recipients=recipients,
        original_message_id=message_id or header(message, "In-Reply-To"),
        original_relayd_id=relayd_id,
        subject=subject(original),
        kind=kind,
    )


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
        fields.setdefault(name.lower(), one_line(str(value)))
    return fields


def _recipient(block: dict[str, str]) -> ParsedRecipient | None:
    """One recipient block, or None when it names no address. The address is the one
    relayd sent to: Original-Recipient (the RCPT TO, or ORCPT, the reporting MTA was given)
    when it is another rfc822 address than Final-Recipient (an alias's target or a
    mailbox's internal name, like `userx@sims-ms-daemon`), else Final-Recipient."""
    final = usable_address(_typed_value(block["final-recipient"]) or "")
    original = _rfc822(block.get("original-recipient"))
    address = original if original and original.lower() != (final or "").lower() else final
    if address is None:
        return None
    diagnostic = _typed_value(block.get("diagnostic-code"))
    action = block.get("action", "").lower()
    status = _status(block.get("status"), diagnostic, action)
    if action not in ACTIONS:  # "deliverable" (2.1.5 from a VRFY-like probe), misspellings
        action = {"2": "delivered", "4": "delayed"}.get(status[0], "failed")
    return ParsedRecipient(
        final_recipient=address,
        action=action,
        status=status,
        diagnostic=diagnostic,
        remote_mta=_host(_typed_value(block.get("remote-mta"))),
        original_recipient=block.get("original-recipient"),
    )


def _rfc822(value: str | None) -> str | None:
    kind, _, address = (value or "").partition(";")
    return usable_address(address) if kind.strip().lower() == "rfc822" else None


def _status(field: str | None, diagnostic: str | None, action: str) -> str:
    for text in (field, diagnostic):
        match = freetext.STATUS.search(text or "")
        if match:
            return match.group(0)
    reply = freetext.REPLY.search(diagnostic or "")
    if reply:
        return f"{reply.group(1)}.0.0"
    return {"delivered": "2.0.0", "relayed": "2.0.0", "expanded": "2.0.0"}.get(action, "5.0.0")


def _typed_value(value: str | None) -> str | None:
    """`rfc822; bob@example.net` -> `bob@example.net` (RFC 3464 typed fields)."""
    if value is None:
        return None
    _, _, rest = value.partition(";")
    return (rest if rest else value).strip() or None


def _host(value: str | None) -> str | None:
    """`mx.example.net. (192.0.2.1, the server for ...)` -> `mx.example.net`."""
    if not value:
        return None
    return value.split()[0].rstrip(".") or None
