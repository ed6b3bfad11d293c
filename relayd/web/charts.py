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
WIDTH, HEIGHT = 720, 180
LEFT, RIGHT, TOP, BOTTOM = 44, 8, 8, 22  # margins for the axis labels


@dataclass(frozen=True)
class Series:
    key: str  # the CSS class suffix and the legend's word
    label: str
    value: Callable[[MinuteSample], int]
    total: bool = True  # the legend shows a 24-hour sum (counts) or the latest value (depth)


TRAFFIC = (
    Series("accepted", "accepted", lambda s: s.accepted),
    Series("delivered", "delivered", lambda s: s.delivered),
    Series("deferred", "deferred", lambda s: s.deferred),
    Series("failed", "failed or bounced", lambda s: s.failed),
)
DEPTH = (
    Series("pending", "waiting (queued or deferred)", lambda s: s.pending, total=False),
    Series("held", "held", lambda s: s.held, total=False),
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

    def y(value: int) -> float:
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
        label = format_clock(at, at)
        parts.append(
            f'<text class="axis" x="{x(at):.1f}" y="{HEIGHT - 6}" '
            f'text-anchor="middle">{label}</text>'
        )
    for sr in series:
        for run in _runs(rows):
            points = " ".join(f"{x(s.minute):.1f},{y(sr.value(s)):.1f}" for s in run)
            parts.append(f'<polyline class="line s-{sr.key}" points="{points}"/>')
    parts.append("</svg>")
    legend = [
        (sr.key, sr.label, sum(map(sr.value, rows)) if sr.total else _latest(sr, rows))
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
    return [run if len(run) > 1 else run * 2 for run in runs]  # one point: a dot-long line


def _latest(series: Series, rows: Sequence[MinuteSample]) -> int:
    return series.value(rows[-1]) if rows else 0


def _nice(value: int) -> int:
    """The axis top: 1, 2 or 5 times a power of ten, at least `value` (and at least 2)."""
    if value <= 2:
        return 2
    power: int = 10 ** int(math.log10(value))
    for step in (1, 2, 5, 10):
        if step * power >= value:
            return step * power
    return 10 * power  # pragma: no cover - the loop always returns
