"""Parse durations ("90s", "5m", "4h", "5d"), sizes ("25MB") and rates ("3/minute"), and
format them and timestamps; pure."""

from __future__ import annotations

import functools
import math
import re
from datetime import UTC, datetime, tzinfo
from email.utils import format_datetime

from relayd.types import Ceiling

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)\s*$")
_DURATION_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(B|KB|KiB|MB|MiB|GB|GiB)?\s*$", re.IGNORECASE)
_SIZE_BYTES = {
    "b": 1,
    "kb": 1000,
    "kib": 1024,
    "mb": 1000**2,
    "mib": 1024**2,
    "gb": 1000**3,
    "gib": 1024**3,
}
_PERIODS = {"second": 1.0, "minute": 60.0, "hour": 3600.0, "day": 86400.0}


def parse_duration(text: str) -> float:
    """Seconds in a duration string; raises ValueError naming the accepted forms."""
    match = _DURATION.match(text)
    if not match:
        raise ValueError(f'"{text}" is not a duration (use e.g. "300ms", "90s", "5m", "4h", "5d")')
    return float(match.group(1)) * _DURATION_SECONDS[match.group(2)]


def format_duration(seconds: float) -> str:
    """The shortest exact form: 300 -> "5m", 90 -> "90s", 0.3 -> "300ms"."""
    for unit in ("w", "d", "h", "m", "s"):
        size = _DURATION_SECONDS[unit]
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    if seconds == 0:
        return "0s"
    return f"{round(seconds * 1000)}ms" if seconds < 1 else f"{seconds:g}s"


def format_age(seconds: float) -> str:
    """A rounded, readable span for people: 45 -> "45s", 3725 -> "1h2m", 97200 -> "1d3h"."""
    whole = max(0, round(seconds))
    for big, small in (("d", "h"), ("h", "m"), ("m", "s")):
        big_size, small_size = int(_DURATION_SECONDS[big]), int(_DURATION_SECONDS[small])
        if whole >= big_size:
            count, rest = divmod(whole, big_size)
            rest //= small_size
            return f"{count}{big}{rest}{small}" if rest else f"{count}{big}"
    return f"{whole}s"


def format_size(count: int) -> str:
    """Bytes for people: 512 -> "512 B", 1536 -> "1.5 KiB", 3 * 2**30 -> "3.0 GiB"."""
    value, unit = float(count), "B"
    for bigger in ("KiB", "MiB", "GiB", "TiB"):
        if value < 1024:
            break
        value, unit = value / 1024, bigger
    return f"{count} B" if unit == "B" else f"{value:.1f} {unit}"


def parse_size(text: str) -> int:
    """Bytes in a size string ("25MB" = 25,000,000; "25MiB" = 26,214,400)."""
    match = _SIZE.match(text)
    if not match:
        raise ValueError(f'"{text}" is not a size (use e.g. "512KB", "25MB", "1GiB")')
    unit = (match.group(2) or "B").lower()
    return int(float(match.group(1)) * _SIZE_BYTES[unit])


def parse_rate(text: str) -> Ceiling:
    """A ceiling from "N/period": period is second|minute|hour|day or a duration ("20/10s")."""
    count_text, sep, period_text = text.partition("/")
    if not sep or not count_text.strip().isdigit() or int(count_text) < 1:
        raise ValueError(
            f'"{text}" is not a rate limit (use e.g. "3/minute", "200/hour", "20/10s")'
        )
    period_text = period_text.strip()
    period = _PERIODS.get(period_text)
    if period is None:
        try:
            period = parse_duration(period_text)
        except ValueError:
            raise ValueError(
                f'"{text}" is not a rate limit: the period is second, minute, hour, day '
                'or a duration such as "10m"'
            ) from None
    if period <= 0:
        raise ValueError(f'"{text}" is not a rate limit: the period must be positive')
    return Ceiling(count=int(count_text), period=period)


# Timestamps (Unix seconds) in the few forms relayd writes; each is pinned by tests.


def format_iso(at: float) -> str:
    """ISO 8601 in UTC to the second, for logs, JSON and reasons: "2026-01-05T09:14:03+00:00"."""
    return datetime.fromtimestamp(at, tz=UTC).isoformat(timespec="seconds")


def format_iso_minutes(at: float, zone: tzinfo) -> str:
    """ISO 8601 in `zone` to the minute, for a send window's opening: "2026-01-05T09:00+01:00"."""
    return datetime.fromtimestamp(at, zone).isoformat(timespec="minutes")


def format_clock(at: float, now: float, zone: tzinfo | None = None) -> str:
    """A time for people on the status page, in `zone` (default: the host's), as short as
    `now` allows: "14:05" today, "08:00 Mon" within a week, else "2026-01-12 08:00"."""
    wall = datetime.fromtimestamp(at, zone) if zone else datetime.fromtimestamp(at).astimezone()
    today = datetime.fromtimestamp(now, wall.tzinfo).date()
    if wall.date() == today:
        return wall.strftime("%H:%M")
    if abs((wall.date() - today).days) < 7:
        return wall.strftime("%H:%M %a")
    return wall.strftime("%Y-%m-%d %H:%M")


def format_iso_millis(at: float) -> str:
    """ISO 8601 in UTC to the millisecond with a Z, for transcripts: "2026-01-05T09:14:03.120Z"."""
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def format_rfc5322(at: float) -> str:
    """An RFC 5322 date, for Date: and Received: headers: "Mon, 05 Jan 2026 09:14:03 +0000"."""
    return _rfc5322_second(math.floor(at))


@functools.lru_cache(maxsize=2)
def _rfc5322_second(second: int) -> str:
    """Intake stamps every message twice (Received:, Date:): one formatting per second."""
    return format_datetime(datetime.fromtimestamp(second, tz=UTC))


def format_utc_minutes(at: float) -> str:
    """UTC to the minute for people, in operator notices: "2026-01-05 09:14 UTC"."""
    return datetime.fromtimestamp(at, tz=UTC).strftime("%Y-%m-%d %H:%M UTC")


def format_utc_seconds(at: float) -> str:
    """UTC to the second for people, in the queue tool's columns: "2026-01-05 09:14:03Z"."""
    return datetime.fromtimestamp(at, tz=UTC).strftime("%Y-%m-%d %H:%M:%SZ")
