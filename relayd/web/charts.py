"""The status page's charts as inline SVG, drawn here from the stored history: no script, no
library, nothing fetched. Colours and dash patterns come from style.css (by class), so a
series is told apart without colour too; each chart carries a text summary for screen
readers and the legend gives the 24-hour totals."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from markupsafe import Markup, escape

from relayd.store.base import MinuteSample
from relayd.units import format_clock

SPAN = 24 * 3600  # seconds shown
BUCKET = 5  # minutes per point: per-minute rates averaged (depths: their peak) over 5 minutes
WIDTH, HEIGHT = 720, 180
LEFT, RIGHT, TOP, BOTTOM = 44, 8, 8, 22  # margins for the axis labels


@dataclass(frozen=True)
class Series:
    key: str  # the CSS class suffix and the legend's word
    label: str
    value: Callable[[MinuteSample], int]
    total: bool = True  # the legend shows a 24-hour sum (counts) or the peak (depths)


TRAFFIC = (
    Series("accepted", "accepted", lambda s: s.accepted),
    Series("delivered", "delivered", lambda s: s.delivered),
    Series("deferred", "deferred", lambda s: s.deferred),
    Series("failed", "failed or bounced", lambda s: s.failed),
)
DEPTH = (
    Series("pending", "waiting (queued or deferred), 24-hour peak", lambda s: s.pending, False),
    Series("held", "held, 24-hour peak", lambda s: s.held, total=False),
)


@dataclass(frozen=True)
class Chart:
    svg: Markup
    legend: list[tuple[str, str, int]]  # (key, label, total or latest)


def chart(
    title: str, series: Sequence[Series], samples: Sequence[MinuteSample], now: float
) -> Chart:
    start = (int(now) // 60 * 60) - SPAN
    rows = [s for s in samples if s.minute >= start]
    top = _nice(max((sr.value(s) for s in rows for sr in series), default=0))
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def x(minute: int) -> float:
        return LEFT + (minute - start) / SPAN * plot_w

    def y(value: float) -> float:
        return TOP + plot_h - value / top * plot_h

    parts = [
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        f'aria-label="{escape(title)}" xmlns="http://www.w3.org/2000/svg">',
        f"<title>{escape(title)}</title>",
    ]
    for value in (0, top // 2, top):
        parts.append(
            f'<line class="grid" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y(value):.1f}" '
            f'y2="{y(value):.1f}"/>'
        )
        parts.append(
            f'<text class="axis" x="{LEFT - 4}" y="{y(value) + 4:.1f}" '
            f'text-anchor="end">{value}</text>'
        )
    for hours in range(0, 25, 6):
        at = start + hours * 3600
        anchor = {0: "start", 24: "end"}.get(hours, "middle")
        parts.append(
            f'<text class="axis" x="{x(at):.1f}" y="{HEIGHT - 6}" '
            f'text-anchor="{anchor}">{format_clock(at, at)}</text>'
        )
    for sr in series:
        for run in _runs(rows):
            points = " ".join(f"{x(m):.1f},{y(v):.1f}" for m, v in _buckets(run, sr))
            parts.append(f'<polyline class="line s-{sr.key}" points="{points}"/>')
    parts.append("</svg>")
    legend = [
        (sr.key, sr.label, sum(map(sr.value, rows)) if sr.total else _peak(sr, rows))
        for sr in series
    ]
    return Chart(Markup("".join(parts)), legend)  # noqa: S704 - numbers and escaped text only


def _runs(rows: Sequence[MinuteSample]) -> list[list[MinuteSample]]:
    """Consecutive minutes, so a gap (relayd not running) is a gap in the line."""
    runs: list[list[MinuteSample]] = []
    for sample in rows:
        if runs and sample.minute - runs[-1][-1].minute == 60:
            runs[-1].append(sample)
        else:
            runs.append([sample])
    return runs


def _buckets(run: Sequence[MinuteSample], series: Series) -> list[tuple[int, float]]:
    """(minute, value) per BUCKET minutes of a run: the mean of a rate, the peak of a depth."""
    points = []
    for i in range(0, len(run), BUCKET):
        values = [series.value(s) for s in run[i : i + BUCKET]]
        value = sum(values) / len(values) if series.total else max(values)
        points.append((run[i].minute, value))
    if len(points) == 1:
        points.append((run[-1].minute + 60, points[0][1]))  # one point: a short flat line
    return points


def _peak(series: Series, rows: Sequence[MinuteSample]) -> int:
    return max(map(series.value, rows), default=0)


def _nice(value: int) -> int:
    """The axis top: 1, 2 or 5 times a power of ten, at least `value` (and at least 2)."""
    if value <= 2:
        return 2
    power: int = 10 ** int(math.log10(value))
    for step in (1, 2, 5, 10):
        if step * power >= value:
            return step * power
    return 10 * power  # pragma: no cover - the loop always returns
