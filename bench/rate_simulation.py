"""Rate-limit accuracy in virtual time: a day's traffic through relayd's limits and window.

Run by hand from the repository root: ``python bench/rate_simulation.py`` (``--help`` for the
knobs). Not collected by pytest.

It pushes a batch of messages arriving at once (an ERP's month-end run at 09:00) plus a
background trickle through one upstream lane with `--connections` connections that starts
each message, oldest first, at the earliest instant both `policy.limits.next_permitted` and
`policy.windows.next_open` allow -- the decision the dispatcher makes, without the I/O. A send
takes time (`--send-seconds`, drawn uniformly: a warm connection, or a new one slow with TLS
and AUTH) and its message reaches the provider anywhere in it; the ledger reserves it at its
start and stamps it at its end (`policy.limits.occupying`), as the store does. Then it checks
the promise from first principles, at the provider: the largest count of arrivals in ANY
trailing window of each ceiling (every window, exactly), that no send started outside the
sending hours, how much of the binding allowance was used while mail was waiting, and how
long mail waited.

The default start, Thursday 2026-03-26, makes the backlog run over a weekend on which
Europe/London's clocks go forward (Sunday 03-29).
"""

from __future__ import annotations

import argparse
import math
import random
import sys
import time
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from itertools import pairwise
from pathlib import Path
from zoneinfo import ZoneInfo

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout

from relayd.policy.limits import ledger_horizon, next_permitted, occupying
from relayd.policy.windows import (
    SendWindow,
    is_open,
    next_close,
    next_open,
    parse_window,
)
from relayd.types import Ceiling
from relayd.units import (
    format_duration,
    parse_duration,
    parse_rate,
)

RATE_LIMITS = ("3/minute", "200/hour", "2000/day")
TIMEZONE = "Europe/London"
UTILISATION = 0.95  # the share of the binding allowance a saturated lane must use


@dataclass(frozen=True)
class Message:
    arrival: float
    burst: bool


@dataclass
class Run:
    messages: list[Message]
    started: list[float]  # started[i] is when messages[i]'s send was reserved
    sent: list[float]  # sent[i] is when messages[i] reached the provider
    backlog_end: float  # when the queue first ran empty after the whole burst had arrived


@dataclass(frozen=True)
class Booked:
    """A send in the ledger: reserved at its start; its final reply (the stamp) at `ends`."""

    reserved: float
    ends: float


@dataclass(frozen=True)
class Sends:
    """How sends take time: `connections` at once, each lasting between `shortest` and
    `longest` seconds, its message arriving anywhere in it (seeded, reproducible)."""

    connections: int
    shortest: float
    longest: float
    seed: int


def make_traffic(day: date, burst: int, trickle_every: float, seed: int) -> list[Message]:
    """`burst` messages at 09:00 local, plus a Poisson trickle over the whole local day."""
    zone = ZoneInfo(TIMEZONE)
    start = datetime(day.year, day.month, day.day, tzinfo=zone).timestamp()
    end = datetime.combine(day + timedelta(days=1), datetime.min.time(), zone).timestamp()
    nine = datetime(day.year, day.month, day.day, 9, tzinfo=zone).timestamp()
    rng = random.Random(seed)
    messages = [Message(nine, burst=True) for _ in range(burst)]
    at = start + rng.expovariate(1 / trickle_every)
    while at < end:
        messages.append(Message(at, burst=False))
        at += rng.expovariate(1 / trickle_every)
    return sorted(messages, key=lambda m: m.arrival)


