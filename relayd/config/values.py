"""The value types of the configuration file: what "5m", "25MB", "3/hour" or "*@x.example" mean.

Each is an `Annotated` type whose validator turns the TOML spelling into the value the daemon
uses (seconds, bytes, a Ceiling, a lower-cased pattern) or raises a ValueError whose text is
the message the operator reads. config/model.py builds its models from these; keeping them apart
keeps the models readable and config/model.py within its size.
"""

from __future__ import annotations

import ipaddress
import os
import re
import zoneinfo
from pathlib import Path
from typing import Annotated, Any

from annotated_types import Ge, Gt
from pydantic import AfterValidator, BeforeValidator, Field, SecretStr, ValidationInfo

from relayd.config.text import SIZE
from relayd.policy.localauth import parse_hash
from relayd.types import Ceiling
from relayd.units import parse_duration, parse_rate, parse_size

_HOST_PORT = re.compile(r"^([A-Za-z0-9.-]+):(\d{1,5})$")
_BRACKETED = re.compile(r"^\[([0-9A-Fa-f:.]+)\]:(\d{1,5})$")
_DOMAIN = re.compile(r"^[a-z0-9-]+(?:\.[a-z0-9-]+)*$")
_ADDRESS = re.compile(r"^[^@\s*]+@[a-z0-9-]+(?:\.[a-z0-9-]+)*$")
_DAY = "(?:mon|tue|wed|thu|fri|sat|sun)"
_DAYS = re.compile(rf"^{_DAY}(?:-{_DAY})?(?:\s*,\s*{_DAY}(?:-{_DAY})?)*$")
_HOURS = re.compile(r"^(\d{1,2}):(\d\d)\s*-\s*(\d{1,2}):(\d\d)$")  # "8:00-18:00" too
_UPSTREAM_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
_PATTERN_HELP = '(use "alerts@x.example", "*@x.example", "*" or "user:NAME")'


def _from_toml(info: ValidationInfo) -> bool:
    return isinstance(info.context, dict) and bool(info.context.get("toml"))


def _duration(value: object, info: ValidationInfo) -> object:
    if isinstance(value, str):
        return parse_duration(value)
    if isinstance(value, bool):
        raise ValueError(f'{str(value).lower()} is not a duration (use e.g. "90s")')
    # In TOML a bare 90 could mean seconds or minutes; Python callers pass seconds.
    if isinstance(value, int | float) and _from_toml(info):
        raise ValueError(f'{value} has no unit; write durations as strings, e.g. "{value}s"')
    return value


def _size(value: object) -> object:
    if isinstance(value, bool):
        raise ValueError(f'{str(value).lower()} is not a size (use e.g. "25MB")')
    return parse_size(value) if isinstance(value, str) else value


def _rate(value: object) -> object:
    return parse_rate(value) if isinstance(value, str) else value


def _network(value: object) -> object:
    if isinstance(value, ipaddress.IPv4Network | ipaddress.IPv6Network):
        return value
    if not isinstance(value, str):
        raise ValueError('a network is a string such as "10.0.0.0/8"')
    return ipaddress.ip_network(value)


def _hostname(value: str) -> str:
    if not value or any(char.isspace() for char in value):
        raise ValueError(f'"{value}" is not a host name')
    return value


def is_loopback_host(host: str) -> bool:
    """Whether a configured host is this machine: "localhost" or a loopback address (where
    a plaintext hop, http or IMAP without TLS, leaves no network)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _relative_to_config(value: Path, info: ValidationInfo) -> Path:
    """Relative paths in the file are relative to the file's directory, not to the cwd."""
    base = info.context.get("base_dir") if isinstance(info.context, dict) else None
    return Path(os.path.normpath(base / value)) if isinstance(base, Path) else value


