"""Bounces that are not RFC 3464 reports: Exim's text, X-Failed-Recipients, and the
free-text formats of qmail, Yahoo, Exchange 2003, Sendmail, OpenSMTPD, GroupWise, Gmail's
plain delay notices and others, recognised by flufl.bounce's detectors; pure.

flufl.bounce (Mailman's bounce detector) is the well-kept collection of these heuristics:
relayd asks it only after its own RFC 3464 reader found nothing, keeps only what is a
mailbox address (policy/addresses.py), and takes its temporary failures as delays. The
status and diagnostic of a recipient come from the report's text where a line names the
address with a reply code, else 5.0.0 (failed) or 4.0.0 (delayed).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Iterator
from email.message import Message

from flufl.bounce import all_failures

from relayd.dsn.mime import header, one_line, usable_address
from relayd.dsn.parsed import ParsedRecipient

__all__ = ["EXIM_COPY", "exim_recipients", "failed_header", "is_exim", "recognised_failures"]

STATUS = re.compile(r"\b([245])\.(\d{1,3})\.(\d{1,3})\b")
REPLY = re.compile(r"\b([245])\d\d[ -]")
# Where the returned original starts in Exim's text (and GMX's, 1&1's, qmail's).
EXIM_COPY = re.compile(
    r"^-{2,} ?(?:This is a copy of the message|The header of the original message"
    r"|Below this line is a copy).*$",
    re.MULTILINE | re.IGNORECASE,
)
_EXIM_MARK = "This message was created automatically by mail delivery software"
_EXIM_SECTIONS = (
    (re.compile(r"following address(?:\(es\)|es)?\s+failed:[ \t]*$", re.MULTILINE), "failed"),
    (re.compile(r"not yet been delivered (?:is|are):[ \t]*$", re.MULTILINE), "delayed"),
)
_EXIM_HOST = re.compile(r"^host:? (\S+?)\.? \[[^\]]*\]:? ?")
# `<bob@example.net>: what the server said`, continued on indented lines (Postfix's text
# part, qmail, OpenSMTPD).
_ANGLE_ITEM = re.compile(r"^<([^<>\s]+)>:[ \t]*(.*(?:\n[ \t]+\S.*)*)", re.MULTILINE)
# "... to the following recipients:" and one address a line (Amazon WorkMail, appliances).
_LIST_HEAD = re.compile(
    r"following (?:recipient|address)(?:\(s\)|s|es|\(es\))?[^\n:]*:[ \t]*\n", re.IGNORECASE
)
_DEFAULT_STATUS = {"failed": "5.0.0", "delayed": "4.0.0"}
# A bounce names its recipients near the top; the rest is mostly the returned original.
_NOTICE_SCAN = 20_000

# flufl.bounce logs every detector it runs at INFO: noise in relayd's log.
logging.getLogger("flufl.bounce").setLevel(logging.WARNING)


def is_exim(text: str) -> bool:
    return _EXIM_MARK in text


def exim_recipients(notice: str, message: Message) -> tuple[ParsedRecipient, ...]:
    """The recipients Exim's text (or the GMX, 1&1, Zoho and MXLogic variants that write
    `"addr":` unindented) lists. X-Failed-Recipients, when present, says which failed: the
    text's lines then only add diagnostics."""
    by_address: dict[str, ParsedRecipient] = {}
    for recipient in _exim_listed(notice):  # MXLogic lists each address twice
        by_address.setdefault(recipient.final_recipient.lower(), recipient)
    listed = list(by_address.values())
    failed = failed_header(message)
    if not failed:
        return tuple(listed)
    delayed = [r for r in listed if r.action == "delayed"]
    return tuple(by_address.get(r.final_recipient.lower(), r) for r in failed) + tuple(delayed)


def _exim_listed(notice: str) -> Iterator[ParsedRecipient]:
    for pattern, action in _EXIM_SECTIONS:
        match = pattern.search(notice)
        if match:
            for address, details in _exim_items(notice[match.end() :]):
                yield _exim_recipient(address, details, action)
            return


def _exim_items(section: str) -> Iterator[tuple[str, list[str]]]:
    """(address, detail lines) for each item of the list: a line (indented less than four)
    that starts with an address, and the lines below it, up to the explanation (an
    unindented paragraph after a blank line). An item that is no address (a pipe, a file,
    a bare local part) is skipped with its details."""
    address: str | None = None
    details: list[str] = []
    after_blank = False
    for line in section.expandtabs(8).splitlines():
        if not line.strip():
            after_blank = True
            continue
        indent = len(line) - len(line.lstrip())
        first, _, rest = line.strip().partition(" ")
        found = usable_address(first) if indent < 4 else None
        if found is not None or 0 < indent < 4:
            if address is not None:
                yield address, details
            address, details = found, [rest] if rest and found else []
        elif indent == 0 and after_blank:
            break
        elif address is not None:
            details.append(line.strip())
        after_blank = False
    if address is not None:
        yield address, details


