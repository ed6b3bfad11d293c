"""What the status page shows, gathered from the store, the configuration and the notices:
each upstream's state in words, its allowance per rate window, its next sending window and
queue; the queue's totals and oldest waiting message; notices; the latest failures."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from relayd.config.model import Config, UpstreamConfig
from relayd.policy.hints import hint_for
from relayd.policy.limits import occupying, window_units
from relayd.policy.windows import SendWindow, is_open, next_close, next_open, parse_window
from relayd.store.base import QueueAdmin, QueueStats, StatusHistory, UpstreamHolds
from relayd.types import MessageView, RecipientState, SmtpReply, UpstreamHold
from relayd.units import format_age, format_clock, format_duration

PROBLEMS_SHOWN = 20
_PERIOD_WORDS = {60.0: "this minute", 3600.0: "this hour", 86400.0: "in 24 hours"}


class StatusStore(QueueStats, QueueAdmin, UpstreamHolds, StatusHistory, Protocol):
    """Everything the page reads."""


@dataclass(frozen=True)
class Allowance:
    """One rate window: `used` of `limit` sends in the sliding window, as a bar."""

    used: int
    limit: int
    words: str  # "143 / 200 this hour, resets 14:00"


@dataclass(frozen=True)
class UpstreamStatus:
    name: str
    provider: str
    state: str  # flowing | window-closed | throttled | auth-failing: a CSS class and a test hook
    words: str  # the state in words
    hint: str | None
    allowances: list[Allowance]
    window: str  # the next sending window in words
    counts: dict[RecipientState, int]


@dataclass(frozen=True)
class Problem:
    at: str
    view: MessageView
    replies: list[tuple[str, str, str]]  # (address, state, reply) of the failed recipients


@dataclass
class StatusView:
    now: float
    upstreams: list[UpstreamStatus] = field(default_factory=list)
    totals: dict[RecipientState, int] = field(default_factory=dict)
    oldest: str | None = None
    notices: list[tuple[str, str, str]] = field(default_factory=list)  # (what, about, since)
    problems: list[Problem] = field(default_factory=list)


async def gather(
    store: StatusStore, config: Config, notices: Sequence[tuple[str, str, float]], now: float
) -> StatusView:
    view = StatusView(now)
    depth = await store.depth()
    view.totals = depth.counts
    if depth.oldest_pending is not None:
        view.oldest = format_age(depth.oldest_age(now))
    by_upstream = await store.counts_by_upstream()
    for name, upstream in config.upstreams.items():
        hold = await store.upstream_hold(name)
        horizon = max((c.period for c in upstream.rate_limits), default=0.0)
        ledger = await store.ledger_sends(name, now - horizon) if horizon else []
        # Counted as the lane counts them: from each send's final reply (limits.occupying).
        sends = occupying(ledger, now, config.queue.lease_time)
        view.upstreams.append(
            upstream_status(upstream, hold, sends, by_upstream.get(name, {}), now)
        )
    view.notices = [
        (kind.replace("_", " "), key, format_clock(since, now)) for kind, key, since in notices
    ]
    for at, message in await store.recent_problems(PROBLEMS_SHOWN):
        replies = [
            (r.address, r.state.value, r.last_reply or "")
            for r in message.recipients
            if r.state in (RecipientState.FAILED, RecipientState.BOUNCED)
        ]
        view.problems.append(Problem(format_clock(at, now), message, replies))
    return view


def upstream_status(
    upstream: UpstreamConfig,
    hold: UpstreamHold | None,
    sends: Sequence[tuple[float, int]],
    counts: dict[RecipientState, int],
    now: float,
) -> UpstreamStatus:
    """One upstream's card; pure, so its wording is tested without a daemon."""
    window = _window(upstream)
    allowances = [_allowance(sends, c.count, c.period, now) for c in upstream.rate_limits]
    state, words, hint = "flowing", "flowing", None
    if hold is not None and hold.until is None:
        state, words = "auth-failing", f"auth failing: {hold.reason}"
        hint = hint_for(upstream.provider, _reply(hold.reason), None)
    elif hold is not None and hold.until is not None and hold.until > now:
        state, words = "throttled", f"throttled until {format_clock(hold.until, now)}"
        hint = hint_for(upstream.provider, _reply(hold.reason), None)
        words += f" ({hold.reason})" if hold.reason else ""
    elif window is not None and not is_open(window, now):
        opens = next_open(window, now)
        state = "window-closed"
        words = (
            f"window closed until {format_clock(opens, now, window.zone)}"
            if opens is not None
            else "window closed (it opens on no day within a year)"
        )
    elif any(a.used >= a.limit for a in allowances):
        words = "flowing, at its rate limit"
    return UpstreamStatus(
        upstream.name,
        upstream.provider,
        state,
        words,
        hint,
        allowances,
        _window_words(window, now),
        counts,
    )


def _window(upstream: UpstreamConfig) -> SendWindow | None:
    w = upstream.window
    return parse_window(w.timezone, w.days, w.hours, w.closed_dates) if w else None


def _window_words(window: SendWindow | None, now: float) -> str:
    if window is None:
        return "always open"
    zone = window.zone
    if is_open(window, now):
        closes = next_close(window, now)
        return "open" if closes is None else f"open until {format_clock(closes, now, zone)}"
    opens = next_open(window, now)
    return "closed" if opens is None else f"opens {format_clock(opens, now, zone)}"


def _allowance(
    sends: Sequence[tuple[float, int]], limit: int, period: float, now: float
) -> Allowance:
    used = window_units(sends, now, period)
    span = _PERIOD_WORDS.get(period, f"per {format_duration(period)}")
    inside = [at for at, _ in sends if now - period < at <= now]
    words = f"{used} / {limit} {span}"
    if inside:
        words += f", resets {format_clock(max(inside) + period, now)}"
    return Allowance(used, limit, words)


def _reply(reason: str) -> SmtpReply | None:
    """The SMTP reply a hold's reason starts with (lane.py stores str(reply)), if any."""
    code, _, text = reason.partition(" ")
    return SmtpReply(int(code), text) if code.isdigit() and len(code) == 3 else None
