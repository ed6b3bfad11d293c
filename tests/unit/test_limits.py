"""policy.limits: trailing-window ceilings, min_interval, the wait reason, the ledger horizon."""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relayd.policy.limits import (
    describe_wait,
    in_window,
    ledger_horizon,
    next_permitted,
    occupying,
    window_units,
)
from relayd.types import Ceiling
from relayd.units import parse_rate

PER_MINUTE_3 = Ceiling(3, 60.0)
PER_HOUR_200 = Ceiling(200, 3600.0)
T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z; realistic magnitudes exercise float rounding


# -- an independent oracle ------------------------------------------------------------------


def permitted(
    sends: Sequence[tuple[float, int]],
    t: float,
    ceilings: Sequence[Ceiling],
    min_interval: float,
    weight: int,
) -> bool:
    """Whether a send of `weight` at t keeps every rule, written out from the definition."""
    for ceiling in ceilings:
        used = sum(w for s, w in sends if t - ceiling.period < s <= t)
        if weight > ceiling.count:
            if used:
                return False
        elif used + weight > ceiling.count:
            return False
    return not sends or t >= max(s for s, _ in sends) + min_interval


def max_window_units(sends: Sequence[tuple[float, int]], period: float) -> int:
    """The largest count over EVERY trailing window of `period`.

    A trailing window's count only rises when its end passes a send, so the windows ending at
    each send's timestamp are the maxima: checking those checks every window exactly.
    """
    return max(
        (sum(w for s, w in sends if t - period < s <= t) for t, _ in sends),
        default=0,
    )


# -- examples ---------------------------------------------------------------------------------


def test_empty_ledger_sends_now() -> None:
    assert next_permitted([], T0, [PER_MINUTE_3], 20.0, 1) == T0
    assert describe_wait([], T0, [PER_MINUTE_3], 20.0, 1) is None


def test_room_in_the_window_sends_now() -> None:
    sends = [(T0 - 10, 1), (T0 - 5, 1)]
    assert next_permitted(sends, T0, [PER_MINUTE_3], 0.0, 1) == T0


def test_full_window_waits_until_the_oldest_send_leaves() -> None:
    sends = [(T0 - 50, 1), (T0 - 30, 1), (T0 - 10, 1)]
    at = next_permitted(sends, T0, [PER_MINUTE_3], 0.0, 1)
    assert at == pytest.approx(T0 + 10)
    # The send at T0-50 is out of the window exactly then, and not an instant before.
    assert not in_window(T0 - 50, at, 60.0)
    assert in_window(T0 - 50, at - 1e-3, 60.0)


def test_a_send_leaves_the_window_exactly_one_period_later() -> None:
    assert in_window(100.0, 159.999, 60.0)
    assert not in_window(100.0, 160.0, 60.0)
    assert in_window(100.0, 100.0, 60.0)
    assert not in_window(100.0, 99.0, 60.0)  # a send after `at` is not in the window ending at it


def test_the_answer_agrees_with_the_window_predicate_despite_float_rounding() -> None:
    # (s + P) - P < s for this s in binary floating point: s + P itself would still count s.
    sent_at, period = 72.58526014465151, 3600.0
    assert (sent_at + period) - period < sent_at
    at = next_permitted([(sent_at, 1)], 100.0, [Ceiling(1, period)], 0.0, 1)
    assert not in_window(sent_at, at, period)
    assert at == pytest.approx(sent_at + period)


def test_the_kth_oldest_send_frees_room_for_a_heavier_send() -> None:
    # 3/minute full; a send of weight 2 needs the two oldest sends to have left.
    sends = [(T0 - 10, 1), (T0 - 50, 1), (T0 - 30, 1)]  # any order
    assert next_permitted(sends, T0, [PER_MINUTE_3], 0.0, 2) == pytest.approx(T0 + 30)


