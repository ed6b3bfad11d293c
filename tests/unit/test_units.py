"""relayd.units: durations, sizes and rate limits as the configuration writes them, and the
timestamp forms relayd writes."""

from __future__ import annotations

from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relayd.types import Ceiling
from relayd.units import (
    format_duration,
    format_iso,
    format_iso_millis,
    format_iso_minutes,
    format_rfc5322,
    format_size,
    format_utc_minutes,
    format_utc_seconds,
    parse_duration,
    parse_rate,
    parse_size,
)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("300ms", 0.3),
        ("0s", 0.0),
        ("90s", 90.0),
        ("5m", 300.0),
        ("1.5m", 90.0),
        ("4h", 14400.0),
        ("5d", 432000.0),
        ("2w", 1209600.0),
        (" 20s ", 20.0),
        ("20 s", 20.0),
    ],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "5", "5 minutes", "-5m", "5M", "m", "1h30m", "5y", "1e3s"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="is not a duration"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.0, "0s"),
        (0.3, "300ms"),
        (1.0, "1s"),
        (90.0, "90s"),
        (300.0, "5m"),
        (3600.0, "1h"),
        (5400.0, "90m"),
        (86400.0, "1d"),
        (432000.0, "5d"),
        (604800.0, "1w"),
        (1.5, "1.5s"),
    ],
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 10**8))
def test_whole_seconds_round_trip(seconds: int) -> None:
    assert parse_duration(format_duration(float(seconds))) == seconds


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 999))
def test_milliseconds_round_trip(ms: int) -> None:
    assert parse_duration(format_duration(ms / 1000)) == pytest.approx(ms / 1000)


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("25MB", 25_000_000),
        ("25MiB", 26_214_400),
        ("25mb", 25_000_000),
        ("512KB", 512_000),
        ("1KiB", 1024),
        ("1.5KB", 1500),
        ("1GiB", 1024**3),
        ("1GB", 10**9),
        ("10", 10),
        ("10B", 10),
        (" 25 MB ", 25_000_000),
    ],
)
def test_parse_size(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "MB", "25TB", "-1MB", "25 M", "twenty MB"])
def test_parse_size_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="is not a size"):
        parse_size(text)


@pytest.mark.parametrize(
    ("text", "ceiling"),
    [
        ("3/minute", Ceiling(3, 60.0)),
        ("200/hour", Ceiling(200, 3600.0)),
        ("2000/day", Ceiling(2000, 86400.0)),
        ("1/second", Ceiling(1, 1.0)),
        ("20/10s", Ceiling(20, 10.0)),
        ("100/15m", Ceiling(100, 900.0)),
        (" 3 / minute ", Ceiling(3, 60.0)),
    ],
)
def test_parse_rate(text: str, ceiling: Ceiling) -> None:
    assert parse_rate(text) == ceiling


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("3", "is not a rate limit"),
        ("0/minute", "is not a rate limit"),
        ("-1/minute", "is not a rate limit"),
        ("three/minute", "is not a rate limit"),
        ("3/fortnight", "the period is second, minute, hour, day"),
        ("3/", "the period is second, minute, hour, day"),
        ("3/0s", "must be positive"),
    ],
)
def test_parse_rate_rejects(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_rate(text)


@pytest.mark.parametrize(
    ("ceiling", "text"),
    [
        (Ceiling(3, 60.0), "3/minute"),
        (Ceiling(200, 3600.0), "200/hour"),
        (Ceiling(2000, 86400.0), "2000/day"),
        (Ceiling(20, 10.0), "20/10s"),
    ],
)
def test_a_parsed_rate_prints_as_written(ceiling: Ceiling, text: str) -> None:
    assert str(ceiling) == text
    assert parse_rate(text) == ceiling


@pytest.mark.parametrize(
    ("count", "text"),
    [
        (512, "512 B"),
        (1023, "1023 B"),
        (1536, "1.5 KiB"),
        (3 * 2**30, "3.0 GiB"),
        (2**40, "1.0 TiB"),
    ],
)
def test_format_size(count: int, text: str) -> None:
    assert format_size(count) == text


AT = 1767604443.12  # 2026-01-05 09:14:03.120 UTC, a Monday


def test_timestamp_forms() -> None:
    assert format_iso(AT) == "2026-01-05T09:14:03+00:00"
    assert format_iso_minutes(AT, ZoneInfo("Europe/Berlin")) == "2026-01-05T10:14+01:00"
    assert format_iso_millis(AT) == "2026-01-05T09:14:03.120Z"
    assert format_rfc5322(AT) == "Mon, 05 Jan 2026 09:14:03 +0000"
    assert format_rfc5322(AT + 0.87) == "Mon, 05 Jan 2026 09:14:03 +0000"  # kept per second
    assert format_rfc5322(AT + 0.88) == "Mon, 05 Jan 2026 09:14:04 +0000"
    assert format_rfc5322(AT) == "Mon, 05 Jan 2026 09:14:03 +0000"
    assert format_utc_minutes(AT) == "2026-01-05 09:14 UTC"
    assert format_utc_seconds(AT) == "2026-01-05 09:14:03Z"