def simulate(
    messages: Sequence[Message],
    ceilings: Sequence[Ceiling],
    min_interval: float,
    window: SendWindow,
    sends: Sends,
) -> Run:
    """One FIFO lane: each message starts at the first instant limits and window both allow
    and a connection is free; the ledger counts each send from its end."""
    horizon = ledger_horizon(ceilings, min_interval)
    rng = random.Random(sends.seed)
    ledger: deque[Booked] = deque()
    free_at = [-math.inf] * sends.connections
    started: list[float] = []
    sent: list[float] = []
    clock = -math.inf
    backlog_end = math.inf
    last_burst = max(m.arrival for m in messages if m.burst)
    for index, message in enumerate(messages):
        worker = min(range(sends.connections), key=free_at.__getitem__)
        clock = max(clock, message.arrival, free_at[worker])
        while True:  # the earliest instant all agree on: move forward until a fixed point
            while ledger and ledger[0].ends <= clock - horizon:
                ledger.popleft()  # what the store prunes
            rows = [(b.reserved, b.ends if b.ends <= clock else None, 1) for b in ledger]
            permitted = next_permitted(
                occupying(rows, clock, math.inf), clock, ceilings, min_interval, 1
            )
            if permitted > clock:
                # A send under way counts as ending now: its final reply may permit sooner.
                clock = min([permitted, *(b.ends for b in ledger if clock < b.ends)])
                continue
            opens = next_open(window, clock)
            if opens is None:
                raise SystemExit("the window never opens")
            if opens == clock:
                break
            clock = opens
        duration = rng.uniform(sends.shortest, sends.longest)
        ledger.append(Booked(clock, clock + duration))
        free_at[worker] = clock + duration
        started.append(clock)
        sent.append(clock + duration * rng.random())
        following = messages[index + 1].arrival if index + 1 < len(messages) else math.inf
        if clock >= last_burst and following > clock and backlog_end == math.inf:
            backlog_end = clock
    return Run(list(messages), started, sent, backlog_end)


def max_in_window(sent: Sequence[float], period: float) -> int:
    """The largest count in any trailing window (t - period, t]: the windows ending at a send
    are the maxima, so two pointers over the sorted sends check every window exactly."""
    best = left = 0
    for right, at in enumerate(sent):
        while not at - period < sent[left]:
            left += 1
        best = max(best, right - left + 1)
    return best


def open_segments(window: SendWindow, start: float, end: float) -> list[tuple[float, float]]:
    """The window's open intervals clipped to [start, end)."""
    segments = []
    at = next_open(window, start)
    while at is not None and at < end:
        closes = next_close(window, at) or end
        segments.append((at, min(closes, end)))
        at = next_open(window, closes)
    return segments


def allowance(ceilings: Sequence[Ceiling], segments: Sequence[tuple[float, float]]) -> int:
    """An upper bound on the sends any scheduler could make in these open segments.

    Cut the span into consecutive chunks of the longest period: the sends in one chunk lie in
    one trailing window, so a chunk holds at most N of that ceiling, and at most what the
    shorter ceilings allow inside it (the same argument, one level down).
    """
    if not ceilings or not segments:
        return sys.maxsize if segments else 0
    longest = max(ceilings, key=lambda c: c.period)
    shorter = [c for c in ceilings if c is not longest]
    total, chunk, end = 0, segments[0][0], segments[-1][1]
    while chunk < end:
        pieces = _clip(segments, chunk, chunk + longest.period)
        if pieces:
            total += min(longest.count, allowance(shorter, pieces))
        chunk += longest.period
    return total


def _clip(
    segments: Sequence[tuple[float, float]], start: float, end: float
) -> list[tuple[float, float]]:
    clipped = ((max(a, start), min(b, end)) for a, b in segments)
    return [(a, b) for a, b in clipped if a < b]


def percentile(values: Sequence[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(fraction * len(ordered)) - 1)]


def human(seconds: float) -> str:
    days, rest = divmod(int(seconds), 86400)
    hours, rest = divmod(rest, 3600)
    minutes = rest // 60
    return (f"{days}d " if days else "") + f"{hours}h{minutes:02d}m"


