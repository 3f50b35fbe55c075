"""Server-drawn SVG line charts for the dashboard: no script, no fonts, no fetch.

:func:`line_chart` draws time series of :class:`~telemetry_core.collector.
dashboard_model.ChartLine` on a shared time axis, with a linear or a
logarithmic value axis (:class:`LinearAxis`, :class:`LogAxis`). The time axis
labels are short (``Dec 4`` at midnight, ``06:00`` otherwise) and thinned to
the chart's width, so no two labels overlap however long the range. Every
string is escaped; each point carries a ``<title>`` the browser shows on hover.
"""

from __future__ import annotations

import html
import itertools
import math
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Final

import attrs

from telemetry_core.collector.aggregation import DAY_MS
from telemetry_core.collector.dashboard_model import ChartLine
from telemetry_core.collector.store import HOUR_MS

__all__ = [
    "CHART_HEIGHT",
    "CHART_WIDTH",
    "LinearAxis",
    "LogAxis",
    "label_width",
    "line_chart",
    "time_ticks",
]

#: The chart's viewBox; the page scales it to the figure's width.
CHART_WIDTH: Final = 640
CHART_HEIGHT: Final = 220
_MARGIN_LEFT: Final = 56
_MARGIN_RIGHT: Final = 40
_MARGIN_TOP: Final = 12
_MARGIN_BOTTOM: Final = 28
_PLOT_W: Final = CHART_WIDTH - _MARGIN_LEFT - _MARGIN_RIGHT
_PLOT_H: Final = CHART_HEIGHT - _MARGIN_TOP - _MARGIN_BOTTOM
#: A generous width of one character of the 11-unit axis font (system-ui digits
#: are about 0.55 em): label widths are estimated from it, never measured.
_CHAR_WIDTH: Final = 6.8
#: The least blank space between two time labels, in viewBox units.
_TICK_GAP: Final = 16
#: Candidate distances between time ticks, smallest first.
_TICK_STEPS_MS: Final = (
    HOUR_MS,
    2 * HOUR_MS,
    3 * HOUR_MS,
    6 * HOUR_MS,
    12 * HOUR_MS,
    DAY_MS,
    2 * DAY_MS,
    7 * DAY_MS,
    14 * DAY_MS,
    28 * DAY_MS,
    91 * DAY_MS,
    364 * DAY_MS,
)


def _esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def label_width(text: str) -> float:
    """The estimated width of an axis label, in viewBox units."""
    return len(text) * _CHAR_WIDTH


def _day_label(ms: int) -> str:
    moment = datetime.fromtimestamp(ms / 1000, tz=UTC)
    return f"{moment:%b} {moment.day}"


def _tick_label(ms: int, *, dated: bool) -> str:
    if ms % DAY_MS == 0:
        return _day_label(ms)
    clock = datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%H:%M")
    return f"{_day_label(ms)} {clock}" if dated else clock


def _labelled(ticks: Sequence[int]) -> list[tuple[int, str]]:
    # Without a midnight among them, the first label carries the date.
    dated = not any(t % DAY_MS == 0 for t in ticks)
    return [(t, _tick_label(t, dated=dated and i == 0)) for i, t in enumerate(ticks)]


def time_ticks(x_lo: int, x_hi: int, width: float = _PLOT_W) -> list[tuple[int, str]]:
    """Tick positions (ms) and labels for a time axis from ``x_lo`` to ``x_hi``
    drawn ``width`` units wide: the smallest whole-hour or whole-day step whose
    neighbouring labels, centred on their ticks at their estimated widths,
    leave :data:`_TICK_GAP` between them."""
    if x_hi <= x_lo:
        return [(x_lo, _tick_label(x_lo, dated=True))]
    span = x_hi - x_lo
    for step in _TICK_STEPS_MS:
        first = x_lo + (-x_lo % step)
        ticks = list(range(first, x_hi + 1, step))
        if not ticks:
            continue
        labelled = _labelled(ticks)
        spacing = width * step / span
        if all(
            spacing >= (label_width(a) + label_width(b)) / 2 + _TICK_GAP
            for (_, a), (_, b) in itertools.pairwise(labelled)
        ):
            return labelled
    return _labelled([x_lo])


@attrs.frozen(kw_only=True)
class LinearAxis:
    """A value axis from 0 to ``top`` in four round steps (``top`` None: from the data)."""

    top: float | None = None
    unit: str = ""

    def scale(self, values: Sequence[float]) -> tuple[float, float, list[float]]:
        """``(low, high, ticks)`` for these values."""
        top = self.top if self.top is not None else 4 * _nice_ceiling(max(values, default=0) / 4)
        return 0.0, top, [top * i / 4 for i in range(5)]

    def position(self, value: float, low: float, high: float) -> float:
        """Where ``value`` sits between ``low`` and ``high``, from 0 to 1."""
        return min(max(value, low), high) / high


