"""Unit tests of the dashboard's SVG charts: time labels that never overlap and
value axes that keep small values visible."""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from telemetry_core.collector.charts import (
    LinearAxis,
    LogAxis,
    label_width,
    line_chart,
    time_ticks,
)
from telemetry_core.collector.dashboard_model import ChartLine

HOUR = 3_600_000
DAY = 24 * HOUR
T0 = 1_764_806_400_000  # 2025-12-04T00:00:00Z


@settings(max_examples=200, deadline=None)
@given(
    start=st.integers(0, 2_000_000).map(lambda h: T0 + h * HOUR - 1_000_000 * HOUR),
    hours=st.integers(0, 24 * 400),
    width=st.sampled_from([200.0, 400.0, 544.0, 900.0]),
)
def test_time_labels_never_overlap(start: int, hours: int, width: float) -> None:
    ticks = time_ticks(start, start + hours * HOUR, width)
    assert ticks
    span = max(hours * HOUR, 1)
    positions = [width * (x - start) / span for x, _ in ticks]
    for (left, (_, a)), (right, (_, b)) in zip(
        zip(positions, ticks, strict=True), zip(positions[1:], ticks[1:], strict=True), strict=False
    ):
        assert right - left >= (label_width(a) + label_width(b)) / 2, (a, b)
    assert all(start <= x <= start + hours * HOUR for x, _ in ticks)


def test_three_days_of_hours_get_short_labels() -> None:
    ticks = time_ticks(T0 + HOUR, T0 + 3 * DAY)
    labels = [text for _, text in ticks]
    assert "Dec 5" in labels and "Dec 6" in labels
    assert all(len(text) <= 6 for text in labels), labels
    assert 4 <= len(ticks) <= 12
    # Under a day: hours, with the date on the first label only.
    short = [text for _, text in time_ticks(T0 + 3 * HOUR, T0 + 9 * HOUR)]
    assert short[0] == "Dec 4 03:00" and short[1:] == ["04:00", "05:00", "06:00", "07:00",
                                                        "08:00", "09:00"]  # fmt: skip
    assert time_ticks(T0 + HOUR, T0 + HOUR) == [(T0 + HOUR, "Dec 4 01:00")]


def test_log_axis_keeps_a_fast_type_off_the_floor() -> None:
    low, high, ticks = LogAxis().scale([0.4, 2.0, 900.0])
    assert (low, high) == (0.1, 1000.0)
    assert ticks == [0.1, 1.0, 10.0, 100.0, 1000.0]
    # 2 ms sits well above the bottom, where a linear 0-1000 axis would put it at 0.2 %.
    assert LogAxis().position(2.0, low, high) > 0.3
    assert LinearAxis().position(2.0, *LinearAxis().scale([2.0, 900.0])[:2]) < 0.01
    assert LogAxis().position(0.0, low, high) == 0.0
    assert LogAxis().scale([0.0]) == (0.1, 1.0, [0.1, 1.0])
    assert LogAxis().scale([12.0, 40.0]) == (10.0, 100.0, [10.0, 20.0, 50.0, 100.0])
    wide = LogAxis().scale([1e-6, 1e7])[2]
    assert len(wide) <= 8


def test_chart_draws_lines_ticks_and_escaped_titles() -> None:
    hostile = "<b>x</b>"
    lines = (ChartLine(name=hostile, colour="#000000", points=((T0, 1.0), (T0 + DAY, 900.0))),)
    svg = line_chart("chart-p95", lines, (T0, T0 + DAY), label="p95", axis=LogAxis(unit=" ms"))
    assert svg.startswith('<svg viewBox="0 0 640 220" role="img" aria-label="p95"')
    assert "<b>" not in svg and "&lt;b&gt;x&lt;/b&gt;" in svg
    assert re.findall(r'class="tick-x"[^>]*>([^<]*)<', svg)[0] == "Dec 4"
    assert "1000 ms" in svg or "1k ms" in svg
    empty = line_chart("chart-x", (), None, label="x", axis=LinearAxis())
    assert empty == '<div class="empty" data-testid="chart-x-empty">No data in range</div>'