def report(run: Run, ceilings: Sequence[Ceiling], min_interval: float, window: SendWindow) -> bool:
    """Print the figures; True if every ceiling held and nothing went outside the window."""
    zone = ZoneInfo(window.timezone)
    ok = True
    arrivals = sorted(run.sent)
    print("max arrivals at the provider in any trailing window (every window checked):")
    for ceiling in ceilings:
        peak = max_in_window(arrivals, ceiling.period)
        ok = ok and peak <= ceiling.count
        verdict = "ok" if peak <= ceiling.count else "EXCEEDED"
        print(f"  {ceiling!s:>10}  {peak:5d} / {ceiling.count:<5d} {verdict}")
    outside = sum(1 for at in run.started if not is_open(window, at))
    ok = ok and outside == 0
    print(f"  sends started outside the window: {outside}")
    if min_interval:
        closest = min(b - a for a, b in pairwise(arrivals))
        ok = ok and closest >= min_interval
        print(f"  closest two sends: {closest:.3f}s (min_interval {format_duration(min_interval)})")

    burst_start = next(m.arrival for m in run.messages if m.burst)
    segments = open_segments(window, burst_start, run.backlog_end + 1e-6)
    cap = allowance(ceilings, segments)
    used = sum(1 for at in run.started if burst_start <= at <= run.backlog_end)
    open_hours = sum(b - a for a, b in segments) / 3600
    print("\nutilisation while mail was waiting:")
    print(f"  backlog {_local(burst_start, zone)} -> {_local(run.backlog_end, zone)}")
    print(f"  open {open_hours:.1f}h in {len(segments)} periods; allowance {cap} sends")
    share = used / cap
    ok = ok and share >= UTILISATION
    verdict = "ok" if share >= UTILISATION else "TOO LOW"
    print(
        f"  delivered {used} = {100 * share:.1f}% of the binding allowance "
        f"(at least {UTILISATION:.0%}: {verdict})"
    )

    print("\ndelivered per local day:")
    per_day = Counter(datetime.fromtimestamp(at, zone).date() for at in run.sent)
    for day in sorted(per_day):
        print(f"  {day:%a %Y-%m-%d}  {per_day[day]:5d}")

    print("\ndelay from arrival to delivery:")
    for label, keep in (("all", None), ("burst", True), ("trickle", False)):
        delays = [
            sent - m.arrival
            for m, sent in zip(run.messages, run.sent, strict=True)
            if keep is None or m.burst is keep
        ]
        print(
            f"  {label:>7} ({len(delays):5d})  p50 {human(percentile(delays, 0.5)):>10}"
            f"  p90 {human(percentile(delays, 0.9)):>10}  max {human(max(delays)):>10}"
        )
    return ok


def _local(at: float, zone: ZoneInfo) -> str:
    return datetime.fromtimestamp(at, zone).strftime("%a %Y-%m-%d %H:%M %Z")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--day", type=date.fromisoformat, default=date(2026, 3, 26))
    parser.add_argument("--burst", type=int, default=5000)
    parser.add_argument("--trickle-every", type=parse_duration, default=300.0)
    parser.add_argument("--min-interval", type=parse_duration, default=0.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--connections", type=int, default=3, help="max_connections")
    parser.add_argument(
        "--send-seconds",
        default="0.2s-3s",
        help='how long one send takes, drawn uniformly from this range (default "0.2s-3s")',
    )
    parser.add_argument("--days", default="mon-fri", help='window days (default "mon-fri")')
    parser.add_argument(
        "--hours", default="08:00-18:00", help='window hours, comma-separated ("00:00-24:00")'
    )
    args = parser.parse_args(argv)

    ceilings = [parse_rate(text) for text in RATE_LIMITS]
    window = parse_window(TIMEZONE, args.days, args.hours.split(","), [])
    messages = make_traffic(args.day, args.burst, args.trickle_every, args.seed)
    trickle = sum(1 for m in messages if not m.burst)
    print("relayd rate simulation (virtual time)")
    print(f"  limits  {', '.join(RATE_LIMITS)}; min_interval {format_duration(args.min_interval)}")
    print(f"  window  {window}")
    print(
        f"  traffic {args.burst} at 09:00 on {args.day:%a %Y-%m-%d} + {trickle} trickle "
        f"(one every {format_duration(args.trickle_every)} on average, all day)"
    )
    shortest, _, longest = args.send_seconds.partition("-")
    sends = Sends(
        args.connections, parse_duration(shortest), parse_duration(longest or shortest), args.seed
    )
    print(
        f"  sends   {sends.connections} connections; each takes "
        f"{format_duration(sends.shortest)}-{format_duration(sends.longest)}, counted from "
        "its final reply; the message arrives anywhere in it\n"
    )
    started = time.perf_counter()
    run = simulate(messages, ceilings, args.min_interval, window, sends)
    elapsed = time.perf_counter() - started
    ok = report(run, ceilings, args.min_interval, window)
    print(f"\n{len(run.sent)} sends simulated in {elapsed:.1f}s of wall time")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
