"""relayd.policy.windows: parsing, open/closed, next_open / next_close, overnight ranges, DST.

2026 transitions used below (UTC): Europe/London springs forward 03-29 01:00 (01:00 GMT ->
02:00 BST) and falls back 10-25 01:00 (02:00 BST -> 01:00 GMT); America/New_York springs
forward 03-08 07:00 (02:00 EST -> 03:00 EDT) and falls back 11-01 06:00 (02:00 EDT -> 01:00
EST).
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relayd.policy.windows import (
    HourRange,
    SendWindow,
    is_open,
    next_close,
    next_open,
    parse_days,
    parse_hours,
    parse_window,
)

LONDON = "Europe/London"
NEW_YORK = "America/New_York"


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> float:
    """Epoch seconds of a UTC wall time: utc(2026, 1, 5, 9) is 2026-01-05T09:00Z."""
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC).timestamp()


def office(timezone: str = LONDON, *closed: date) -> SendWindow:
    return parse_window(timezone, "mon-fri", ["08:00-18:00"], closed)


# -- parsing ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("mon-fri", {0, 1, 2, 3, 4}),
        ("mon,wed,sat", {0, 2, 5}),
        ("sat-mon", {5, 6, 0}),
        ("fri-tue", {4, 5, 6, 0, 1}),
        ("mon-sun", set(range(7))),
        ("daily", set(range(7))),
        ("*", set(range(7))),
        ("Mon-Wed, fri", {0, 1, 2, 4}),
        ("sunday", {6}),
        ("tue-tue", {1}),
    ],
)
def test_parse_days(text: str, expected: set[int]) -> None:
    assert parse_days(text) == frozenset(expected)


@pytest.mark.parametrize("text", ["", "monday-fry", "mon-", "weekdays", "mon;fri", "1-5"])
def test_parse_days_rejects_what_it_does_not_know(text: str) -> None:
    with pytest.raises(ValueError, match="is not a day"):
        parse_days(text)


@pytest.mark.parametrize(
    ("text", "start", "end", "crosses"),
    [
        ("08:00-18:00", time(8), time(18), False),
        ("8:30 - 17:45", time(8, 30), time(17, 45), False),
        ("22:00-06:00", time(22), time(6), True),
        ("00:00-24:00", time(0), time(0), True),
        ("22:00-24:00", time(22), time(0), True),
        ("23:59-00:00", time(23, 59), time(0), True),
    ],
)
def test_parse_hours(text: str, start: time, end: time, crosses: bool) -> None:
    assert parse_hours(text) == HourRange(start, end, crosses)


def test_hour_range_renders_back() -> None:
    assert str(parse_hours("00:00-24:00")) == "00:00-24:00"
    assert str(parse_hours("22:00-06:00")) == "22:00-06:00"
    window = parse_window(LONDON, "mon-fri", ["08:00-12:00", "13:00-18:00"], [])
    assert str(window) == "mon,tue,wed,thu,fri 08:00-12:00,13:00-18:00 (Europe/London)"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("8-18", "is not a range"),
        ("08:00", "is not a range"),
        ("08:00-18:00-20:00", "is not a range"),
        ("24:00-06:00", "00:00 to 23:59"),
        ("08:00-24:30", "00:00 to 23:59"),
        ("08:60-18:00", "00:00 to 23:59"),
        ("25:00-26:00", "00:00 to 23:59"),
        ("08:00-08:00", "is empty"),
    ],
)
def test_parse_hours_rejects(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_hours(text)


def test_parse_window_rejects_an_unknown_timezone_and_empty_hours() -> None:
    with pytest.raises(ValueError, match="Europe/Lundon"):
        parse_window("Europe/Lundon", "mon-fri", ["08:00-18:00"], [])
    with pytest.raises(ValueError, match="IANA"):
        parse_window("../../etc/passwd", "mon-fri", ["08:00-18:00"], [])
    with pytest.raises(ValueError, match="hours is empty"):
        parse_window(LONDON, "mon-fri", [], [])


def test_parse_window_keeps_what_it_was_given() -> None:
    window = parse_window(NEW_YORK, "sat-mon", ["22:00-06:00"], [date(2026, 12, 25)])
    assert window == SendWindow(
        timezone=NEW_YORK,
        days=frozenset({5, 6, 0}),
        ranges=(HourRange(time(22), time(6), True),),
        closed_dates=frozenset({date(2026, 12, 25)}),
    )


# -- ordinary days ----------------------------------------------------------------------------


def test_office_hours_in_winter_and_summer() -> None:
    window = office()
    # Monday 2026-01-05, GMT = UTC.
    assert not is_open(window, utc(2026, 1, 5, 7, 59, 59))
    assert is_open(window, utc(2026, 1, 5, 8))
    assert is_open(window, utc(2026, 1, 5, 17, 59, 59))
    assert not is_open(window, utc(2026, 1, 5, 18))  # half-open: closed at the end instant
    # Monday 2026-07-06, BST = UTC+1: 08:00 local is 07:00Z.
    assert not is_open(window, utc(2026, 7, 6, 6, 59, 59))
    assert is_open(window, utc(2026, 7, 6, 7))
    assert not is_open(window, utc(2026, 7, 6, 17))


def test_next_open_is_now_when_open() -> None:
    at = utc(2026, 1, 7, 12, 34, 56)
    assert next_open(office(), at) == at


def test_next_open_later_the_same_day() -> None:
    assert next_open(office(), utc(2026, 1, 7, 6, 15)) == utc(2026, 1, 7, 8)


def test_next_open_across_the_weekend() -> None:
    monday_8 = utc(2026, 1, 12, 8)
    assert next_open(office(), utc(2026, 1, 9, 18)) == monday_8  # Friday at closing
    assert next_open(office(), utc(2026, 1, 10, 12)) == monday_8  # Saturday
    assert next_open(office(), utc(2026, 1, 11, 23, 59)) == monday_8  # Sunday night


def test_next_open_across_the_weekend_in_new_york() -> None:
    # Friday 2026-01-09 18:00 EST = 23:00Z; Monday 08:00 EST = 13:00Z.
    assert next_open(office(NEW_YORK), utc(2026, 1, 9, 23)) == utc(2026, 1, 12, 13)


def test_next_close() -> None:
    window = office()
    assert next_close(window, utc(2026, 1, 5, 10)) == utc(2026, 1, 5, 18)
    closed_at = utc(2026, 1, 5, 19)
    assert next_close(window, closed_at) == closed_at  # closed now: now


def test_two_ranges_a_day() -> None:
    window = parse_window(LONDON, "mon-fri", ["08:00-12:00", "13:00-17:00"], [])
    assert next_close(window, utc(2026, 1, 5, 9)) == utc(2026, 1, 5, 12)
    assert next_open(window, utc(2026, 1, 5, 12, 30)) == utc(2026, 1, 5, 13)
    assert not is_open(window, utc(2026, 1, 5, 12, 30))


def test_back_to_back_ranges_close_only_at_the_end_of_the_run() -> None:
    window = parse_window(LONDON, "daily", ["22:00-06:00", "06:00-08:00"], [])
    assert next_close(window, utc(2026, 1, 5, 23)) == utc(2026, 1, 6, 8)
    weekdays = parse_window(LONDON, "mon-fri", ["00:00-24:00"], [])
    assert next_close(weekdays, utc(2026, 1, 5, 10)) == utc(2026, 1, 10, 0)  # Saturday 00:00


def test_always_open_never_closes() -> None:
    window = parse_window(LONDON, "daily", ["00:00-24:00"], [])
    at = utc(2026, 3, 29, 1, 30)
    assert is_open(window, at)
    assert next_open(window, at) == at
    assert next_close(window, at) is None


def test_a_window_that_never_opens() -> None:
    mondays = [date(2026, 1, 5) + timedelta(weeks=n) for n in range(70)]
    window = parse_window(LONDON, "mon", ["08:00-18:00"], mondays)
    at = utc(2026, 1, 1)
    assert not is_open(window, at)
    assert next_open(window, at) is None
    assert next_close(window, at) == at


def test_next_close_when_no_range_follows_the_current_one() -> None:
    # The next Mondays are all closed: the close is the end of today's range, not "never".
    mondays = [date(2026, 1, 12) + timedelta(weeks=n) for n in range(70)]
    window = parse_window(LONDON, "mon", ["08:00-18:00"], mondays)
    assert next_close(window, utc(2026, 1, 5, 10)) == utc(2026, 1, 5, 18)


def test_next_open_finds_a_window_months_away() -> None:
    # Every Monday closed for 40 weeks: it opens on the 41st.
    mondays = [date(2026, 1, 5) + timedelta(weeks=n) for n in range(40)]
    window = parse_window(LONDON, "mon", ["08:00-18:00"], mondays)
    first = date(2026, 1, 5) + timedelta(weeks=40)  # 2026-10-12, still BST
    expected = datetime.combine(first, time(8), tzinfo=ZoneInfo(LONDON)).timestamp()
    assert next_open(window, utc(2026, 1, 1)) == expected
    assert next_close(window, expected) == expected + 10 * 3600


# -- overnight ranges and closed dates --------------------------------------------------------


def test_an_overnight_range_belongs_to_the_day_it_starts() -> None:
    window = parse_window(LONDON, "fri", ["22:00-06:00"], [])
    assert not is_open(window, utc(2026, 1, 9, 21, 59))  # Friday before the start
    assert is_open(window, utc(2026, 1, 9, 22))
    assert is_open(window, utc(2026, 1, 10, 3))  # Saturday small hours: Friday's range
    assert not is_open(window, utc(2026, 1, 10, 6))
    assert not is_open(window, utc(2026, 1, 8, 23))  # Thursday night: no range starts then
    assert not is_open(window, utc(2026, 1, 11, 3))  # Sunday small hours: Saturday not listed
    assert next_close(window, utc(2026, 1, 10, 3)) == utc(2026, 1, 10, 6)
    assert next_open(window, utc(2026, 1, 10, 6)) == utc(2026, 1, 16, 22)


def test_closed_dates_close_the_ranges_starting_on_them() -> None:
    friday, saturday = date(2026, 1, 9), date(2026, 1, 10)
    closed_friday = parse_window(LONDON, "fri", ["22:00-06:00"], [friday])
    assert not is_open(closed_friday, utc(2026, 1, 9, 23))
    assert not is_open(closed_friday, utc(2026, 1, 10, 3))
    assert next_open(closed_friday, utc(2026, 1, 9, 12)) == utc(2026, 1, 16, 22)
    # Closing the Saturday does not close Friday's range running into it.
    closed_saturday = parse_window(LONDON, "fri", ["22:00-06:00"], [saturday])
    assert is_open(closed_saturday, utc(2026, 1, 10, 3))


def test_a_bank_holiday_before_a_weekend() -> None:
    window = office(LONDON, date(2026, 12, 25))  # Friday
    assert not is_open(window, utc(2026, 12, 25, 12))
    assert next_open(window, utc(2026, 12, 24, 18)) == utc(2026, 12, 28, 8)


# -- daylight saving time ---------------------------------------------------------------------


def test_london_spring_forward_office_hours() -> None:
    window = parse_window(LONDON, "daily", ["08:00-18:00"], [])
    # Saturday 08:00 GMT = 08:00Z; Sunday (BST) 08:00 = 07:00Z, 18:00 = 17:00Z.
    assert next_open(window, utc(2026, 3, 28, 18)) == utc(2026, 3, 29, 7)
    assert next_close(window, utc(2026, 3, 29, 7)) == utc(2026, 3, 29, 17)


def test_london_spring_forward_a_start_in_the_gap_starts_after_the_gap() -> None:
    # 01:30 does not exist on 2026-03-29: the range starts at 02:00 BST (01:00Z) and ends at
    # 03:00 BST (02:00Z).
    window = parse_window(LONDON, "daily", ["01:30-03:00"], [])
    assert not is_open(window, utc(2026, 3, 29, 0, 59, 59))  # 00:59 GMT
    assert is_open(window, utc(2026, 3, 29, 1))  # 02:00 BST
    assert next_open(window, utc(2026, 3, 29, 0)) == utc(2026, 3, 29, 1)
    assert next_close(window, utc(2026, 3, 29, 1)) == utc(2026, 3, 29, 2)
    # The day before it is 01:30 GMT, as written.
    assert next_open(window, utc(2026, 3, 28, 0)) == utc(2026, 3, 28, 1, 30)


def test_london_spring_forward_an_end_in_the_gap_ends_at_the_gap() -> None:
    window = parse_window(LONDON, "daily", ["00:30-01:30"], [])
    assert is_open(window, utc(2026, 3, 29, 0, 45))
    assert next_close(window, utc(2026, 3, 29, 0, 45)) == utc(2026, 3, 29, 1)


def test_london_spring_forward_day_is_23_hours() -> None:
    window = parse_window(LONDON, "sun", ["00:00-24:00"], [])
    start = utc(2026, 3, 29, 0)
    assert next_close(window, start) == start + 23 * 3600


def test_london_fall_back_day_is_25_hours() -> None:
    window = parse_window(LONDON, "sun", ["00:00-24:00"], [])
    start = next_open(window, utc(2026, 10, 24, 12))
    assert start == utc(2026, 10, 24, 23)  # 00:00 BST
    assert next_close(window, start) == start + 25 * 3600


def test_london_fall_back_an_ambiguous_start_is_the_first_occurrence() -> None:
    # 01:00-02:00 on 2026-10-25 opens at the first 01:00 (BST, 00:00Z) and closes at 02:00 GMT
    # (02:00Z): open through both occurrences of the repeated hour.
    window = parse_window(LONDON, "sun", ["01:00-02:00"], [])
    assert not is_open(window, utc(2026, 10, 24, 23, 59))
    assert next_open(window, utc(2026, 10, 24, 12)) == utc(2026, 10, 25, 0)
    assert is_open(window, utc(2026, 10, 25, 0, 30))  # first 01:30 (BST)
    assert is_open(window, utc(2026, 10, 25, 1, 30))  # second 01:30 (GMT)
    assert next_close(window, utc(2026, 10, 25, 0, 30)) == utc(2026, 10, 25, 2)


def test_london_fall_back_an_ambiguous_end_is_the_first_occurrence() -> None:
    window = parse_window(LONDON, "sun", ["00:00-01:30"], [])
    assert is_open(window, utc(2026, 10, 25, 0, 15))  # first 01:15 (BST)
    assert next_close(window, utc(2026, 10, 25, 0, 15)) == utc(2026, 10, 25, 0, 30)
    assert not is_open(window, utc(2026, 10, 25, 1, 15))  # second 01:15 (GMT)


def test_new_york_spring_forward() -> None:
    # 02:30 does not exist on 2026-03-08: the range starts at 03:00 EDT (07:00Z).
    window = parse_window(NEW_YORK, "daily", ["02:30-04:00"], [])
    assert next_open(window, utc(2026, 3, 8, 5)) == utc(2026, 3, 8, 7)
    assert next_close(window, utc(2026, 3, 8, 7)) == utc(2026, 3, 8, 8)
    assert next_open(window, utc(2026, 3, 7, 5)) == utc(2026, 3, 7, 7, 30)  # 02:30 EST
    office_hours = office(NEW_YORK)
    assert next_open(office_hours, utc(2026, 3, 7, 0)) == utc(2026, 3, 9, 12)  # 08:00 EDT


def test_new_york_fall_back() -> None:
    # 01:00 EDT = 05:00Z; 02:00 EST = 07:00Z.
    window = parse_window(NEW_YORK, "sun", ["01:00-02:00"], [])
    assert next_open(window, utc(2026, 11, 1, 0)) == utc(2026, 11, 1, 5)
    assert is_open(window, utc(2026, 11, 1, 5, 30))  # first 01:30 (EDT)
    assert is_open(window, utc(2026, 11, 1, 6, 30))  # second 01:30 (EST)
    assert not is_open(window, utc(2026, 11, 1, 7))
    overnight = parse_window(NEW_YORK, "sat", ["22:00-06:00"], [])
    # Saturday 22:00 EDT (02:00Z) to Sunday 06:00 EST (11:00Z): nine hours.
    opens = next_open(overnight, utc(2026, 10, 31, 12))
    assert opens == utc(2026, 11, 1, 2)
    assert next_close(overnight, opens) == utc(2026, 11, 1, 11)


def test_a_zone_that_skips_a_whole_day() -> None:
    # Pacific/Apia skipped 2011-12-30 (UTC-10 -> UTC+14); that day's range is empty, not a
    # zero-length opening at midnight.
    apia = ZoneInfo("Pacific/Apia")
    window = parse_window("Pacific/Apia", "daily", ["08:00-18:00"], [])
    thursday_evening = datetime(2011, 12, 29, 20, tzinfo=apia).timestamp()
    expected = datetime(2011, 12, 31, 8, tzinfo=apia).timestamp()
    assert next_open(window, thursday_evening) == expected
    assert expected - thursday_evening == 12 * 3600
    always = parse_window("Pacific/Apia", "daily", ["00:00-24:00"], [])
    assert next_close(always, thursday_evening) is None
    thursdays = parse_window("Pacific/Apia", "thu", ["00:00-24:00"], [])
    # Thursday's 24:00 is in the skipped day: its range ends when the gap does.
    saturday = datetime(2011, 12, 31, tzinfo=apia).timestamp()
    assert next_close(thursdays, thursday_evening) == saturday


# -- against an independent oracle, minute grid, through DST weeks ----------------------------


def oracle_is_open(window: SendWindow, at: float) -> bool:
    """Open iff the local wall clock shows a time in a range that started on an open day."""
    local = datetime.fromtimestamp(at, ZoneInfo(window.timezone))
    minute = local.hour * 60 + local.minute + local.second / 60
    today, yesterday = local.date(), local.date() - timedelta(days=1)

    def day_ok(day: date) -> bool:
        return day.weekday() in window.days and day not in window.closed_dates

    for r in window.ranges:
        start = r.start.hour * 60 + r.start.minute
        end = r.end.hour * 60 + r.end.minute
        if not r.crosses_midnight and day_ok(today) and start <= minute < end:
            return True
        if r.crosses_midnight and (
            (day_ok(today) and minute >= start) or (day_ok(yesterday) and minute < end)
        ):
            return True
    return False


half_hours = st.integers(0, 47).map(lambda n: f"{n // 2:02d}:{n % 2 * 30:02d}")
hour_ranges = st.tuples(half_hours, half_hours).filter(lambda p: p[0] != p[1])
DST_WEEKS = [
    (LONDON, utc(2026, 3, 25)),
    (LONDON, utc(2026, 10, 21)),
    (NEW_YORK, utc(2026, 3, 4)),
    (NEW_YORK, utc(2026, 10, 28)),
]


@settings(max_examples=30, deadline=None)
@given(
    zone_week=st.sampled_from(DST_WEEKS),
    days=st.sets(st.integers(0, 6), min_size=1).map(
        lambda s: ",".join(("mon", "tue", "wed", "thu", "fri", "sat", "sun")[d] for d in s)
    ),
    ranges=st.lists(hour_ranges, min_size=1, max_size=2),
    closed=st.sets(st.integers(0, 8), max_size=2),
)
def test_matches_the_wall_clock_oracle_through_dst_weeks(
    zone_week: tuple[str, float], days: str, ranges: list[tuple[str, str]], closed: set[int]
) -> None:
    zone, week = zone_week
    first = datetime.fromtimestamp(week, UTC).date()
    window = parse_window(
        zone,
        days,
        [f"{a}-{b}" for a, b in ranges],
        [first + timedelta(days=n) for n in closed],
    )
    tz = ZoneInfo(zone)
    for step in range(0, 8 * 24 * 60, 15):  # every 15 minutes for 8 days
        at = week + step * 60 + 7  # off the half-hour grid by 7s
        if datetime.fromtimestamp(at, tz).fold:
            continue  # the repeated hour's second pass: fold=0 semantics differ by design
        assert is_open(window, at) == oracle_is_open(window, at), datetime.fromtimestamp(at, tz)
        if step % 90 == 0:
            _check_consistency(window, at)


def _check_consistency(window: SendWindow, at: float) -> None:
    opens, closes = next_open(window, at), next_close(window, at)
    assert opens is not None  # every generated window has a day within the horizon
    assert opens >= at
    assert is_open(window, opens)
    assert (opens == at) == is_open(window, at)
    if opens > at:
        assert not is_open(window, opens - 1)  # it was closed just before it opened
    if closes is not None:
        assert closes >= at
        assert not is_open(window, closes)
        assert (closes == at) != is_open(window, at)
        if closes > at:
            assert is_open(window, closes - 1)