def test_weights_are_units() -> None:
    sends = [(T0 - 40, 2), (T0 - 20, 1)]
    assert window_units(sends, T0, 60.0) == 3
    assert next_permitted(sends, T0, [PER_MINUTE_3], 0.0, 1) == pytest.approx(T0 + 20)
    assert next_permitted(sends, T0, [PER_MINUTE_3], 0.0, 2) == pytest.approx(T0 + 20)
    assert next_permitted(sends, T0, [PER_MINUTE_3], 0.0, 3) == pytest.approx(T0 + 40)


def test_min_interval_spaces_sends_from_the_last_one() -> None:
    sends = [(T0 - 100, 1), (T0 - 5, 1)]
    assert next_permitted(sends, T0, [], 20.0, 1) == pytest.approx(T0 + 15)
    assert next_permitted(sends, T0 + 30, [], 20.0, 1) == T0 + 30
    assert describe_wait(sends, T0, [], 20.0, 1) == "min_interval 20s"


def test_the_latest_constraint_wins() -> None:
    # The minute ceiling is satisfied in 10s, min_interval only in 15s.
    sends = [(T0 - 50, 1), (T0 - 30, 1), (T0 - 5, 1)]
    assert next_permitted(sends, T0, [PER_MINUTE_3], 20.0, 1) == pytest.approx(T0 + 15)
    assert describe_wait(sends, T0, [PER_MINUTE_3], 20.0, 1) == "min_interval 20s"
    assert describe_wait(sends, T0, [PER_MINUTE_3], 5.0, 1) == "rate limit 3/minute"


def test_describe_wait_names_the_binding_ceiling() -> None:
    # 200 sends in the last hour, none in the last minute: the hour binds until the oldest
    # (at T0-3500) leaves the hour window.
    sends = [(T0 - 3500 + i * 10, 1) for i in range(200)]
    ceilings = [PER_MINUTE_3, PER_HOUR_200]
    assert next_permitted(sends, T0, ceilings, 0.0, 1) == pytest.approx(T0 + 100)
    assert describe_wait(sends, T0, ceilings, 0.0, 1) == "rate limit 200/hour"


def test_describe_wait_on_a_tie_names_the_longer_ceiling() -> None:
    ceilings = [Ceiling(1, 60.0), Ceiling(2, 120.0)]
    # 1/minute frees at T0+40, 2/120s at T0+30: the minute binds.
    sends = [(T0 - 90, 1), (T0 - 20, 1)]
    assert next_permitted(sends, T0, ceilings, 0.0, 1) == pytest.approx(T0 + 40)
    assert describe_wait(sends, T0, ceilings, 0.0, 1) == "rate limit 1/minute"
    # Both free at T0+30: the longer period is named.
    sends = [(T0 - 90, 1), (T0 - 30, 1)]
    assert next_permitted(sends, T0, ceilings, 0.0, 1) == pytest.approx(T0 + 30)
    assert describe_wait(sends, T0, ceilings, 0.0, 1) == "rate limit 2/120s"


def test_describe_wait_prefers_a_ceiling_over_min_interval_on_a_tie() -> None:
    sends = [(T0 - 50, 1), (T0 - 30, 1), (T0 - 10, 1)]
    assert next_permitted(sends, T0, [PER_MINUTE_3], 20.0, 1) == pytest.approx(T0 + 10)
    assert describe_wait(sends, T0, [PER_MINUTE_3], 20.0, 1) == "rate limit 3/minute"


def test_a_send_heavier_than_a_ceiling_goes_out_alone_once_the_window_is_empty() -> None:
    # count = "recipients": a 5-recipient message under 3/minute can never fit; it waits for
    # an empty window instead of for ever.
    assert next_permitted([], T0, [PER_MINUTE_3], 0.0, 5) == T0
    sends = [(T0 - 50, 1), (T0 - 10, 1)]
    assert next_permitted(sends, T0, [PER_MINUTE_3], 0.0, 5) == pytest.approx(T0 + 50)
    # ... and after it went, nothing else goes until it has left the window.
    after = [(T0, 5)]
    assert next_permitted(after, T0 + 1, [PER_MINUTE_3], 0.0, 1) == pytest.approx(T0 + 60)


