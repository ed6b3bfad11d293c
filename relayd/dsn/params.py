"""RFC 3461 DSN parameters on MAIL and RCPT: syntax checks, xtext and normal forms; pure.

intake (server.py for RCPT, handler.py for MAIL) hands over the parameters aiosmtpd split
off the command; these functions say whether they are valid (a DsnParamError's text goes
into `501 5.5.4 ...`) and return what the store keeps: on MAIL, `RET=FULL|HDRS` and
`ENVID=<xtext>` as mail options (forwarded verbatim to an upstream that advertises DSN); on
RCPT, NOTIFY in upper case and ORCPT decoded from xtext (as `rfc822;bob@example.com`, a
UTF-8 address as its characters).
Delivery forwards ORCPT encoded again, which gives back the bytes the app sent; dsn/build.py
writes it into relayd's own reports through `original_recipient`.
"""

from __future__ import annotations

import re

from relayd.types import RcptDsn

_XTEXT = re.compile(r"^(?:[\x21-\x2a\x2c-\x3c\x3e-\x7e]|\+[0-9A-F]{2})+$")
_XTEXT_HEX = re.compile(r"\+([0-9A-Fa-f]{2})")
# RFC 6533 3: EmbeddedUnicodeChar, the `\x{HEXPOINT}` of a utf-8-addr-xtext.
_EMBEDDED_UNICODE = re.compile(r"\\x\{([0-9A-Fa-f]{1,6})\}")
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # C0 controls but TAB, and DEL
_ADDR_TYPE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]*$")
_NOTIFY_EVENTS = frozenset({"SUCCESS", "FAILURE", "DELAY"})
MAX_ENVID = 100  # RFC 3461 4.4: at most 100 characters
MAX_ORCPT = 500  # RFC 3461 4.2: the whole parameter fits the 512-byte command line


class DsnParamError(ValueError):
    """A DSN parameter with a bad value; the text says which and why."""


def xtext_bytes(value: str) -> bytes:
    """The bytes RFC 3461 4 xtext stands for: each `+XX` one byte, anything else itself."""
    out = bytearray()
    pos = 0
    for match in _XTEXT_HEX.finditer(value):
        out += value[pos : match.start()].encode("utf-8")
        out.append(int(match.group(1), 16))
        pos = match.end()
    out += value[pos:].encode("utf-8")
    return bytes(out)


def xtext_decode(value: str, errors: str = "replace") -> str:
    """Decode RFC 3461 4 xtext (`+2B` -> `+`), as ORCPT and ENVID arrive in SMTP parameters.

    RFC 3461 4.2/4.4 want printable ASCII inside; apps that put a UTF-8 address there send
    its bytes as `+XX` (`b+C3+BCro` for "büro"), so the bytes are read as UTF-8. `errors` is
    bytes.decode's: "replace" (U+FFFD) for text a report shows, "strict" (UnicodeDecodeError)
    where the caller refuses what is not text (intake, which stores the decoded ORCPT).
    """
    return xtext_bytes(value).decode("utf-8", errors)


def xtext_encode(value: str) -> str:
    """Encode as RFC 3461 xtext: `+`, `=`, controls and non-ASCII as `+XX` (UTF-8 bytes)."""
    out = []
    for byte in value.encode("utf-8"):
        char = chr(byte)
        out.append(char if 33 <= byte <= 126 and char not in "+=" else f"+{byte:02X}")
    return "".join(out)


def orcpt_text(address: str) -> str:
    """A stored ORCPT address as text, also from a queue written before xtext_decode read
    UTF-8, which kept one character per byte ("bÃ¼ro" for "büro"). Such a value is only
    U+0001-U+00FF, and its characters taken as bytes are UTF-8 with a multi-byte sequence;
    an address never reads that way (a Latin-1 letter followed by a C1 control or a sign
    such as "¼"), so anything else is returned as it is."""
    if address.isascii() or max(map(ord, address)) > 0xFF:
        return address
    try:
        return address.encode("latin-1").decode("utf-8")
    except UnicodeDecodeError:
        return address


def original_recipient(orcpt: str) -> str:
    """The Original-Recipient value (RFC 3464 2.3.1) for a stored ORCPT ("type;address").

    RFC 6533 3: a `utf-8` address is written in its utf-8-address form (`\\x{FC}` -> "ü");
    an `rfc822` address is ASCII by definition, so one that is not (an app's UTF-8 bytes)
    gets the `utf-8` type. A non-ASCII value makes the report a global one (dsn.build_dsn).
    """
    addr_type, sep, address = orcpt.partition(";")
    if not sep:
        addr_type, address = "rfc822", orcpt
    address = orcpt_text(address)
    if addr_type.lower() == "utf-8":
        address = _EMBEDDED_UNICODE.sub(_unicode_char, address)
    elif addr_type.lower() == "rfc822" and not address.isascii():
        addr_type = "utf-8"
    return f"{addr_type};{address}"


def _unicode_char(match: re.Match[str]) -> str:
    point = int(match.group(1), 16)
    valid = point <= 0x10FFFF and not 0xD800 <= point <= 0xDFFF
    return chr(point) if valid else match.group(0)


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
    """`type;address`, the address decoded. Stored as text, so it must be text: bytes that
    are not UTF-8, or controls (RFC 3461 4.2: printable characters only), are refused
    rather than kept in a form that could not be forwarded as the app sent it."""
    addr_type, sep, address = value.partition(";")
    if not sep or not _ADDR_TYPE.match(addr_type) or not _XTEXT.match(address):
        raise DsnParamError("ORCPT must be addr-type;xtext")
    if len(value) > MAX_ORCPT:
        raise DsnParamError("ORCPT is too long")
    try:
        decoded = xtext_decode(address, errors="strict")
    except UnicodeDecodeError:
        raise DsnParamError("ORCPT address must be UTF-8 once decoded from xtext") from None
    if _CONTROL.search(decoded):
        raise DsnParamError("ORCPT address must not decode to control characters")
    return f"{addr_type.lower()};{decoded}"


def mail_dsn(mail_options: tuple[str, ...]) -> tuple[bool, str | None]:
    """(RET=FULL was asked, the ENVID decoded) from a stored message's mail options."""
    full = "RET=FULL" in mail_options
    envid = next((o[6:] for o in mail_options if o.startswith("ENVID=")), None)
    return full, None if envid is None else xtext_decode(envid)


def rcpt_options(dsn: RcptDsn) -> list[str]:
    """The RCPT TO parameters to forward to an upstream that advertises DSN (RFC 3461
    4.1-4.2): NOTIFY as kept, ORCPT as `addr-type;xtext` of the bytes the app sent, so the
    upstream's own reports name the address the app gave. [] when the app gave neither."""
    options = [f"NOTIFY={dsn.notify}"] if dsn.notify else []
    if dsn.orcpt:
        addr_type, sep, address = dsn.orcpt.partition(";")
        if not sep:  # not from intake (which always keeps the type): RFC 3461's default
            addr_type, address = "rfc822", dsn.orcpt
        options.append(f"ORCPT={addr_type};{xtext_encode(orcpt_text(address))}")
    return options
