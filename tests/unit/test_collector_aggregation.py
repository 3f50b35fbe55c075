"""Unit tests of the collector's rollup math."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from telemetry_core.collector.aggregation import (
    ALPHA,
    PERCENTILE_DIGITS,
    ZERO_BUCKET,
    add_outcomes,
    bucket_index,
    bucket_start,
    bucket_value,
    build_stats,
    format_significant,
    hour_increments,
    quantile,
    quantile_rank,
    round_significant,
)
from telemetry_core.collector.store import HOUR_MS, IngestOutcome, StatsData, StatsQuery


@pytest.mark.parametrize("value", [1e-6, 0.001, 0.5, 1.0, 3.3, 12.5, 999.0, 86_400_000.0, 9e14])
def test_bucket_value_is_within_alpha(value: float) -> None:
    estimate = bucket_value(bucket_index(value))
    assert abs(estimate - value) <= ALPHA * value * 1.0000001


def test_zero_has_its_own_bucket() -> None:
    assert bucket_index(0.0) == ZERO_BUCKET
    assert bucket_value(ZERO_BUCKET) == 0.0


def test_quantile_matches_nearest_rank_within_alpha() -> None:
    rng = random.Random(7)
    values = [rng.lognormvariate(3, 1.5) for _ in range(2000)]
    counts: dict[int, int] = {}
    for v in values:
        counts[bucket_index(v)] = counts.get(bucket_index(v), 0) + 1
    ordered = sorted(values)
    for q in (0.5, 0.95, 0.99):
        exact = ordered[quantile_rank(q, len(values)) - 1]
        estimate = quantile(counts, q)
        assert estimate is not None
        assert abs(estimate - exact) <= 0.02 * exact


def test_quantile_of_nothing_is_none() -> None:
    assert quantile({}, 0.5) is None


def test_bucket_start_hour_and_day() -> None:
    t = 1_700_000_123_456
    assert bucket_start(t, "hour") % HOUR_MS == 0
    assert bucket_start(t, "day") % (24 * HOUR_MS) == 0
    assert bucket_start(t, "day") <= bucket_start(t, "hour") <= t


def test_hour_increments_counts_success_failure_and_durations() -> None:
    rollups, buckets = hour_increments(
        [
            ("a", "t", 10, 5.0, True),
            ("a", "t", 20, None, False),
            ("a", "t", HOUR_MS + 1, 5.0, None),
        ]
    )
    assert rollups == {("a", "t", 0): [2, 1, 1], ("a", "t", HOUR_MS): [1, 0, 0]}
    assert sum(buckets.values()) == 2


def test_build_stats_merges_hours_into_days() -> None:
    data = StatsData(
        rollups=[("a", "t", 0, 2, 1, 1), ("a", "t", HOUR_MS, 3, 3, 0), ("a", "u", 0, 1, 0, 0)],
        buckets=[("a", "t", 0, bucket_index(10.0), 2), ("a", "t", HOUR_MS, bucket_index(20.0), 3)],
        series_installs=[("a", "t", 0, 4), ("a", "u", 0, 1)],
        total_installs=4,
        counters={"duplicate": 2, "rejected:pii": 3, "rejected:invalid_type": 1, "throttled": 5},
    )
    stats = build_stats(StatsQuery(bucket="day"), data)
    assert stats["totals"] == {
        "count": 6,
        "by_type": {"t": 5, "u": 1},
        "installs": 4,
        "success": 4,
        "failure": 1,
        "duplicates": 2,
        "rejected": 4,
        "rejected_by_code": {"invalid_type": 1, "pii": 3},
        "throttled": 5,
    }
    t_row = stats["series"][0]
    assert (t_row["type"], t_row["count"], t_row["installs"]) == ("t", 5, 4)
    assert t_row["p50_ms"] == pytest.approx(20.0, rel=0.01)
    assert stats["series"][1]["p50_ms"] is None


def test_ingest_outcome_counts() -> None:
    outcome = IngestOutcome(inserted=(True, False, True))
    assert (outcome.accepted, outcome.duplicates) == (2, 1)


def test_add_outcomes_counts_by_hour_of_reception_and_skips_zeros() -> None:
    counters: dict[tuple[int, str], int] = {(0, "throttled"): 2}
    add_outcomes(counters, rejected={"bad_type": 3, "too_large": 0}, throttled=4, received_ms=5_000)
    add_outcomes(counters, rejected={"bad_type": 1}, throttled=0, received_ms=3_600_000)
    assert counters == {
        (0, "throttled"): 6,
        (0, "rejected:bad_type"): 3,
        (3_600_000, "rejected:bad_type"): 1,
    }


#: The relative error significant-digit rounding may add to ``ALPHA``.
ROUNDING = 0.5 * 10.0 ** (1 - PERCENTILE_DIGITS)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.floats(min_value=1e-9, max_value=0.05, allow_nan=False, allow_infinity=False),
        min_size=1,
        max_size=40,
    )
)
def test_tiny_percentiles_keep_their_relative_accuracy(durations: list[float]) -> None:
    """Durations far below 0.05 ms come out of the stats document within 1 % (plus
    the rounding to significant digits), never rounded to 0.0 by fixed decimals."""
    data = StatsData(
        rollups=[("a", "t", 0, len(durations), 0, 0)],
        buckets=[("a", "t", 0, index, n) for index, n in _histogram(durations).items()],
        series_installs=[],
        total_installs=0,
        counters={},
    )
    stats = build_stats(StatsQuery(), data)
    ordered = sorted(durations)
    for name, q in (("p50_ms", 0.5), ("p95_ms", 0.95), ("p99_ms", 0.99)):
        exact = ordered[quantile_rank(q, len(ordered)) - 1]
        for emitted in (stats["series"][0][name], stats["durations_by_type"]["t"][name]):
            assert emitted > 0
            assert abs(emitted - exact) <= (ALPHA + ROUNDING) * exact * (1 + 1e-9), (name, exact)


def _histogram(durations: list[float]) -> dict[int, int]:
    counts: dict[int, int] = {}
    for value in durations:
        counts[bucket_index(value)] = counts.get(bucket_index(value), 0) + 1
    return counts


def test_sub_microsecond_p50_reads_as_itself() -> None:
    """The defect: a p50 of 0.0004 ms was emitted as 0.0 (rounded to 3 decimals)."""
    counts = _histogram([0.0004] * 5)
    data = StatsData(
        rollups=[("a", "t", 0, 5, 0, 0)],
        buckets=[("a", "t", 0, i, n) for i, n in counts.items()],
        series_installs=[],
        total_installs=0,
        counters={},
    )
    p50 = build_stats(StatsQuery(), data)["series"][0]["p50_ms"]
    assert p50 == pytest.approx(0.0004, rel=ALPHA)


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0.00040031, "0.0004003"),
        (12.3456, "12.35"),
        (1234.5, "1234"),  # round half to even on the binary value
        (123456.0, "123500"),
        (0.0, "0"),
    ],
)
def test_format_significant_writes_four_digits_without_exponent(value: float, text: str) -> None:
    assert format_significant(value) == text


def test_round_significant_keeps_six_digits() -> None:
    assert round_significant(0.000400321987) == 0.000400322
    assert round_significant(1234567.8) == 1234570.0
    assert round_significant(0.0) == 0.0


def test_durations_by_type_merge_hourly_histograms_over_the_range() -> None:
    """Per-type percentiles come from the merged histograms of every hour and app,
    not from the worst bucket: 99 fast events in one hour and 1 slow one in the
    next give a p95 near the fast value (the worst bucket's p95 would be 900 ms)."""
    fast, slow = bucket_index(10.0), bucket_index(900.0)
    data = StatsData(
        rollups=[("a", "t", 0, 60, 0, 0), ("b", "t", HOUR_MS, 40, 0, 0)],
        buckets=[
            ("a", "t", 0, fast, 60),
            ("b", "t", HOUR_MS, fast, 39),
            ("b", "t", HOUR_MS, slow, 1),
        ],
        series_installs=[],
        total_installs=0,
        counters={},
    )
    stats = build_stats(StatsQuery(), data)
    merged = stats["durations_by_type"]["t"]
    assert merged["p50_ms"] == pytest.approx(10.0, rel=ALPHA)
    assert merged["p95_ms"] == pytest.approx(10.0, rel=ALPHA)
    assert merged["p99_ms"] == pytest.approx(10.0, rel=ALPHA)  # rank 99 of 100 is fast
    hist = {fast: 99, slow: 1}
    assert merged["p99_ms"] == round_significant(quantile(hist, 0.99) or 0.0)
    assert max(row["p99_ms"] for row in stats["series"]) == pytest.approx(900.0, rel=ALPHA)


def test_durations_by_type_is_none_without_durations() -> None:
    data = StatsData(
        rollups=[("a", "u", 0, 3, 0, 0)], buckets=[], series_installs=[], total_installs=0,
        counters={},
    )  # fmt: skip
    assert build_stats(StatsQuery(), data)["durations_by_type"] == {
        "u": {"p50_ms": None, "p95_ms": None, "p99_ms": None}
    }
