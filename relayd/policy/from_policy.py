"""An upstream's from_policy, applied to the raw message bytes at delivery; pure.

- "keep": the message goes as the app wrote it.
- "bare": each From header loses its display name: `From: "The Dental Practice"
  <tdp@practice.example>` becomes `From: tdp@practice.example`. Providers' anti-spoofing
  distrusts display names that differ from the account's.
- "rewrite": From becomes the account address (the upstream's username), keeping a plain
  display name; the original From goes to a new Reply-To, unless the message has one, so
  replies still reach the app's address. For providers that refuse other From addresses.

Only header fields are touched, on the bytes: the From field is replaced and a Reply-To
inserted after it; every other byte (the other headers, their folding, the body) is kept.
The message is never re-serialised with the `email` package (policy/headers.py says why).

Applied at delivery time, not at intake: the queue keeps what the app sent (DSNs and
`relayd queue show` report the original), and the policy of the upstream that actually
sends applies, including after a configuration change to queued mail.

DKIM: an app that DKIM-signs its mail (h= almost always includes From) has that signature
broken by "bare" or "rewrite". The providers these policies are for sign outgoing mail with
their own domain's key; an app's own signature is then worthless anyway.
"""

from __future__ import annotations

import re
from email.utils import getaddresses

_HEADER_END = re.compile(rb"\r?\n\r?\n")
_PLAIN_NAME = re.compile(r"^[A-Za-z0-9 !#$%&'*+/=?^_`{|}~.,()-]+$")


def _split_head(message: bytes) -> tuple[list[list[bytes]], bytes, bytes]:
    """(header fields as lists of lines with their endings, the rest, the line ending)."""
    match = _HEADER_END.search(message)
    if match is None:
        head, rest = message, b""
    else:
        first_end = match.start() + (
            2 if message[match.start() : match.start() + 1] == b"\r" else 1
        )
        head, rest = message[:first_end], message[first_end:]
    eol = b"\r\n" if b"\r\n" in head else b"\n"
    fields: list[list[bytes]] = []
    for line in head.splitlines(keepends=True):
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1].append(line)
        else:
            fields.append([line])
    return fields, rest, eol


def _name(field: list[bytes]) -> bytes:
    return field[0].split(b":", 1)[0].strip().lower()


def _value(field: list[bytes]) -> str:
    """The field's value, unfolded, as text (undecodable bytes kept as surrogates)."""
    raw = b"".join(field).split(b":", 1)[1] if b":" in field[0] else b""
    unfolded = re.sub(rb"\r?\n(?=[ \t])", b"", raw).rstrip(b"\r\n")
    return unfolded.decode("utf-8", "surrogateescape").strip()


def _mailboxes(field: list[bytes]) -> list[tuple[str, str]]:
    """(display name, address) of each mailbox with an @; empty when unparseable."""
    return [(name, addr) for name, addr in getaddresses([_value(field)]) if "@" in addr]


def _line(name: str, value: str, eol: bytes) -> list[bytes]:
    return [f"{name}: {value}".encode("utf-8", "surrogateescape") + eol]


def bare_from(message: bytes) -> bytes:
    """Each From field with its display names (and comments) dropped."""
    fields, rest, eol = _split_head(message)
    changed = False
    for index, field in enumerate(fields):
        if _name(field) == b"from" and (boxes := _mailboxes(field)):
            new = _line("From", ", ".join(addr for _, addr in boxes), eol)
            changed = changed or new != field
            fields[index] = new
    return b"".join(line for field in fields for line in field) + rest if changed else message


def rewrite_from(message: bytes, account: str) -> bytes:
    """From := the account (a plain display name kept); the original From to Reply-To."""
    fields, rest, eol = _split_head(message)
    froms = [i for i, field in enumerate(fields) if _name(field) == b"from"]
    boxes = _mailboxes(fields[froms[0]]) if froms else []
    if len(boxes) == 1 and boxes[0][1].lower() == account.lower():
        return message  # already the account
    name = boxes[0][0] if len(boxes) == 1 else ""
    display = name if _PLAIN_NAME.match(name) and "@" not in name else ""
    value = f'"{display}" <{account}>' if display else account
    has_reply_to = any(_name(field) == b"reply-to" for field in fields)
    out: list[list[bytes]] = []
    for index, field in enumerate(fields):
        if index not in froms:
            out.append(field)
        elif index == froms[0]:
            out.append(_line("From", value, eol))
            if not has_reply_to:
                original = b"".join(field).split(b":", 1)[1]
                out.append([b"Reply-To:" + original + (b"" if original.endswith(b"\n") else eol)])
        # a second From field (malformed mail) is dropped: it would undo the rewrite
    if not froms:
        out.insert(0, _line("From", account, eol))
    return b"".join(line for field in out for line in field) + rest


def apply_from_policy(message: bytes, policy: str, account: str | None) -> bytes:
    """`message` as `policy` ("keep", "bare", "rewrite" with the account address) wants it."""
    if policy == "bare":
        return bare_from(message)
    if policy == "rewrite" and account:
        return rewrite_from(message, account)
    return message


def envelope_sender(mail_from: str, account: str | None, use_account: bool) -> str:
    """MAIL FROM for the upstream: the account when the provider requires it (the null
    sender of a bounce stays null)."""
    if use_account and account and mail_from:
        return account
    return mail_from