@attrs.frozen(kw_only=True)
class LogAxis:
    """A logarithmic value axis over whole decades, so a type a thousand times
    slower than another does not flatten it; values at or below zero sit at
    the bottom."""

    unit: str = ""

    def scale(self, values: Sequence[float]) -> tuple[float, float, list[float]]:
        """``(low, high, ticks)``: the decades around the positive values."""
        positive = [v for v in values if v > 0]
        if not positive:
            return 0.1, 1.0, [0.1, 1.0]
        low = math.floor(math.log10(min(positive)))
        high = max(math.ceil(math.log10(max(positive))), low + 1)
        if high - low == 1:  # one decade: 1-2-5 ticks, or it would have only two
            return 10.0**low, 10.0**high, [m * 10.0**low for m in (1, 2, 5, 10)]
        step = max(1, math.ceil((high - low) / 6))
        return 10.0**low, 10.0**high, [10.0**e for e in range(low, high + 1, step)]

    def position(self, value: float, low: float, high: float) -> float:
        """Where ``value`` sits between ``low`` and ``high``, from 0 to 1."""
        if value <= low:
            return 0.0
        return min(1.0, math.log(value / low) / math.log(high / low))


def _nice_ceiling(value: float) -> float:
    """``value`` rounded up to 1, 2 or 5 times a power of ten."""
    if value <= 0:
        return 1.0
    base = 10.0 ** math.floor(math.log10(value))
    return next(step * base for step in (1.0, 2.0, 5.0, 10.0) if value <= step * base * 1.0000001)


def _fmt_value(value: float) -> str:
    if value >= 1_000_000:
        return f"{value / 1_000_000:g}M"
    if value >= 1000:
        return f"{value / 1000:g}k"
    return f"{value:g}"


def _x_labels(x_lo: int, x_hi: int, sx: float | None) -> list[str]:
    parts = []
    for x, text in time_ticks(x_lo, x_hi):
        pos = sx if sx is not None else _MARGIN_LEFT + _PLOT_W * (x - x_lo) / (x_hi - x_lo)
        half = label_width(text) / 2
        if pos - half < 0 or pos + half > CHART_WIDTH:
            continue  # would be cut off at the edge of the chart
        parts.append(
            f'<line x1="{pos:.1f}" x2="{pos:.1f}" y1="{_MARGIN_TOP + _PLOT_H}" '
            f'y2="{_MARGIN_TOP + _PLOT_H + 4}" stroke="#9aa0a6"/>'
            f'<text class="tick-x" x="{pos:.1f}" y="{CHART_HEIGHT - 8}" '
            f'text-anchor="middle">{_esc(text)}</text>'
        )
    return parts


def line_chart(
    test_id: str,
    lines: Sequence[ChartLine],
    x_range: tuple[int, int] | None,
    *,
    label: str,
    axis: LinearAxis | LogAxis,
) -> str:
    """One SVG chart (and its legend) of ``lines`` over ``x_range``, or a
    "No data in range" note when there is nothing to draw."""
    values = [y for line in lines for _, y in line.points]
    if not values or x_range is None:
        return f'<div class="empty" data-testid="{_esc(test_id)}-empty">No data in range</div>'
    x_lo, x_hi = x_range
    low, high, y_ticks = axis.scale(values)

    def sx(x: int) -> float:
        if x_hi == x_lo:
            return _MARGIN_LEFT + _PLOT_W / 2
        return _MARGIN_LEFT + _PLOT_W * (x - x_lo) / (x_hi - x_lo)

    def sy(y: float) -> float:
        return _MARGIN_TOP + _PLOT_H * (1 - axis.position(y, low, high))

    parts = [
        f'<svg viewBox="0 0 {CHART_WIDTH} {CHART_HEIGHT}" role="img" '
        f'aria-label="{_esc(label)}" data-testid="{_esc(test_id)}">'
    ]
    for value in y_ticks:
        y = sy(value)
        parts.append(
            f'<line x1="{_MARGIN_LEFT}" x2="{CHART_WIDTH - _MARGIN_RIGHT}" '
            f'y1="{y:.1f}" y2="{y:.1f}" stroke="#e6e8eb"/>'
            f'<text class="tick-y" x="{_MARGIN_LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">'
            f"{_esc(_fmt_value(value) + axis.unit)}</text>"
        )
    parts.extend(_x_labels(x_lo, x_hi, sx(x_lo) if x_hi == x_lo else None))
    for line in lines:
        parts.append(_polyline(line, sx, sy, axis.unit))
    parts.append("</svg>")
    legend = "".join(
        # The swatch is an SVG rect, not a style attribute: the page's CSP allows
        # only its one hashed stylesheet.
        f'<span><svg class="swatch" viewBox="0 0 10 10" aria-hidden="true">'
        f'<rect width="10" height="10" rx="2" fill="{_esc(line.colour)}"/></svg>'
        f"{_esc(line.name)}</span>"
        for line in lines
    )
    parts.append(f'<div class="legend">{legend}</div>')
    return "".join(parts)


def _polyline(
    line: ChartLine, sx: Callable[[int], float], sy: Callable[[float], float], unit: str
) -> str:
    coords = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in line.points)
    colour = _esc(line.colour)
    parts = [f'<g data-series="{_esc(line.name)}">']
    if len(line.points) > 1:
        parts.append(
            f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{coords}"/>'
        )
    for x, y in line.points:
        moment = datetime.fromtimestamp(x / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M")
        title = f"{line.name} · {moment} · {y:.4g}{unit}"
        parts.append(
            f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="2.5" fill="{colour}">'
            f"<title>{_esc(title)}</title></circle>"
        )
    parts.append("</g>")
    return "".join(parts)