def parse_listen(text: str) -> tuple[str, int]:
    """ "127.0.0.1:2525" -> ("127.0.0.1", 2525); "[::1]:2525" -> ("::1", 2525)."""
    match = _BRACKETED.match(text) or _HOST_PORT.match(text)
    valid = match is not None and int(match.group(2)) <= 65535
    if match is not None and match.re is _BRACKETED:
        try:
            ipaddress.IPv6Address(match.group(1))
        except ValueError:
            valid = False
    if not valid or match is None:
        raise ValueError(
            f'"{text}" is not a listen address (use "host:port", e.g. "127.0.0.1:2525" or '
            '"[::1]:2525")'
        )
    return match.group(1), int(match.group(2))


def _listen(value: str) -> str:
    parse_listen(value)
    return value


def _address_pattern(value: str) -> str:
    text = value.strip().lower()
    if text == "*" or (text.startswith("*@") and _DOMAIN.match(text[2:])) or _ADDRESS.match(text):
        return text
    raise ValueError(f'"{value}" is not a sender pattern {_PATTERN_HELP}')


def _sender_pattern(value: str) -> str:
    if value.startswith("user:") and value[5:].strip():
        return "user:" + value[5:].strip()
    return _address_pattern(value)


def _upstream_name(value: str) -> str:
    if not _UPSTREAM_NAME.match(value):
        raise ValueError(f'"{value}" is not an upstream name (letters, digits, "-", "_")')
    return value


def _time_zone(value: str) -> str:
    try:
        zoneinfo.ZoneInfo(value)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ValueError(f'"{value}" is not a time zone (use e.g. "Europe/London")') from None
    return value


def _days(value: str) -> str:
    text = value.strip().lower()
    if not _DAYS.match(text):
        raise ValueError(f'"{value}" is not a list of days (use e.g. "mon-fri" or "mon,wed")')
    return text


def _hours(value: str) -> str:
    match = _HOURS.match(value.strip())
    start, end = (
        (int(match[1]) * 60 + int(match[2]), int(match[3]) * 60 + int(match[4]))
        if match
        else (0, 0)
    )
    minutes_ok = match is not None and int(match[2]) < 60 and int(match[4]) < 60
    if not minutes_ok or end > 24 * 60 or start >= end:
        raise ValueError(
            f'"{value}" is not a range of hours (use e.g. "08:00-18:00"; across midnight, '
            'two ranges: "22:00-24:00", "00:00-06:00")'
        )
    assert match is not None
    return f"{int(match[1]):02}:{match[2]}-{int(match[3]):02}:{match[4]}"


def _password_hash(value: SecretStr) -> SecretStr:
    """Only a hash from `relayd hash-password`: a plain password here would be a leak."""
    parse_hash(value.get_secret_value())
    return value


Duration = Annotated[float, BeforeValidator(_duration), Ge(0)]
Timeout = Annotated[float, BeforeValidator(_duration), Gt(0)]
Size = Annotated[int, BeforeValidator(_size), Gt(0), SIZE]
Rate = Annotated[Ceiling, BeforeValidator(_rate)]
Network = Annotated[ipaddress.IPv4Network | ipaddress.IPv6Network, BeforeValidator(_network)]
ConfPath = Annotated[Path, AfterValidator(_relative_to_config)]
Listen = Annotated[str, AfterValidator(_listen)]
SenderPattern = Annotated[str, AfterValidator(_sender_pattern)]
AddressPattern = Annotated[str, AfterValidator(_address_pattern)]
Hostname = Annotated[str, AfterValidator(_hostname)]
UpstreamName = Annotated[str, AfterValidator(_upstream_name)]
TimeZone = Annotated[str, AfterValidator(_time_zone)]
Days = Annotated[str, AfterValidator(_days)]
Hours = Annotated[str, AfterValidator(_hours)]
PasswordHash = Annotated[SecretStr, AfterValidator(_password_hash)]


def durations(*texts: str) -> Any:
    """A field whose default is a schedule of durations ("1m", "5m", ...), at least one step."""
    return Field(default_factory=lambda: [parse_duration(text) for text in texts], min_length=1)