def test_ledger_rows_later_than_now_count_as_in_the_window() -> None:
    # Another node's clock runs 5s ahead; its send must still count against the ceiling.
    sends = [(T0 - 20, 1), (T0 - 10, 1), (T0 + 5, 1)]
    assert next_permitted(sends, T0, [PER_MINUTE_3], 0.0, 1) == pytest.approx(T0 + 40)


def test_weight_must_be_positive() -> None:
    with pytest.raises(ValueError, match="weight"):
        next_permitted([], T0, [PER_MINUTE_3], 0.0, 0)


def test_ledger_horizon() -> None:
    assert ledger_horizon([PER_MINUTE_3, PER_HOUR_200, Ceiling(2000, 86400.0)], 0.0) == 86400.0
    assert ledger_horizon([PER_MINUTE_3], 120.0) == 120.0
    assert ledger_horizon([], 20.0) == 20.0
    assert ledger_horizon([], 0.0) == 0.0


def test_pruning_at_the_horizon_changes_nothing() -> None:
    ceilings = [PER_MINUTE_3, Ceiling(5, 300.0)]
    sends = [(T0 - 400 + i * 37, 1) for i in range(12)]
    horizon = ledger_horizon(ceilings, 30.0)
    kept = [row for row in sends if row[0] > T0 - horizon]
    assert len(kept) < len(sends)
    assert next_permitted(kept, T0, ceilings, 30.0, 1) == next_permitted(
        sends, T0, ceilings, 30.0, 1
    )


# -- properties -------------------------------------------------------------------------------

ceiling_sets = st.lists(
    st.builds(Ceiling, st.integers(1, 20), st.integers(1, 100).map(float)),
    min_size=1,
    max_size=3,
)


@settings(max_examples=60, deadline=None)
@given(
    ceilings=ceiling_sets,
    min_interval=st.sampled_from([0.0, 0.0, 0.5, 3.0]),
    gaps=st.lists(st.floats(0, 40, allow_nan=False), min_size=1, max_size=60),
    weights=st.lists(st.integers(1, 3), min_size=60, max_size=60),
)
def test_a_sender_at_next_permitted_never_exceeds_a_ceiling(
    ceilings: list[Ceiling], min_interval: float, gaps: list[float], weights: list[int]
) -> None:
    """Messages arrive at random; a FIFO sender sends each at next_permitted."""
    smallest = min(c.count for c in ceilings)
    arrivals: list[float] = []
    t = T0
    for gap in gaps:
        t += gap
        arrivals.append(t)
    sends: list[tuple[float, int]] = []
    clock = T0
    for arrival, raw_weight in zip(arrivals, weights, strict=False):
        weight = min(raw_weight, smallest)  # heavier than a ceiling is tested separately
        clock = max(clock, arrival)
        at = next_permitted(sends, clock, ceilings, min_interval, weight)
        assert at >= clock
        assert permitted(sends, at, ceilings, min_interval, weight)
        # ... and it is the earliest such time: a moment earlier breaks a rule.
        if at - 1e-3 >= clock:
            assert not permitted(sends, at - 1e-3, ceilings, min_interval, weight)
        sends.append((at, weight))
        clock = at
    for ceiling in ceilings:
        assert max_window_units(sends, ceiling.period) <= ceiling.count
    spacing = [b[0] - a[0] for a, b in pairwise(sends)]
    assert all(gap >= min_interval - 1e-9 for gap in spacing)


@settings(max_examples=40, deadline=None)
@given(
    ceilings=ceiling_sets,
    history=st.lists(
        st.tuples(st.floats(-200, 0, allow_nan=False), st.integers(1, 4)), max_size=40
    ),
    weight=st.integers(1, 25),
)
def test_next_permitted_is_the_earliest_permitted_time(
    ceilings: list[Ceiling], history: list[tuple[float, int]], weight: int
) -> None:
    """For any ledger (in any order, possibly over-full) and any weight, including weights
    heavier than a ceiling, the answer keeps every rule and nothing earlier does."""
    sends = [(T0 + offset, w) for offset, w in history]
    at = next_permitted(sends, T0, ceilings, 0.0, weight)
    assert at >= T0
    assert permitted(sends, at, ceilings, 0.0, weight)
    if at - 1e-3 >= T0:
        assert not permitted(sends, at - 1e-3, ceilings, 0.0, weight)
    assert (describe_wait(sends, T0, ceilings, 0.0, weight) is None) == (at == T0)


