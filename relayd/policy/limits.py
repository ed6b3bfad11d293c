"""Sliding-window ceilings and min_interval: when may an upstream send next; pure.

relayd's rate-limit promise (DESIGN.md) is "at most N sends in ANY trailing window of the
period", across restarts and nodes. The store keeps the ledger of past sends (timestamp,
weight) and does the one atomic reservation; this module owns the arithmetic: given the
ledger, when is the earliest permitted send, which constraint is binding (for the wait reason
the queue tool shows), and how much ledger must be kept.

Window membership, everywhere in relayd: a send at time `s` counts in the window of length
`P` ending at `t` iff ``t - P < s <= t`` (the window is half-open on the left, so a send
leaves the window exactly `P` seconds after it was made). The store's SQL uses the same
predicate (``sent_at > now - period``).

A send occupies the window from the moment it is reserved until its final reply comes back
(`occupying`): the provider counts the message when it arrives, which is somewhere in between,
so measuring the next sends from the final reply is what keeps every window at the provider
under the ceiling however late the message arrived (a new connection, a slow lock, a slow
upstream). Send k + N may start only once send k has ended and the period has passed since.

Each condition is monotone in `t` (sends only ever leave the window as `t` grows, and
``t >= last + min_interval`` stays true), so the earliest permitted time is the maximum of the
per-condition earliest times. Time is always a float of epoch seconds, passed in.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from relayd.types import Ceiling
from relayd.units import format_duration

Send = tuple[float, int]
"""One ledger row: (timestamp in epoch seconds, weight: 1 message, or its recipient count)."""


Reservation = tuple[float, float | None, int]
"""One ledger row as stored: (reserved at, ended at: the final reply's time or None while the
send is under way, weight)."""


def occupying(reservations: Sequence[Reservation], now: float, open_for: float) -> list[Send]:
    """The ledger as the ceilings count it: each reservation as a send at its end.

    A send under way counts as if it ended `now` (its end is at least that): it is in the
    window now, and nothing can assume it leaves before `now` + the period. A reservation
    still open `open_for` seconds after it was made (its node crashed or froze; the lease time
    bounds a live attempt) counts as ended then, so it cannot block the upstream for ever.
    """
    sends = []
    for reserved_at, ended_at, weight in reservations:
        if ended_at is None:
            ended_at = reserved_at + open_for if now >= reserved_at + open_for else now
        sends.append((max(ended_at, reserved_at), weight))
    return sends


def in_window(sent_at: float, at: float, period: float) -> bool:
    """Whether a send at `sent_at` counts in the window of `period` seconds ending at `at`."""
    return at - period < sent_at <= at


def window_units(sends: Sequence[Send], at: float, period: float) -> int:
    """The units sent in the window (at - period, at]."""
    return sum(weight for sent_at, weight in sends if in_window(sent_at, at, period))


def next_permitted(
    sends: Sequence[Send],
    now: float,
    ceilings: Sequence[Ceiling],
    min_interval: float,
    weight: int = 1,
) -> float:
    """The earliest t >= now at which `weight` more units may be sent.

    At t, for every ceiling N/P the units in (t - P, t] plus `weight` are <= N, and t is at
    least `min_interval` after the last send. `sends` may be in any order.

    A send whose weight exceeds a ceiling's N (a 5-recipient message under "3/minute" with
    count = "recipients") could never fit; rather than wait for ever, that ceiling is treated
    as satisfied once its window is empty: the message goes out alone, and the ledger records
    it, so nothing else is sent until it has left the window again.

    Sends in the ledger later than t (another node's clock running ahead) are counted as if
    inside the window; that keeps the answer monotone and on the safe side.
    """
    return _earliest(sends, now, ceilings, min_interval, weight)[0]


def describe_wait(
    sends: Sequence[Send],
    now: float,
    ceilings: Sequence[Ceiling],
    min_interval: float,
    weight: int = 1,
) -> str | None:
    """Why a send must wait ("rate limit 200/hour", "min_interval 20s"), or None if it need not.

    The binding constraint is the one whose earliest time is the answer of `next_permitted`;
    when several tie, the ceiling with the longest period is named (it is the one an operator
    can act on), and min_interval only when no ceiling ties with it.
    """
    return _earliest(sends, now, ceilings, min_interval, weight)[1]


def ledger_horizon(ceilings: Sequence[Ceiling], min_interval: float) -> float:
    """Seconds of ledger that must be kept: the longest period, or min_interval if longer.

    Rows older than ``now - ledger_horizon(...)`` can never count again and may be pruned.
    """
    return max([min_interval, *(ceiling.period for ceiling in ceilings)], default=0.0)


def _earliest(
    sends: Sequence[Send],
    now: float,
    ceilings: Sequence[Ceiling],
    min_interval: float,
    weight: int,
) -> tuple[float, str | None]:
    if weight < 1:
        raise ValueError(f"weight must be at least 1, not {weight}")
    best, reason = now, None
    # Longest period first, so that on a tie the longest ceiling is the one named.
    for ceiling in sorted(ceilings, key=lambda c: c.period, reverse=True):
        at = _ceiling_free_at(sends, now, ceiling, weight)
        if at > best:
            best, reason = at, f"rate limit {ceiling}"
    if sends and min_interval > 0:
        at = max(sent_at for sent_at, _ in sends) + min_interval
        if at > best:
            best, reason = at, f"min_interval {format_duration(min_interval)}"
    return best, reason


def _ceiling_free_at(sends: Sequence[Send], now: float, ceiling: Ceiling, weight: int) -> float:
    """The earliest t >= now at which `weight` more units fit under one ceiling."""
    period = ceiling.period
    # Everything that has not left the window by `now`, including rows later than now.
    pending = sorted((row for row in sends if row[0] > now - period), key=lambda row: row[0])
    used = sum(w for _, w in pending)
    if weight > ceiling.count:
        # It can never fit; it goes out alone once the window is empty (see next_permitted).
        return _leaves_at(pending[-1][0], period) if pending else now
    excess = used + weight - ceiling.count
    if excess <= 0:
        return now
    # The k-th oldest send leaves at s_k + P; wait until enough units have left.
    for sent_at, w in pending:
        excess -= w
        if excess <= 0:
            return max(now, _leaves_at(sent_at, period))
    raise AssertionError("unreachable: weight <= count, so emptying the window always fits")


def _leaves_at(sent_at: float, period: float) -> float:
    """The first t at which a send at `sent_at` is out of the window, i.e. t - P >= sent_at.

    Mathematically sent_at + P; in floating point (s + P) - P can round below s, which would
    leave the send counted at the very instant we call it gone. Step up to the next float until
    the window predicate agrees.
    """
    at = sent_at + period
    while at - period < sent_at:
        at = math.nextafter(at, math.inf)
    return at
