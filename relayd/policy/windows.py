"""Send windows: the organisation's sending hours, in its own time zone; pure.

A window is a set of weekdays, one or more daily hour ranges in an IANA time zone, and closed
dates. Outside it mail waits, queued. This module parses the configuration form
(``days = "mon-fri"``, ``hours = ["08:00-18:00"]``) and answers `is_open`, `next_open` and
`next_close` for an epoch-seconds instant by turning each day's ranges into UTC intervals with
zoneinfo; it never polls minute by minute.

Semantics (the rules an operator can rely on):

* A range belongs to the day it STARTS on: "fri 22:00-06:00" covers Friday 22:00 to Saturday
  06:00, and a closed date closes the ranges that start on it. "00:00-24:00" is the whole day.
* A local time is the first instant at which the local clock shows that time or later. So a
  range starting in a spring-forward gap (01:30 in Europe/London on the last Sunday of March)
  starts at the first instant after the gap (02:00 BST); an ambiguous fall-back time is its
  first occurrence (fold=0), for starts and ends alike: "01:00-02:00" on fall-back day opens at
  01:00 BST and closes at 02:00 GMT (both 01:xx hours), while "00:00-01:30" closes at the first
  01:30 (BST) and is shut for the repeated hour's second half-hour.
* Intervals are half-open, [start, end): open at the start instant, closed at the end instant.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

HORIZON_DAYS = 400
"""How far ahead next_open / next_close look before answering None (over a year, so that a
window closed by a long list of dates, or one that opens once a year, is still found)."""

DAY_NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_FULL_NAMES = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_DAY_INDEX = {name: i for names in (DAY_NAMES, _FULL_NAMES) for i, name in enumerate(names)}
_EVERY_DAY = frozenset(range(7))
_DAY = 86400.0
_HOURS = re.compile(r"^\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*$")


@dataclass(frozen=True)
class HourRange:
    """Local `start` to `end`; with `crosses_midnight`, `end` is on the following day.

    "00:00-24:00" is start 00:00, end 00:00, crossing midnight; "22:00-06:00" crosses too.
    """

    start: time
    end: time
    crosses_midnight: bool

    def __str__(self) -> str:
        end = "24:00" if self.crosses_midnight and self.end == time(0) else _hhmm(self.end)
        return f"{_hhmm(self.start)}-{end}"


@dataclass(frozen=True)
class SendWindow:
    """When an upstream may send: `days` (0 = Monday) and `ranges` in `timezone`."""

    timezone: str
    days: frozenset[int]
    ranges: tuple[HourRange, ...]
    closed_dates: frozenset[date] = frozenset()

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)  # ZoneInfo caches instances per key

    def __str__(self) -> str:
        days = ",".join(DAY_NAMES[i] for i in sorted(self.days))
        hours = ",".join(str(r) for r in self.ranges)
        return f"{days} {hours} ({self.timezone})"


def parse_window(
    timezone: str, days: str, hours: Sequence[str], closed_dates: Sequence[date] = ()
) -> SendWindow:
    """Build a SendWindow from its configuration form; raises ValueError saying what is wrong.

    `days`: "mon-fri", "mon,wed,sat", "sat-mon" (wraps), "mon-sun", "daily" or "*", and lists
    of these ("mon-wed,fri"); names are three-letter or full, any case.
    `hours`: "HH:MM-HH:MM" each; an end at or before the start crosses midnight; "24:00" is
    allowed as an end.
    """
    try:
        ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(
            f'timezone "{timezone}" is not an IANA time zone (use e.g. "Europe/London")'
        ) from None
    if not hours:
        raise ValueError('hours is empty (use e.g. ["08:00-18:00"], or "00:00-24:00" all day)')
    return SendWindow(
        timezone=timezone,
        days=parse_days(days),
        ranges=tuple(parse_hours(text) for text in hours),
        closed_dates=frozenset(closed_dates),
    )


def parse_days(text: str) -> frozenset[int]:
    """Weekday numbers (0 = Monday) from "mon-fri", "sat-mon", "mon,wed", "daily" or "*"."""
    spec = text.strip().lower()
    if spec in ("daily", "*"):
        return _EVERY_DAY
    result: set[int] = set()
    for part in spec.split(","):
        first, sep, last = part.partition("-")
        start, end = _day(first, text), _day(last if sep else first, text)
        span = (end - start) % 7  # "sat-mon" wraps over the weekend
        result.update((start + i) % 7 for i in range(span + 1))
    return frozenset(result)


def parse_hours(text: str) -> HourRange:
    """One "HH:MM-HH:MM" range; the end may be "24:00"; an end <= start crosses midnight."""
    match = _HOURS.match(text)
    if not match:
        raise ValueError(f'hours "{text}" is not a range (use e.g. "08:00-18:00", "22:00-06:00")')
    sh, sm, eh, em = (int(group) for group in match.groups())
    if not (sh < 24 and sm < 60 and em < 60 and (eh < 24 or (eh, em) == (24, 0))):
        raise ValueError(f'hours "{text}": times run from 00:00 to 23:59 (and 24:00 as an end)')
    start, end = time(sh, sm), time(eh % 24, em)
    if (sh, sm) == (eh, em):
        raise ValueError(f'hours "{text}" is empty (start = end; use "00:00-24:00" for all day)')
    return HourRange(start=start, end=end, crosses_midnight=end <= start)


def is_open(window: SendWindow, at: float) -> bool:
    """Whether `at` lies in one of the window's intervals."""
    today = _local_date(window, at)
    # Only ranges starting yesterday (crossing midnight) or today can contain `at`.
    for day in (today - timedelta(days=1), today):
        if any(start <= at < end for start, end in _day_intervals(window, day)):
            return True
    return False


