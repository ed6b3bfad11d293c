"""The status page's pure parts: an upstream's state and allowance in words, the charts'
gaps and scale, the rate limit of its buttons, and its files shipped as package data."""

from __future__ import annotations

import fnmatch
import time
import tomllib
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from relayd import metrics
from relayd.config.upstream import UpstreamConfig
from relayd.errors import StoreUnavailable
from relayd.store.base import MinuteSample
from relayd.types import QueueDepth, RecipientState, UpstreamHold
from relayd.web.auth import RateLimit
from relayd.web.charts import TRAFFIC, chart
from relayd.web.history import HistorySampler
from relayd.web.status import upstream_status

ROOT = Path(__file__).resolve().parents[2]
NOW = datetime(2026, 1, 5, 13, 30, tzinfo=UTC).timestamp()  # a Monday, 13:30 UTC


@pytest.fixture(autouse=True)
def _utc(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The page writes times in the host's zone: UTC here, whatever the machine's."""
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def upstream(**values: object) -> UpstreamConfig:
    return UpstreamConfig.model_validate(
        {"name": "office", "provider": "generic", "host": "h", "auth": "none", **values}
    )


def test_a_flowing_upstream_shows_its_allowance_per_window() -> None:
    office = upstream(rate_limits=["200/hour", "3/minute"])
    sends = [(NOW - 3000, 140), (NOW - 1800, 2), (NOW - 30, 1)]
    status = upstream_status(office, None, sends, {RecipientState.QUEUED: 4}, NOW)
    assert (status.state, status.words, status.hint) == ("flowing", "flowing", None)
    assert [a.words for a in status.allowances] == [
        "143 / 200 this hour, resets 14:29",  # the newest send leaves the window then
        "1 / 3 this minute, resets 13:30",
    ]
    assert [(a.used, a.limit) for a in status.allowances] == [(143, 200), (1, 3)]
    assert status.window == "always open"
    assert status.counts == {RecipientState.QUEUED: 4}


def test_a_throttled_and_an_auth_failing_upstream_say_until_when_and_the_fix() -> None:
    gmail = upstream(provider="gmail", host=None, username="a@gmail.com", password_env="X")
    hold = UpstreamHold("office", NOW + 35 * 60, "421 4.7.0 Try again later")
    throttled = upstream_status(gmail, hold, [], {}, NOW)
    assert throttled.state == "throttled"
    assert throttled.words == "throttled until 14:05 (421 4.7.0 Try again later)"
    assert throttled.hint is not None and "throttling" in throttled.hint
    refused = UpstreamHold("office", None, "535 5.7.8 Username and Password not accepted")
    failing = upstream_status(gmail, refused, [], {}, NOW)
    assert failing.state == "auth-failing"
    assert failing.words == "auth failing: 535 5.7.8 Username and Password not accepted"
    assert failing.hint is not None and "app password" in failing.hint
    expired = UpstreamHold("office", NOW - 1, "421 4.7.0 Try again later")
    assert upstream_status(gmail, expired, [], {}, NOW).state == "flowing"


def test_a_closed_window_says_when_it_opens_in_its_own_zone() -> None:
    window = {"timezone": "Europe/Paris", "days": "mon-fri", "hours": ["08:00-12:00"]}
    status = upstream_status(upstream(window=window), None, [], {}, NOW)  # 14:30 in Paris
    assert status.state == "window-closed"
    assert status.words == "window closed until 08:00 Tue"
    assert status.window == "opens 08:00 Tue"
    morning = datetime(2026, 1, 5, 9, 0, tzinfo=UTC).timestamp()  # 10:00 in Paris
    assert upstream_status(upstream(window=window), None, [], {}, morning).window == (
        "open until 12:00"
    )


def test_charts_break_the_line_where_relayd_was_not_running() -> None:
    start = int(NOW) // 60 * 60 - 600
    samples = [MinuteSample(start + 60 * i, accepted=3) for i in (0, 1, 2, 7, 8)]
    drawn = chart("traffic", TRAFFIC, samples, NOW)
    assert drawn.svg.count('class="line s-accepted"') == 2  # two runs, one gap
    assert ("accepted", "accepted", 15) in drawn.legend
    assert 'role="img" aria-label="traffic"' in drawn.svg
    assert ">5</text>" in drawn.svg  # the axis top: 3 rounded up to 5 (1, 2 or 5 x 10^n)
    assert "<script" not in drawn.svg


def test_rate_limit_counts_per_key_in_a_sliding_period() -> None:
    limit = RateLimit(2, 60.0)
    assert limit.wait("a", 0.0) == 0.0
    assert limit.wait("a", 10.0) == 0.0
    assert limit.wait("a", 20.0) == pytest.approx(40.0)
    assert limit.wait("b", 20.0) == 0.0  # another key has its own
    assert limit.wait("a", 60.5) == 0.0  # the first one left the period


def test_templates_and_styles_are_package_data() -> None:
    """`pip install .` (not editable) ships only what package-data names."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    globs = config["tool"]["setuptools"]["package-data"]["relayd"]
    web = ROOT / "relayd" / "web"
    files = [p for d in ("templates", "static") for p in (web / d).iterdir()]
    assert files
    for path in files:
        name = str(path.relative_to(ROOT / "relayd"))
        assert any(fnmatch.fnmatch(name, pattern) for pattern in globs), name


class HistoryStore:
    """depth() and add_minute() of the StatusHistory role; `fail` makes the next write fail."""

    def __init__(self) -> None:
        self.rows: list[MinuteSample] = []
        self.fail = False

    async def depth(self) -> QueueDepth:
        counts = dict.fromkeys(RecipientState, 0) | {RecipientState.DEFERRED: 2}
        return QueueDepth(counts | {RecipientState.HELD: 1}, None)

    async def add_minute(self, sample: MinuteSample, keep_since: int) -> None:
        if self.fail:
            self.fail = False
            raise StoreUnavailable("database is locked")
        self.rows.append(sample)


async def test_the_history_sample_is_the_minute_that_ended_and_keeps_counts_a_write_lost() -> None:
    store = HistoryStore()
    sampler = HistorySampler(store)  # type: ignore[arg-type]  # a double of the two verbs
    metrics.accepted("unit-history", 3)
    sample = await sampler.sample(NOW + 1)
    assert sample.minute == int(NOW) // 60 * 60 - 60
    assert (sample.accepted, sample.pending, sample.held) == (3, 2, 1)
    metrics.accepted("unit-history", 2)
    store.fail = True
    with pytest.raises(StoreUnavailable):
        await sampler.sample(NOW + 61)
    metrics.accepted("unit-history", 1)
    sample = await sampler.sample(NOW + 121)
    assert sample.accepted == 3  # the 2 of the lost minute, and this minute's 1
    assert [row.accepted for row in store.rows] == [3, 3]
