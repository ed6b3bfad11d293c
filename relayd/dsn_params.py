"""RFC 3461 DSN parameters on MAIL and RCPT: syntax checks and normal forms; pure.

intake.py hands over the parameters aiosmtpd split off the command; these functions say
whether they are valid (a DsnParamError's text goes into `501 5.5.4 ...`) and return what
the store keeps: on MAIL, `RET=FULL|HDRS` and `ENVID=<xtext>` as mail options (forwarded
verbatim to an upstream that advertises DSN); on RCPT, NOTIFY in upper case and ORCPT
decoded from xtext (as `rfc822;bob@example.com`).
"""

from __future__ import annotations

import re

from relayd.dsn import xtext_decode, xtext_encode
from relayd.types import RcptDsn

_XTEXT = re.compile(r"^(?:[\x21-\x2a\x2c-\x3c\x3e-\x7e]|\+[0-9A-F]{2})+$")
_ADDR_TYPE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]*$")
_NOTIFY_EVENTS = frozenset({"SUCCESS", "FAILURE", "DELAY"})
MAX_ENVID = 100  # RFC 3461 4.4: at most 100 characters
MAX_ORCPT = 500  # RFC 3461 4.2: the whole parameter fits the 512-byte command line


class DsnParamError(ValueError):
    """A DSN parameter with a bad value; the text says which and why."""


def mail_param(keyword: str, value: str) -> str:
    """The mail option to keep for RET or ENVID (`keyword` upper case)."""
    if keyword == "RET":
        ret = value.upper()
        if ret not in ("FULL", "HDRS"):
            raise DsnParamError("RET must be FULL or HDRS")
        return f"RET={ret}"
    if not _XTEXT.match(value) or len(xtext_decode(value)) > MAX_ENVID:
        raise DsnParamError("ENVID must be xtext of at most 100 characters")
    return f"ENVID={value}"


def rcpt_params(params: list[str]) -> RcptDsn:
    """NOTIFY and ORCPT from RCPT TO parameters; any other parameter is refused."""
    notify: str | None = None
    orcpt: str | None = None
    for param in params:
        keyword, _, value = param.partition("=")
        keyword = keyword.upper()
        if keyword == "NOTIFY" and notify is None:
            notify = _notify(value)
        elif keyword == "ORCPT" and orcpt is None:
            orcpt = _orcpt(value)
        else:
            raise DsnParamError(f"unsupported or repeated parameter {keyword}")
    return RcptDsn(notify, orcpt)


def _notify(value: str) -> str:
    events = [event.strip().upper() for event in value.split(",")]
    if events == ["NEVER"]:
        return "NEVER"
    if not events or not set(events) <= _NOTIFY_EVENTS or len(set(events)) != len(events):
        raise DsnParamError("NOTIFY must be NEVER or a list of SUCCESS, FAILURE, DELAY")
    return ",".join(events)


def _orcpt(value: str) -> str:
    addr_type, sep, address = value.partition(";")
    if not sep or not _ADDR_TYPE.match(addr_type) or not _XTEXT.match(address):
        raise DsnParamError("ORCPT must be addr-type;xtext")
    if len(value) > MAX_ORCPT:
        raise DsnParamError("ORCPT is too long")
    return f"{addr_type.lower()};{xtext_decode(address)}"


def mail_dsn(mail_options: tuple[str, ...]) -> tuple[bool, str | None]:
    """(RET=FULL was asked, the ENVID decoded) from a stored message's mail options."""
    full = "RET=FULL" in mail_options
    envid = next((o[6:] for o in mail_options if o.startswith("ENVID=")), None)
    return full, None if envid is None else xtext_decode(envid)


def rcpt_options(dsn: RcptDsn) -> list[str]:
    """The RCPT TO parameters to forward to an upstream that advertises DSN (RFC 3461
    4.1-4.2): NOTIFY as kept, ORCPT as `addr-type;xtext`, so the upstream's own reports
    name the address the app gave. [] when the app gave neither."""
    options = [f"NOTIFY={dsn.notify}"] if dsn.notify else []
    if dsn.orcpt:
        addr_type, sep, address = dsn.orcpt.partition(";")
        if not sep:  # not from intake (which always keeps the type): RFC 3461's default
            addr_type, address = "rfc822", dsn.orcpt
        options.append(f"ORCPT={addr_type};{_xtext(address)}")
    return options


def _xtext(decoded: str) -> str:
    """The inverse of xtext_decode, which makes one character of each `+XX` byte: such a
    character is written back as the same byte (xtext_encode alone would turn a UTF-8
    address's bytes into UTF-8 twice). Text past U+00FF is not intake's: plain xtext_encode."""
    if any(ord(char) > 0xFF for char in decoded):
        return xtext_encode(decoded)
    return "".join(xtext_encode(c) if c.isascii() else f"+{ord(c):02X}" for c in decoded)