def next_open(window: SendWindow, at: float) -> float | None:
    """The first instant >= `at` at which the window is open (`at` itself if open now).

    None if it does not open within HORIZON_DAYS (every day closed, or no days at all).
    """
    # Intervals come in order of start; the first one still running after `at` is the answer.
    for start, end in _intervals(window, at):
        if end > at:
            return max(start, at)
    return None


def next_close(window: SendWindow, at: float) -> float | None:
    """The first instant >= `at` at which the window is closed (`at` itself if closed now).

    Back-to-back or overlapping intervals (a "22:00-06:00" followed by "06:00-08:00", or
    "00:00-24:00" every day) count as one open period. None if it stays open for
    HORIZON_DAYS or more.
    """
    covered = at  # everything in [at, covered) is known to be open
    for start, end in _intervals(window, at):
        if start > covered:
            break
        covered = max(covered, end)
        if covered - at >= HORIZON_DAYS * _DAY:
            return None
    return covered


def _intervals(window: SendWindow, at: float) -> Iterator[tuple[float, float]]:
    """The window's UTC intervals, in order of start, from those starting the day before `at`'s
    local date (they may cross into it) to HORIZON_DAYS ahead."""
    first = _local_date(window, at) - timedelta(days=1)
    # Two days' margin beyond the horizon: a zone may skip a whole local day (Samoa, 2011).
    for offset in range(HORIZON_DAYS + 3):
        yield from _day_intervals(window, first + timedelta(days=offset))


def _day_intervals(window: SendWindow, day: date) -> list[tuple[float, float]]:
    """The intervals of the ranges starting on local `day`, sorted by start; non-empty only."""
    if day.weekday() not in window.days or day in window.closed_dates:
        return []
    zone = window.zone
    intervals = []
    for hours in window.ranges:
        end_day = day + timedelta(days=1) if hours.crosses_midnight else day
        start = _instant(day, hours.start, zone)
        end = _instant(end_day, hours.end, zone)
        if start < end:  # a range wholly inside a skipped day (Samoa, 2011-12-30) is empty
            intervals.append((start, end))
    return sorted(intervals)


def _instant(day: date, wall: time, zone: ZoneInfo) -> float:
    """The first instant at which the clock in `zone` shows `wall` on `day`, or later.

    A wall time that exists maps to itself (fold=0, the first occurrence if it repeats); one
    skipped by a spring-forward gap maps to the end of the gap.
    """
    local = datetime.combine(day, wall, tzinfo=zone)  # fold=0
    early = local.timestamp()
    if _wall(early, zone) == local.replace(tzinfo=None):
        return early
    # In a gap: fold=0 applies the pre-transition offset and lands after the transition,
    # fold=1 the post-transition offset and lands before it. The transition is the first
    # instant in between with the post-transition offset; transitions fall on whole seconds.
    after = local.replace(fold=1).utcoffset()
    low, high = int(local.replace(fold=1).timestamp()), int(early)
    while high - low > 1:
        mid = (low + high) // 2
        if datetime.fromtimestamp(mid, zone).utcoffset() == after:
            high = mid
        else:
            low = mid
    return float(high)


def _wall(instant: float, zone: ZoneInfo) -> datetime:
    return datetime.fromtimestamp(instant, zone).replace(tzinfo=None)


def _local_date(window: SendWindow, at: float) -> date:
    return datetime.fromtimestamp(at, window.zone).date()


def _day(name: str, text: str) -> int:
    index = _DAY_INDEX.get(name.strip())
    if index is None:
        raise ValueError(
            f'days "{text}": "{name.strip()}" is not a day (use mon..sun, ranges such as '
            '"mon-fri" or "sat-mon", lists such as "mon,wed,fri", or "daily")'
        )
    return index


def _hhmm(value: time) -> str:
    return value.strftime("%H:%M")
