"""Unit tests of the dashboard's view model: pure data from a stats body."""

from __future__ import annotations

from typing import Any

import pytest

from telemetry_core.collector.dashboard_model import (
    OTHER,
    ChartLine,
    Period,
    Totals,
    build_view,
    previous_query,
    resolve_range,
)
from telemetry_core.collector.ingest import IngestError
from telemetry_core.collector.store import StatsQuery

HOUR = 3_600_000
DAY = 24 * HOUR
T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z


def _row(app: str, kind: str, bucket: int, count: int, **extra: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "app": app, "type": kind, "bucket_start": bucket, "count": count, "success": count,
        "failure": 0, "p50_ms": 1.0, "p95_ms": 2.0, "p99_ms": 3.0, "installs": 1,
    }  # fmt: skip
    row.update(extra)
    return row


def _stats() -> dict[str, Any]:
    return {
        "from": T0,
        "to": T0 + 2 * HOUR,
        "totals": {
            "count": 10,
            "by_type": {"slow": 4, "fast": 6},
            "installs": 3,
            "success": 8,
            "failure": 1,
            "duplicates": 2,
            "rejected": 1,
            "rejected_by_code": {"pii": 1},
            "throttled": 0,
        },
        "series": [
            _row("a", "fast", T0, 2, p95_ms=1.5, installs=2),
            _row("b", "fast", T0, 3, p95_ms=4.0, installs=1, success=2, failure=1),
            _row("a", "fast", T0 + HOUR, 1, p95_ms=1.0),
            _row("a", "slow", T0 + HOUR, 4, p95_ms=900.0),
        ],
        "durations_by_type": {
            "fast": {"p50_ms": 1.01, "p95_ms": 3.98, "p99_ms": 3.98},
            "slow": {"p50_ms": 899.0, "p95_ms": 901.0, "p99_ms": 901.0},
        },
    }


def test_totals_and_type_rows_come_from_the_body() -> None:
    view = build_view(_stats())
    assert view.totals == Totals(
        count=10, installs=3, success=8, failure=1, duplicates=2, rejected=1, throttled=0
    )
    assert [(t.name, t.count, t.success, t.failure) for t in view.types] == [
        ("fast", 6, 5, 1),
        ("slow", 4, 4, 0),
    ]
    fast = view.types[0]
    # The range's percentiles are the merged ones, not the worst bucket (4.0).
    assert (fast.p50_ms, fast.p95_ms, fast.p99_ms) == (1.01, 3.98, 3.98)
    assert fast.previous_count is None and view.previous is None
    assert view.rejected_by_code == (("pii", 1),)
    assert view.x_range == (T0, T0 + HOUR)


def test_series_merge_apps_by_sum_or_max() -> None:
    view = build_view(_stats())
    events = {line.name: line.points for line in view.events}
    assert events == {"fast": ((T0, 5.0), (T0 + HOUR, 1.0)), "slow": ((T0 + HOUR, 4.0),)}
    p95 = {line.name: line.points for line in view.p95}
    assert p95["fast"] == ((T0, 4.0), (T0 + HOUR, 1.0))  # slowest app of the bucket
    installs = {line.name: line.points for line in view.installs}
    assert installs["fast"] == ((T0, 2.0), (T0 + HOUR, 1.0))
    assert view.success_rate == (
        ChartLine(
            name="success rate",
            colour="#009e73",
            points=((T0, 100.0 * 4 / 5), (T0 + HOUR, 100.0)),
        ),
    )
    # One colour per type, the same in every chart.
    colours = {line.name: line.colour for line in view.events}
    assert {line.name: line.colour for line in view.p95} == colours
    assert len(set(colours.values())) == 2


def test_previous_period_counts_per_type_including_missing_ones() -> None:
    previous = {"from": T0 - 2 * HOUR, "to": T0, "totals": {"count": 5, "by_type": {"fast": 5}}}
    view = build_view(_stats(), previous)
    assert view.previous == Period(from_ms=T0 - 2 * HOUR, to_ms=T0, count=5)
    assert [(t.name, t.previous_count) for t in view.types] == [("fast", 5), ("slow", 0)]


def test_many_types_fold_into_other_except_in_the_p95_chart() -> None:
    series = [_row("a", f"t{i:02d}", T0, 100 - i) for i in range(14)]
    stats = {"totals": {"by_type": {r["type"]: r["count"] for r in series}}, "series": series}
    view = build_view(stats)
    assert len(view.types) == 14
    names = [line.name for line in view.events]
    assert names[-1] == OTHER and len(names) == 10
    assert dict(view.events[-1].points) == {T0: float(sum(100 - i for i in range(9, 14)))}
    assert OTHER not in [line.name for line in view.p95]


@pytest.mark.parametrize("body", [{}, {"totals": None, "series": "x"}, {"series": [1, None]}])
def test_malformed_bodies_build_an_empty_view(body: dict[str, Any]) -> None:
    view = build_view(body)
    assert view.totals.count == 0 and view.types == () and view.x_range is None
    assert view.events == view.p95 == view.success_rate == ()


def test_presets_end_at_the_end_of_the_current_hour() -> None:
    now = T0 + 10 * HOUR + 1234
    resolved = resolve_range({"range": "24h", "from": "5", "type": "x"}, now)
    assert resolved == {
        "range": "24h",
        "from": str(T0 + 11 * HOUR - DAY),
        "to": str(T0 + 11 * HOUR),
        "type": "x",
    }
    assert resolve_range({"range": "30d"}, now)["from"] == str(T0 + 11 * HOUR - 30 * DAY)
    assert resolve_range({"from": "2026-01-01", "range": ""}, now) == {"from": "2026-01-01"}
    with pytest.raises(IngestError) as caught:
        resolve_range({"range": "1y"}, now)
    assert caught.value.status == 400 and "24h, 7d, 30d" in caught.value.message


def test_previous_query_is_the_same_length_just_before() -> None:
    now = T0 + 10 * HOUR + 5
    query = StatsQuery(from_ms=T0 + 2 * HOUR + 7, to_ms=T0 + 5 * HOUR, event_type="x")
    assert previous_query(query, now) == StatsQuery(
        from_ms=T0 - HOUR, to_ms=T0 + 2 * HOUR, event_type="x"
    )
    # An open end stops at the end of the current hour; a partial hour counts whole.
    assert previous_query(StatsQuery(from_ms=T0), now) == StatsQuery(
        from_ms=T0 - 11 * HOUR, to_ms=T0
    )
    assert previous_query(StatsQuery(from_ms=T0, to_ms=T0 + HOUR + 1), now) == StatsQuery(
        from_ms=T0 - 2 * HOUR, to_ms=T0
    )
    assert previous_query(StatsQuery(), now) is None  # all time has no "before"
    assert previous_query(StatsQuery(from_ms=HOUR, to_ms=3 * HOUR), now) is None
