"""Envelope address syntax (RFC 5321 4.1.2, RFC 6531 for SMTPUTF8); pure.

Stricter than aiosmtpd's header parser: an envelope path that a provider would refuse
later is refused now, with a reply the app can show its user.
"""

from __future__ import annotations

import ipaddress
import re
import unicodedata

MAX_PATH = 254  # RFC 5321 4.5.3.1.3 (256 including the angle brackets)
MAX_LOCAL = 64  # RFC 5321 4.5.3.1.1

_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~\-\u0080-\U0010ffff]"
_DOT_ATOM = re.compile(rf"^{_ATEXT}+(?:\.{_ATEXT}+)*$")
_QUOTED = re.compile(r'^"(?:[\x20\x21\x23-\x5b\x5d-\x7e\u0080-\U0010ffff]|\\[\x20-\x7e])*"$')
_LABEL = re.compile(r"^(?!-)[A-Za-z0-9\-\u0080-\U0010ffff]{1,63}(?<!-)$")
_PARAM = re.compile(r"^[A-Za-z0-9][A-Za-z0-9\-]*(?:=[\x21-\x3c\x3e-\x7e\u0080-\U0010ffff]+)?$")


class AddressError(ValueError):
    """An envelope address or parameter that is not valid; the text says why."""


def split_path(arg: str) -> tuple[str, list[str]]:
    """Split `<addr> PARAM=x ...` (the text after `FROM:`/`TO:`) into address and parameters.

    Brackets are required by RFC 5321 but many apps omit them; a bare address is accepted.
    """
    arg = arg.strip()
    if arg.startswith("<"):
        end = arg.find(">")
        if end < 0:
            raise AddressError("missing '>'")
        address, rest = arg[1:end], arg[end + 1 :]
        if rest and not rest.startswith(" "):
            raise AddressError("text after '>' must be separated by a space")
    else:
        address, _, rest = arg.partition(" ")
    params = rest.split()
    for param in params:
        if not _PARAM.match(param):
            raise AddressError(f"bad parameter {param!r}")
    return address, params


def check_address(address: str, *, utf8: bool) -> str:
    """Return the address if it is a valid mailbox (`local@domain`), else raise AddressError."""
    if not address:
        raise AddressError("empty address")
    if len(address) > MAX_PATH:
        raise AddressError(f"longer than {MAX_PATH} characters")
    if not utf8 and not address.isascii():
        raise AddressError("non-ASCII address needs the SMTPUTF8 parameter")
    unsendable = next((ch for ch in address if _is_unsendable(ch)), None)
    if unsendable is not None:
        name = unicodedata.name(unsendable, "a control character")
        raise AddressError(
            f"contains U+{ord(unsendable):04X} ({name}), which no SMTP command line may carry;"
            " correct the address"
        )
    local, at, domain = address.rpartition("@")
    if not at or not local or not domain:
        raise AddressError("expected local-part@domain")
    if len(local.encode()) > MAX_LOCAL:
        raise AddressError(f"local part longer than {MAX_LOCAL} bytes")
    if not (_DOT_ATOM.match(local) or _QUOTED.match(local)):
        raise AddressError("invalid local part")
    _check_domain(domain)
    return address


def _check_domain(domain: str) -> None:
    if domain.startswith("[") and domain.endswith("]"):
        literal = domain[1:-1]
        if literal.lower().startswith("ipv6:"):
            literal = literal[5:]
        try:
            ipaddress.ip_address(literal)
        except ValueError:
            raise AddressError("invalid address literal") from None
        return
    labels = domain.rstrip(".").split(".")
    if not all(_LABEL.match(label) for label in labels):
        raise AddressError("invalid domain")


def _is_unsendable(ch: str) -> bool:
    """Controls (C0, DEL, C1 such as U+0085), line and paragraph separators (U+2028/2029),
    lone surrogates and whitespace other than the space a quoted local part may hold: each
    can end or split a command line on the way (aiosmtplib refuses to send them), so mail to
    or from such an address could never leave."""
    category = unicodedata.category(ch)
    return ch != " " and (ch.isspace() or category in ("Cc", "Cs", "Zl", "Zp"))