@settings(max_examples=20, deadline=None)
@given(ceiling=st.builds(Ceiling, st.integers(1, 20), st.integers(1, 100).map(float)))
def test_a_saturated_sender_uses_a_single_ceiling_fully(ceiling: Ceiling) -> None:
    sends: list[tuple[float, int]] = []
    clock = T0
    horizon = T0 + 10 * ceiling.period
    while len(sends) <= 10 * ceiling.count:  # bounded: a broken limiter must fail, not hang
        clock = next_permitted(sends, clock, [ceiling], 0.0, 1)
        if clock >= horizon:
            break
        sends.append((clock, 1))
    # Any window of the period is full: exactly N per period, ten periods.
    assert len(sends) == 10 * ceiling.count
    assert max_window_units(sends, ceiling.period) == ceiling.count


def test_a_saturated_day_uses_the_binding_allowance() -> None:
    """3/minute, 200/hour, 2000/day under a backlog that never empties.

    3/minute alone would allow 4,320 a day and 200/hour 4,800; 2,000/day binds. The sender
    must never exceed any ceiling and must still send at least 95% of 2,000 in every day.
    """
    ceilings = [parse_rate(text) for text in ("3/minute", "200/hour", "2000/day")]
    sends: list[tuple[float, int]] = []
    clock = T0
    end = T0 + 2 * 86400.0
    horizon = ledger_horizon(ceilings, 0.0)
    while len(sends) <= 2 * 4320:  # bounded: a broken limiter must fail, not hang
        recent = [row for row in sends if row[0] > clock - horizon]
        clock = next_permitted(recent, clock, ceilings, 0.0, 1)
        if clock >= end:
            break
        sends.append((clock, 1))
    for ceiling in ceilings:
        assert _max_window_sorted(sends, ceiling.period) <= ceiling.count
    for day in range(2):
        start = T0 + day * 86400.0
        sent = sum(1 for s, _ in sends if start <= s < start + 86400.0)
        assert sent >= 0.95 * 2000, f"day {day}: {sent}"
    # Within the day's first burst, 3/minute binds: 180 an hour, never 200.
    assert _max_window_sorted(sends, 3600.0) == 180


def _max_window_sorted(sends: Sequence[tuple[float, int]], period: float) -> int:
    """max_window_units for a time-ordered ledger in O(n) (two pointers), for long runs."""
    best = used = left = 0
    for right, (t, w) in enumerate(sends):
        used += w
        while not t - period < sends[left][0]:
            used -= sends[left][1]
            left += 1
        assert left <= right
        best = max(best, used)
    return best


# -- sends that take time: reserve at the start, stamp at the final reply ------------------


def test_a_send_under_way_counts_as_ending_now() -> None:
    rows = [(T0, None, 1), (T0 + 1, T0 + 1.5, 2)]
    assert occupying(rows, T0 + 3, open_for=60.0) == [(T0 + 3, 1), (T0 + 1.5, 2)]


def test_the_next_send_is_measured_from_the_final_reply() -> None:
    """1/10s: the send reserved at T0 whose reply came at T0 + 4 frees the slot at T0 + 14."""
    ceilings = [Ceiling(1, 10.0)]
    under_way = occupying([(T0, None, 1)], T0 + 4, open_for=60.0)
    assert next_permitted(under_way, T0 + 4, ceilings, 0.0, 1) == T0 + 14
    ended = occupying([(T0, T0 + 4, 1)], T0 + 10, open_for=60.0)
    assert next_permitted(ended, T0 + 10, ceilings, 0.0, 1) == T0 + 14
    spaced = occupying([(T0, T0 + 4, 1)], T0 + 5, open_for=60.0)
    assert next_permitted(spaced, T0 + 5, [], 3.0, 1) == T0 + 7  # min_interval likewise


