"""RFC 3464 delivery status notifications that relayd makes; pure (no I/O, time passed in).

A DSN is relayd's own message, so the stdlib `email` package builds its headers and its
human-readable part. The app's message is never re-serialised (policy/headers.py says why): its
header block (or, for RET=FULL, the whole message) goes into the report as the bytes intake
stored, so the boundary is chosen to occur nowhere in them and the multipart is joined here.

Reading the reports other systems send (Gmail, Microsoft 365, Postfix, Exim) is
dsn/parse.py. `is_dsn` is here because the side that makes reports needs it: it is the
loop check before a DSN is generated.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from email import policy
from email.message import EmailMessage, Message, MIMEPart
from email.parser import BytesHeaderParser
from typing import Literal

from relayd.dsn.params import original_recipient
from relayd.policy.headers import find_message_id, header_block, header_text
from relayd.units import format_rfc5322

Action = Literal["failed", "delayed", "delivered", "relayed", "expanded"]
ACTIONS: frozenset[str] = frozenset({"failed", "delayed", "delivered", "relayed", "expanded"})

# The header relayd puts on every report it makes: a DSN is never generated about a DSN.
DSN_MARKER = "X-Relayd-DSN"
SUBJECT_FAILED = "Undelivered Mail Returned to Sender"
SUBJECT_DELAYED = "Delayed Mail (still being retried)"
SUBJECT_DELIVERED = "Successful Mail Delivery Report"
# RET=FULL returns the whole message only up to this size; above it, the headers (and the
# text says so). Postfix stops at 50 kB (bounce_size_limit) because its bounces go back to
# strangers; relayd's go to the operator's bounce mailbox, where attachments help.
FULL_RETURN_LIMIT = 1_000_000

_STATUS = re.compile(r"^([245])\.(\d{1,3})\.(\d{1,3})$")
_LONE_LF = re.compile(rb"(?<!\r)\n")
_SMTP = policy.SMTP


@dataclass(frozen=True)
class DsnRecipient:
    """One recipient of a report relayd makes.

    `diagnostic` is the remote server's reply as text ("550 5.1.1 <bob@...>: user unknown")
    and becomes `Diagnostic-Code: smtp; ...`; `original_recipient` is the ORCPT value already
    decoded from xtext ("rfc822;bob@example.com"), or None when the app gave none.
    """

    address: str
    action: Action
    status: str
    diagnostic: str | None = None
    remote_mta: str | None = None
    original_recipient: str | None = None
    last_attempt: float | None = None
    will_retry_until: float | None = None

    def __post_init__(self) -> None:
        if self.action not in ACTIONS:
            raise ValueError(f"not a DSN action: {self.action!r}")
        if not _STATUS.match(self.status):
            raise ValueError(f"not an RFC 3463 status: {self.status!r}")


def status_for(code: int, enhanced: str | None, *, expired: bool = False) -> str:
    """The RFC 3463 status for a reply: its enhanced code, else the class of its basic code.

    A message that expired (max_lifetime) without an enhanced code gets 4.4.7, "delivery
    time expired" (RFC 3463 3.5); code 0 (the reply relayd makes up for a transport error)
    otherwise gets 4.4.1, "no answer from host".
    """
    if enhanced and _STATUS.match(enhanced):
        return enhanced
    if expired:
        return "4.4.7"
    if 200 <= code < 300:
        return "2.0.0"
    if 400 <= code < 500:
        return "4.0.0"
    return "5.0.0" if code >= 500 else "4.4.1"


def is_dsn(raw_headers: bytes) -> bool:
    """True when relayd must not generate a DSN about this message (loop prevention).

    A report (ours carries X-Relayd-DSN; anyone's is multipart/report or names
    X-Failed-Recipients) or an automatic reply (`Auto-Submitted: auto-replied`, RFC 3834).
    `auto-generated` alone does not count: cron mail and ERP notices carry it, and their
    failures must reach the bounce mailbox. The null sender is the caller's check.
    """
    headers = BytesHeaderParser(policy=policy.compat32).parsebytes(header_block(raw_headers))
    if headers.get(DSN_MARKER) is not None or headers.get("X-Failed-Recipients") is not None:
        return True
    if headers.get_content_type() == "multipart/report":
        return True
    auto = str(headers.get("Auto-Submitted", "")).strip().lower()
    return auto.startswith("auto-replied")


def build_dsn(
    original: bytes,
    recipients: Sequence[DsnRecipient],
    *,
    reporting_mta: str,
    arrival_date: float,
    now: float,
    to: str,
    from_addr: str | None = None,
    envelope_id: str | None = None,
    return_full: bool = False,
    message_id: str | None = None,
    queue_id: str | None = None,
) -> bytes:
    """One RFC 3464 report about `original` covering `recipients` (RFC 6522 multipart/report).

    From `from_addr` (default `Mail Delivery System <MAILER-DAEMON@reporting_mta>`) to `to`
    (the bounce mailbox or the envelope sender). The subject follows the most serious action:
    failed, else delayed, else delivered. `envelope_id` is the ENVID, decoded from xtext.
    `message_id` defaults to one derived from the content (the report is a pure function).
    """
    if not recipients:
        raise ValueError("a DSN reports on at least one recipient")
    original = _LONE_LF.sub(b"\r\n", original)
    headers = header_block(original) + b"\r\n"
    full = return_full and len(original) <= FULL_RETURN_LIMIT
    returned = original if full else headers
    digest = hashlib.sha256(original + repr((now, to, recipients)).encode()).hexdigest()
    boundary = _boundary(digest, returned)
    original_id = header_text(find_message_id(headers) or "")
    text = _human_text(reporting_mta, headers, original_id, queue_id, recipients, arrival_date)
    if return_full and not full:
        text += "\nThe message was too large to return in full; its headers are attached.\n"
    status = _status_part(reporting_mta, envelope_id, arrival_date, recipients)
    parts = [_text_part(text), status, _original_part(returned, full)]
    head = _top_headers(
        subject=_subject(recipients),
        from_addr=from_addr or f"Mail Delivery System <MAILER-DAEMON@{reporting_mta}>",
        to=to,
        now=now,
        message_id=message_id or f"<relayd.dsn.build.{digest[:20]}@{reporting_mta}>",
        original_id=original_id,
        boundary=boundary,
        eight_bit=not all(part.isascii() for part in parts),
    )
    body = [b"This is a MIME-encapsulated message.\r\n"]
    for part in parts:
        body.append(b"\r\n--" + boundary.encode() + b"\r\n" + part)
    body.append(b"\r\n--" + boundary.encode() + b"--\r\n")
    return head + b"\r\n" + b"".join(body)


def _boundary(digest: str, returned: bytes) -> str:
    for n in range(100):
        boundary = f"relayd-dsn-{digest[n : n + 24]}"
        if boundary.encode() not in returned:
            return boundary
    raise ValueError("no MIME boundary that the returned message does not contain")


def _subject(recipients: Sequence[DsnRecipient]) -> str:
    actions = {r.action for r in recipients}
    if "failed" in actions:
        return SUBJECT_FAILED
    return SUBJECT_DELAYED if "delayed" in actions else SUBJECT_DELIVERED


def _top_headers(
    *,
    subject: str,
    from_addr: str,
    to: str,
    now: float,
    message_id: str,
    original_id: str | None,
    boundary: str,
    eight_bit: bool,
) -> bytes:
    head = EmailMessage(policy=_SMTP)
    head["From"] = header_text(from_addr)
    head["To"] = header_text(to)
    head["Subject"] = subject
    head["Date"] = format_rfc5322(now)
    head["Message-ID"] = header_text(message_id)
    if original_id:
        head["In-Reply-To"] = original_id
        head["References"] = original_id
    head["Auto-Submitted"] = "auto-replied"
    head[DSN_MARKER] = "yes"
    head["MIME-Version"] = "1.0"
    head["Content-Type"] = "multipart/report"
    head.set_param("report-type", "delivery-status")
    head.set_param("boundary", boundary)
    if eight_bit:
        head["Content-Transfer-Encoding"] = "8bit"
    return b"".join(_SMTP.fold_binary(name, value) for name, value in head.items())


def _text_part(text: str) -> bytes:
    part = MIMEPart(policy=_SMTP)
    part.set_content(text, charset="utf-8", cte="quoted-printable")
    part["Content-Description"] = "Notification"  # after set_content, which clears Content-*
    return part.as_bytes()


def _status_part(
    reporting_mta: str,
    envelope_id: str | None,
    arrival_date: float,
    recipients: Sequence[DsnRecipient],
) -> bytes:
    """The message/delivery-status body (RFC 3464 2.1): per-message fields, then one block
    per recipient. Any non-ASCII field makes it message/global-delivery-status (RFC 6533)."""
    blocks = [[f"Reporting-MTA: dns; {header_text(reporting_mta)}"]]
    if envelope_id:
        blocks[0].append(f"Original-Envelope-Id: {header_text(envelope_id)}")
    blocks[0].append(f"Arrival-Date: {format_rfc5322(arrival_date)}")
    blocks.extend(_recipient_block(r) for r in recipients)
    body = "\r\n\r\n".join("\r\n".join(_fold(line) for line in block) for block in blocks)
    is_global = not body.isascii()
    kind = "message/global-delivery-status" if is_global else "message/delivery-status"
    lines = ["Content-Description: Delivery report", f"Content-Type: {kind}"]
    if is_global:
        lines.append("Content-Transfer-Encoding: 8bit")
    return ("\r\n".join(lines) + "\r\n\r\n" + body + "\r\n").encode("utf-8")


def _recipient_block(r: DsnRecipient) -> list[str]:
    lines = []
    if r.original_recipient:
        orcpt = header_text(original_recipient(r.original_recipient))
        lines.append(f"Original-Recipient: {orcpt}")
    address = header_text(r.address)
    lines.append(f"Final-Recipient: {'rfc822' if address.isascii() else 'utf-8'}; {address}")
    lines += [f"Action: {r.action}", f"Status: {r.status}"]
    if r.remote_mta:
        lines.append(f"Remote-MTA: dns; {header_text(r.remote_mta)}")
    if r.diagnostic:
        lines.append(f"Diagnostic-Code: smtp; {header_text(r.diagnostic)}")
    if r.last_attempt is not None:
        lines.append(f"Last-Attempt-Date: {format_rfc5322(r.last_attempt)}")
    if r.will_retry_until is not None and r.action == "delayed":
        lines.append(f"Will-Retry-Until: {format_rfc5322(r.will_retry_until)}")
    return lines


def _original_part(returned: bytes, full: bool) -> bytes:
    if full:
        lines = ["Content-Description: Undelivered Message", "Content-Type: message/rfc822"]
    else:
        lines = [
            "Content-Description: Undelivered Message Headers",
            "Content-Type: text/rfc822-headers",
        ]
    if not returned.isascii():
        lines.append("Content-Transfer-Encoding: 8bit")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + returned


def _human_text(
    reporting_mta: str,
    headers: bytes,
    original_id: str | None,
    queue_id: str | None,
    recipients: Sequence[DsnRecipient],
    arrival_date: float,
) -> str:
    parsed = BytesHeaderParser(policy=policy.default).parsebytes(headers)
    failed = sum(r.action == "failed" for r in recipients)
    lines = [f"This is the mail system at {reporting_mta} (relayd).", ""]
    if failed:
        lines.append(
            f"Your message could not be delivered to {failed} of its recipients; "
            "relayd has given up on them."
        )
    else:
        lines.append("This is a report on the delivery of your message; nothing is lost.")
    lines += ["", f"  Subject:    {_safe_header(parsed, 'Subject') or '(none)'}"]
    lines.append(f"  Message-ID: {original_id or '(none)'}")
    if queue_id:
        lines.append(f"  Queue ID:   {queue_id}")
    lines += [f"  Received:   {format_rfc5322(arrival_date)}", ""]
    for r in recipients:
        lines.extend(_recipient_text(r))
    lines += ["The original message's headers are attached.", ""]
    return "\n".join(lines)


def _recipient_text(r: DsnRecipient) -> Iterable[str]:
    what = {
        "failed": "failed permanently",
        "delayed": "delayed; relayd is still trying",
        "delivered": "delivered",
        "relayed": "relayed to a system that sends no reports",
        "expanded": "delivered and forwarded",
    }[r.action]
    yield f"<{header_text(r.address)}>: {what} ({r.status})"
    if r.diagnostic:
        where = f"The server {header_text(r.remote_mta)} said" if r.remote_mta else "The reason"
        yield f"    {where}: {header_text(r.diagnostic)}"
    if r.action == "delayed" and r.will_retry_until is not None:
        until = format_rfc5322(r.will_retry_until)
        yield f"    relayd keeps trying until {until}; no action is needed yet."
    advice = _advice(r)
    if advice:
        yield f"    What to do: {advice}"
    yield ""


def _advice(r: DsnRecipient) -> str | None:
    if r.action != "failed":
        return None
    if r.status.startswith("5.1."):
        return "check the address for typos; the recipient's server does not know it."
    if r.status == "5.2.2" or r.status.startswith("4.2.2"):
        return "the recipient's mailbox is full; reach them another way."
    if r.status.startswith("5.7."):
        return (
            "the recipient's server refused the message by policy (spam filtering, "
            "SPF/DKIM/DMARC, or a block list); ask its administrator, or check the "
            "sending domain's DNS records."
        )
    if r.status.startswith("4."):
        return "relayd retried until the message expired; the recipient's server kept failing."
    return None


def _safe_header(headers: Message, name: str) -> str | None:
    try:
        value = headers.get(name)
    except (ValueError, TypeError, IndexError):  # a malformed header in the app's message
        return None
    return header_text(str(value)) if value is not None else None


def _fold(line: str, width: int = 78) -> str:
    """Fold a `Name: value` line at spaces (RFC 5322 2.2.3), continuation indented."""
    if len(line) <= width:
        return line
    out, current = [], ""
    for word in line.split(" "):
        if current and len(current) + 1 + len(word) > width:
            out.append(current)
            current = "    " + word
        else:
            current = f"{current} {word}" if current else word
    out.append(current)
    return "\r\n".join(out)