def _exim_recipient(address: str, details: list[str], action: str) -> ParsedRecipient:
    remote = next((m.group(1) for d in details if (m := _EXIM_HOST.match(d))), None)
    text = " ".join(_EXIM_HOST.sub("", d) for d in details).strip()
    status, diagnostic = _status_in(text, action)
    return ParsedRecipient(address, action, status, diagnostic, remote_mta=remote)


def failed_header(message: Message) -> tuple[ParsedRecipient, ...]:
    """X-Failed-Recipients (Exim and others): the addresses in it, as permanent failures."""
    value = header(message, "X-Failed-Recipients") or ""
    addresses = (usable_address(a) for a in value.split(","))
    return tuple(ParsedRecipient(a, "failed", "5.0.0") for a in _unique(addresses))


def recognised_failures(
    message: Message, text: str, *, from_mailer: bool
) -> tuple[ParsedRecipient, ...]:
    """What flufl.bounce's detectors find (temporary failures as delays, permanent as
    failures), else, in a message `from_mailer` (a mailer daemon's, or a report), the
    recipients its text lists as `<address>: reply` or after "the following recipients:".
    A detector that raises on a malformed message finds nothing."""
    try:
        temporary, permanent = all_failures(message)
    except Exception:  # third-party heuristics over hostile input: nothing recognised
        temporary, permanent = frozenset(), frozenset()
    notice = text[:_NOTICE_SCAN]
    replies = _angle_items(notice)
    found = [(a.decode("utf-8", "replace"), "delayed") for a in temporary]
    found += [(a.decode("utf-8", "replace"), "failed") for a in permanent]
    if not found and from_mailer:
        found = [(a, "failed") for a, _ in replies.values()]
        found += [(a, "failed") for a in _listed(notice)]
    recipients: dict[str, ParsedRecipient] = {}
    for value, action in found:
        address = usable_address(value)
        if address is not None:
            _, reply = replies.get(address.lower(), ("", ""))
            reply = reply or _line_naming(notice, address)
            status, diagnostic = _status_in(reply, action)
            recipients[address.lower()] = ParsedRecipient(address, action, status, diagnostic)
    return tuple(recipients[key] for key in sorted(recipients))


def _angle_items(notice: str) -> dict[str, tuple[str, str]]:
    """Lower-cased address -> (address, the reply written after `<address>:`) (Postfix,
    qmail, OpenSMTPD)."""
    items: dict[str, tuple[str, str]] = {}
    for match in _ANGLE_ITEM.finditer(notice):
        address = usable_address(match.group(1))
        if address is not None:
            items.setdefault(address.lower(), (address, one_line(match.group(2))))
    return items


def _listed(notice: str) -> list[str]:
    """The addresses on the lines after "the following recipients:", up to the next
    line that is not one."""
    head = _LIST_HEAD.search(notice)
    if head is None:
        return []
    addresses = []
    for line in notice[head.end() :].lstrip("\n").splitlines():
        words = line.split()
        address = usable_address(words[0]) if words else None
        if address is None:
            break
        addresses.append(address)
    return addresses


def _line_naming(text: str, address: str) -> str:
    """The line naming `address` and the next one, when they hold a server's reply."""
    at = text.lower().find(address.lower())
    if at < 0:
        return ""
    start = text.rfind("\n", 0, at) + 1
    lines = one_line(" ".join(text[start:].split("\n", 2)[:2]))
    return lines if STATUS.search(lines) or REPLY.search(lines) else ""


def _status_in(text: str, action: str) -> tuple[str, str | None]:
    """(status, diagnostic) from text holding a server's reply, if it holds one. A status
    that contradicts the report (a 2.x.x failure, a 5.x.x delay) is not taken."""
    reply = REPLY.search(text)
    diagnostic = text[reply.start() :] if reply else (text or None)
    enhanced = STATUS.search(text)
    status = enhanced.group(0) if enhanced else None
    if status is None and reply:
        status = f"{reply.group(1)}.0.0"
    allowed = "4" if action == "delayed" else "45"
    if status is None or status[0] not in allowed:
        status = _DEFAULT_STATUS[action]
    return status, diagnostic


def _unique(addresses: Iterable[str | None]) -> Iterator[str]:
    seen: set[str] = set()
    for address in addresses:
        if address is not None and address.lower() not in seen:
            seen.add(address.lower())
            yield address