def test_a_reservation_never_stamped_stops_blocking_after_open_for() -> None:
    """Its node crashed mid-send: it counts as ended `open_for` after it was made."""
    rows = [(T0, None, 1)]
    ceilings = [Ceiling(1, 10.0)]
    assert occupying(rows, T0 + 100, open_for=30.0) == [(T0 + 30, 1)]
    assert next_permitted(occupying(rows, T0 + 35, 30.0), T0 + 35, ceilings, 0.0, 1) == T0 + 40
    assert next_permitted(occupying(rows, T0 + 45, 30.0), T0 + 45, ceilings, 0.0, 1) == T0 + 45


def test_a_reservation_from_a_clock_ahead_counts_from_its_own_time() -> None:
    assert occupying([(T0 + 5, None, 1)], T0, open_for=60.0) == [(T0 + 5, 1)]


def simulate_connections(
    ceiling: Ceiling,
    connections: int,
    durations: list[float],
    arrive_at: list[float],
    messages: int,
) -> tuple[list[float], float]:
    """`connections` workers under one ceiling, in virtual time, as lanes on any nodes do.

    A free worker reserves at `now` if next_permitted over the ledger (as `occupying` counts
    it) allows, else sleeps until the time it names; a send takes durations[k] and reaches
    the provider at fraction arrive_at[k] of that (a slow new connection, a lock), and its
    reservation is stamped when it ends. Returns the provider's arrival times and the end.
    """
    ledger: list[list[float | None]] = []  # [reserved_at, ended_at, weight]
    free_at = [T0] * connections
    arrivals: list[float] = []
    ends: list[tuple[float, int]] = []  # (end time, ledger row) of sends under way
    sent = 0
    while sent < messages:
        worker = min(range(connections), key=lambda w: free_at[w])
        now = free_at[worker]
        for end, row in [e for e in ends if e[0] <= now]:
            ledger[row][1] = end  # the stamps due by now, as the workers write them
            ends.remove((end, row))
        rows = [(float(r), e, 1) for r, e, _ in ledger]  # type: ignore[arg-type]
        at = next_permitted(occupying(rows, now, open_for=1e9), now, [ceiling], 0.0, 1)
        if at > now:
            # Refused; wake at `at` or when some send ends (another worker's stamp).
            free_at[worker] = min([at, *(end for end, _ in ends if end > now)])
            continue
        duration = durations[sent % len(durations)]
        arrivals.append(now + duration * arrive_at[sent % len(arrive_at)])
        ledger.append([now, None, 1])
        ends.append((now + duration, len(ledger) - 1))
        free_at[worker] = now + duration
        sent += 1
    return sorted(arrivals), max(end for end, _ in ends) if ends else max(free_at)


@settings(max_examples=80, deadline=None)
@given(
    ceiling=st.builds(Ceiling, st.integers(1, 8), st.integers(1, 20).map(float)),
    connections=st.integers(1, 4),
    durations=st.lists(st.floats(0.0, 3.0, allow_nan=False), min_size=1, max_size=12),
    arrive_at=st.lists(st.floats(0.0, 1.0, allow_nan=False), min_size=1, max_size=12),
)
def test_arrivals_at_the_provider_never_exceed_a_ceiling(
    ceiling: Ceiling, connections: int, durations: list[float], arrive_at: list[float]
) -> None:
    """However long a send takes and wherever in it the message arrives, no window of the
    period at the provider holds more than N arrivals."""
    arrivals, _ = simulate_connections(ceiling, connections, durations, arrive_at, 40)
    assert max_window_units([(a, 1) for a in arrivals], ceiling.period) <= ceiling.count


def test_a_saturated_upstream_still_gets_its_allowance() -> None:
    """5/2s with 3 connections and 40 ms sends: stamping at the end costs 40 ms per period."""
    ceiling = Ceiling(5, 2.0)
    arrivals, end = simulate_connections(ceiling, 3, [0.04], [1.0], 500)
    used = len(arrivals) / ((end - T0) / ceiling.period * ceiling.count)
    assert used >= 0.95, used
    assert max_window_units([(a, 1) for a in arrivals], ceiling.period) <= ceiling.count
